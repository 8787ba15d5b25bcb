// (b) A late joiner gets the full document: once while its author is still connected, and once
// after every client has left (the server alone holds the document then; the Rust test also
// runs it with a server that unloads idle documents at once, so the store alone holds it).
import { Y, client, config, converged, scenario, sleep, synced, waitFor, check, json } from './lib.mjs'

scenario('late joiner gets the full document', async () => {
  const a = client('alice', config.tokens.alice)
  const c = client('carol', config.tokens.carol)
  await synced(a, c)

  // Many separate updates, deletions, a nested type and an XML fragment.
  for (let i = 0; i < 200; i++) a.text.insert(a.text.length, `line ${i}\n`)
  a.text.delete(0, 7) // "line 0\n"
  for (let i = 0; i < 50; i++) a.map.set(`key${i}`, i)
  a.map.delete('key0')
  const arr = new Y.Array()
  arr.push(['x', 'y'])
  a.map.set('array', arr)
  const frag = a.doc.getXmlFragment('xml')
  const p = new Y.XmlElement('p')
  p.insert(0, [new Y.XmlText('hello')])
  frag.insert(0, [p])
  const alicesText = Array.from({ length: 199 }, (_, i) => `line ${i + 1}\n`).join('')
  await waitFor('carol has alice\'s text', () => c.text.toString() === alicesText, { explain: () => json(c.snapshot()) })
  c.text.insert(0, 'carol was here\n')

  const expectText = 'carol was here\n' + alicesText
  await converged('alice and carol converged', [a, c], (x) => x.text.toString() === expectText && x.map.has('array'))
  const expected = Y.encodeStateAsUpdate(a.doc)

  const sameAsAlice = (x) =>
    x.text.toString() === expectText &&
    json(x.map.toJSON()) === json(a.map.toJSON()) &&
    x.doc.getXmlFragment('xml').toString() === '<p>hello</p>' &&
    Buffer.from(Y.encodeStateVector(x.doc)).equals(Buffer.from(Y.encodeStateVector(a.doc)))

  // Late joiner while alice and carol are still connected.
  const j1 = client('joiner-1', config.tokens.carol)
  await synced(j1)
  await waitFor('joiner-1 has the full document', () => sameAsAlice(j1), {
    explain: () => json(j1.snapshot())
  })

  // Everyone leaves; a late joiner then gets it from the server alone.
  a.destroy(); c.destroy(); j1.destroy()
  // YJS_UNLOAD_WAIT_MS: time for a server configured to unload idle documents at once to do so,
  // so that joiner-2 gets the document from the store.
  await sleep(Number(process.env.YJS_UNLOAD_WAIT_MS || 0))
  const j2 = client('joiner-2', config.tokens.alice)
  await synced(j2)
  await waitFor('joiner-2 (after everyone left) has the full document', () => sameAsAlice(j2), {
    explain: () => json(j2.snapshot())
  })
  // Nothing is missing: alice's whole state changes nothing in joiner-2's copy.
  const copy = new Y.Doc()
  Y.applyUpdate(copy, Y.encodeStateAsUpdate(j2.doc))
  const before = json({ text: copy.getText('text').toString(), map: copy.getMap('map').toJSON() })
  Y.applyUpdate(copy, expected)
  const after = json({ text: copy.getText('text').toString(), map: copy.getMap('map').toJSON() })
  check(before === after, `joiner-2 missed part of the document:\n  had   ${before}\n  whole ${after}`)
})
