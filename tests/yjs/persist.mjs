// (g) Persistence across a restart, in phases that the Rust test runs with server restarts in
// between (same data dir):
//   node persist.mjs write    alice writes; carol confirms the server relayed all of it
//   node persist.mjs append   after a restart: a fresh client gets exactly that; then it appends
//   node persist.mjs final    after another restart: a fresh client gets both
import { Y, client, config, converged, scenario, synced, waitFor, check, json } from './lib.mjs'

const phase = process.argv[2]

function written () {
  const lines = Array.from({ length: 100 }, (_, i) => `line ${i}\n`)
  lines.splice(10, 5) // lines 10-14 deleted
  return {
    text: lines.join(''),
    map: { ...Object.fromEntries(Array.from({ length: 19 }, (_, i) => [`key${i + 1}`, i + 1])), list: ['a', 'b', { c: 3 }] }
  }
}

function appended () {
  const w = written()
  return { text: 'after restart\n' + w.text, map: { ...w.map, restarted: true, key1: 'changed' } }
}

async function expectDoc (c, expected, what) {
  await synced(c)
  await waitFor(what, () => json(c.snapshot()) === json(expected),
    { explain: () => `\n    has      ${json(c.snapshot())}\n    expected ${json(expected)}` })
}

const phases = {
  async write () {
    const a = client('alice', config.tokens.alice)
    const c = client('carol', config.tokens.carol)
    await synced(a, c)
    for (let i = 0; i < 100; i++) a.text.insert(a.text.length, `line ${i}\n`)
    a.text.delete('line 0\n'.length * 10, 'line 10\n'.length * 5)
    for (let i = 0; i < 20; i++) a.map.set(`key${i}`, i)
    a.map.delete('key0')
    const list = new Y.Array()
    list.push(['a', 'b', { c: 3 }])
    a.map.set('list', list)
    const expected = written()
    check(json(a.snapshot()) === json(expected), `alice wrote something else: ${json(a.snapshot())}`)
    await converged('carol has everything alice wrote', [a, c], (x) => json(x.snapshot()) === json(expected))
  },
  async append () {
    const c = client('carol-after-restart', config.tokens.carol)
    await expectDoc(c, written(), 'after the restart, a fresh client gets the whole document')
    c.text.insert(0, 'after restart\n')
    c.map.set('restarted', true)
    c.map.set('key1', 'changed')
    const a = client('alice-after-restart', config.tokens.alice)
    await expectDoc(a, appended(), 'a second client gets the document with the new edits')
  },
  async final () {
    const a = client('alice-after-second-restart', config.tokens.alice)
    await expectDoc(a, appended(), 'after a second restart, a fresh client gets the whole document')
  }
}

if (!phases[phase]) {
  console.error(`usage: node persist.mjs ${Object.keys(phases).join('|')}`)
  process.exit(2)
}
scenario(`persist (${phase})`, phases[phase])
