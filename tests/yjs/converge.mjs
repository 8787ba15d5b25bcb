// (a) Three providers (alice and carol of acme, alice on a second device) open one new document
// at once, edit a Y.Text and a Y.Map concurrently, and converge to the same document.
import { client, config, converged, scenario, synced, check, json } from './lib.mjs'

scenario('converge: concurrent edits to a Y.Text and a Y.Map', async () => {
  const a = client('alice', config.tokens.alice)
  const c = client('carol', config.tokens.carol)
  const a2 = client('alice-2', config.tokens.alice)
  const all = [a, c, a2]
  await synced(...all)

  // Round 1: all edit in the same tick, before any of them can have seen the others.
  a.text.insert(0, 'alice ')
  c.text.insert(0, 'carol ')
  a2.text.insert(0, 'alice2 ')
  a.map.set('shared', 'from alice')
  c.map.set('shared', 'from carol')
  a2.map.set('shared', 'from alice-2')
  a.map.set('alice', 1)
  c.map.set('carol', 1)
  a2.map.set('alice-2', 1)
  await converged('three clients converged after round 1', all, (x) =>
    ['alice ', 'carol ', 'alice2 '].every((s) => x.text.toString().includes(s)) &&
    x.map.has('alice') && x.map.has('carol') && x.map.has('alice-2'))

  // Round 2: many small interleaved edits, deletes and map overwrites from everyone.
  for (let i = 0; i < 50; i++) {
    for (const [k, x] of all.entries()) {
      const len = x.text.length
      x.text.insert((i * 7 + k * 3) % (len + 1), `${k}`)
      if (i % 5 === 4 && x.text.length > 10) x.text.delete((i + k) % (x.text.length - 2), 2)
      x.map.set(`k${i % 10}`, `${x.name}:${i}`)
    }
  }
  a.doc.transact(() => {
    a.map.set('nested', ['list', 1, { deep: true }])
    a.text.insert(0, '[start]')
  })
  await converged('three clients converged after 150 interleaved edits', all, (x) =>
    x.text.toString().startsWith('[start]') && x.map.has('nested'))

  const snap = a.snapshot()
  check(json(snap.map.nested) === json(['list', 1, { deep: true }]), `nested map value lost: ${json(snap.map.nested)}`)
  for (let i = 0; i < 10; i++) check(typeof snap.map[`k${i}`] === 'string', `map key k${i} missing`)
})
