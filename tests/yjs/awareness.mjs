// (d) Awareness: a state set by one client reaches the others, updates follow, a late joiner gets
// the current states on connect, and a client's state is removed from the others when it leaves,
// both cleanly (provider.disconnect()) and abruptly (socket dropped without a goodbye). Against
// Chorus, an awareness query (message type 3) is answered with every state.
import WebSocket from 'ws'
import { client, config, describeFrame, reference, scenario, sleep, synced, waitFor, json } from './lib.mjs'

const stateOf = (observer, subject) => observer.awareness.getStates().get(subject.doc.clientID)

async function sees (observer, subject, expected) {
  await waitFor(`${observer.name} sees ${subject.name}'s awareness state ${json(expected)}`,
    () => json(stateOf(observer, subject)) === json(expected),
    { explain: () => `${observer.name} has ${json([...observer.awareness.getStates()])}` })
}

async function forgets (observer, subject) {
  await waitFor(`${observer.name} no longer has ${subject.name}'s awareness state`,
    () => !observer.awareness.getStates().has(subject.doc.clientID),
    { explain: () => `${observer.name} has ${json([...observer.awareness.getStates()])}` })
}

scenario('awareness states arrive and are removed', async () => {
  const a = client('alice', config.tokens.alice)
  const c = client('carol', config.tokens.carol)
  const a2 = client('alice-2', config.tokens.alice)
  await synced(a, c, a2)

  const alice = { user: { name: 'alice', color: '#f00' }, cursor: { index: 3 } }
  a.awareness.setLocalState(alice)
  await sees(c, a, alice)
  await sees(a2, a, alice)

  const moved = { ...alice, cursor: { index: 7 } }
  a.awareness.setLocalStateField('cursor', { index: 7 })
  await sees(c, a, moved)
  await sees(a2, a, moved)

  const carol = { user: { name: 'carol' } }
  c.awareness.setLocalState(carol)
  const alice2 = { user: { name: 'alice-2' } }
  a2.awareness.setLocalState(alice2)
  await sees(a, c, carol)
  await sees(a, a2, alice2)
  await sees(c, a2, alice2)

  // A late joiner gets the states on connect, without anyone re-sending theirs (they renew only
  // every 15 s, so the bound here is below that).
  const late = client('late-joiner', config.tokens.carol)
  await synced(late)
  await waitFor('late joiner has the states of alice, carol and alice-2', () =>
    json(stateOf(late, a)) === json(moved) && json(stateOf(late, c)) === json(carol) &&
    json(stateOf(late, a2)) === json(alice2),
  { timeoutMs: Math.min(config.timeoutMs, 8000), explain: () => json([...late.awareness.getStates()]) })

  // Awareness query (message type 3), which y-websocket sends only over BroadcastChannel: a raw
  // client asks, and gets every current state. The reference server ignores the query.
  if (!reference) {
    const frames = []
    const raw = new WebSocket(`${config.url}/${config.doc}?token=${encodeURIComponent(config.tokens.carol)}`)
    raw.binaryType = 'arraybuffer'
    raw.on('message', (data) => frames.push(describeFrame(data)))
    await new Promise((resolve, reject) => { raw.once('open', resolve); raw.once('error', reject) })
    await sleep(300)
    const before = frames.length
    raw.send(Uint8Array.of(3))
    const has = (f, x, state) => f.states.some((s) => s.clientID === x.doc.clientID && json(s.state) === json(state))
    await waitFor('the answer to an awareness query holds the states of alice, carol and alice-2', () =>
      frames.slice(before).some((f) => f.kind === 'awareness' && has(f, a, moved) && has(f, c, carol) && has(f, a2, alice2)),
    { explain: () => `frames after the query: ${json(frames.slice(before))}; before: ${json(frames.slice(0, before))}` })
    raw.close()
  }

  // Clean leave: the provider sends a null state, then closes.
  c.provider.disconnect()
  await forgets(a, c)
  await forgets(a2, c)
  await forgets(late, c)

  // Abrupt leave: the socket is dropped without a null state; the server must remove the states
  // that connection controlled.
  a2.provider.shouldConnect = false
  a2.provider.ws.terminate()
  await forgets(a, a2)
  await forgets(late, a2)

  // Alice's state is untouched by all of that.
  await sees(late, a, moved)
})
