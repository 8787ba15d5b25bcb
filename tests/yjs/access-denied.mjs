// (e) Access is refused for another organisation's document: bob@globex on a document of acme,
// alice@acme on one of globex, and clients with no token or a forged one. Each refused provider
// gets the y-protocols auth message "permission denied" with a reason, then a close with a code
// in 4400-4499, and so stops reconnecting; it never receives the document, and its edits never
// reach the document's users.
import { client, config, converged, scenario, synced, sleep, waitFor, check, json } from './lib.mjs'

async function refused (c, { secret } = {}) {
  await waitFor(`${c.name}'s provider is closed for good (y-websocket 'closed' event)`,
    () => c.log.closed.length > 0,
    { explain: () => `attempts=${c.log.attempts} closes=${json(c.log.closes)} statuses=${json(c.log.statuses)}` })
  // The first connection must end the provider's attempts: no abnormal close (1006: the socket
  // dropped without a close frame, losing the frames before it) and no reconnect in between.
  const first = c.log.closes[0]
  check(first && first.code >= 4400 && first.code <= 4499,
    `${c.name}: its first connection closed with ${json(first)}, not with a code in 4400-4499` +
    (first && first.code === 1006 ? ' (1006: no close frame reached the client, the socket was dropped or reset)' : '') +
    `; all closes: ${json(c.log.closes)}`)
  const closed = c.log.closed[0]
  check(closed.code >= 4400 && closed.code <= 4499,
    `${c.name}: close code ${closed.code} (reason ${json(closed.reason)}) is not in 4400-4499`)
  const denied = c.log.frames.filter((f) => f.kind === 'auth-permission-denied')
  check(denied.length === 1, `${c.name}: expected one "permission denied" auth message, got ${json(c.log.frames)}`)
  check(denied[0].reason.length > 0, `${c.name}: "permission denied" without a reason`)
  const iDenied = c.log.events.findIndex((e) => e.what === 'in' && e.kind === 'auth-permission-denied')
  const iClose = c.log.events.findIndex((e) => e.what === 'close')
  check(iDenied >= 0 && iDenied < iClose, `${c.name}: "permission denied" did not come before the close`)
  const content = c.log.frames.filter((f) =>
    (f.kind === 'sync-step-2' || f.kind === 'sync-update') && f.payload > 2)
  check(content.length === 0, `${c.name} received document content: ${json(content)}`)
  if (secret) check(!c.text.toString().includes(secret), `${c.name} has the document's text`)

  // Give the provider time for several reconnects (its backoff is capped at 500 ms here): none.
  await sleep(2000)
  check(c.log.attempts === 1, `${c.name} tried ${c.log.attempts} connections after the refusal`)
  check(c.log.opens <= 1 && !c.provider.wsconnected, `${c.name} is connected again`)
  check(!c.provider.shouldConnect, `${c.name}'s provider still wants to reconnect`)
  console.log(`  ${c.name}: permission denied (${json(denied[0].reason)}), close ${closed.code} ${json(closed.reason)}`)
}

scenario('access denied for another organisation\'s document', async () => {
  const acmeDoc = config.doc
  const globexDoc = `${config.doc}-globex`

  // alice creates the document in acme; carol of acme shares it.
  const a = client('alice', config.tokens.alice, { docId: acmeDoc })
  const c = client('carol', config.tokens.carol, { docId: acmeDoc })
  await synced(a, c)
  a.text.insert(0, 'acme secret')
  await converged('alice and carol share the acme document', [a, c], (x) => x.text.toString() === 'acme secret')

  // bob of globex, who edited before connecting (so his sync step 2 would carry it).
  const b = client('bob', config.tokens.bob, { docId: acmeDoc, connect: false })
  b.text.insert(0, 'bob was here ')
  b.map.set('bob', true)
  b.provider.connect()
  await refused(b, { secret: 'acme secret' })

  // No token, and a forged one.
  const anon = client('no-token', undefined, { docId: acmeDoc })
  await refused(anon, { secret: 'acme secret' })
  const forged = client('forged-token', config.tokens.alice.slice(0, -4) + 'AAAA', { docId: acmeDoc })
  await refused(forged, { secret: 'acme secret' })

  // bob's edits reached no one, not even a client joining now.
  const late = client('carol-late', config.tokens.carol, { docId: acmeDoc })
  await synced(late)
  await converged('the acme document is unchanged', [a, c, late], (x) => x.text.toString() === 'acme secret')
  check(!a.map.has('bob'), 'bob\'s map entry reached alice')

  // The refusal is about the space, not bob's token: bob opens his own document, and alice is
  // refused on it.
  const b2 = client('bob-own-doc', config.tokens.bob, { docId: globexDoc })
  await synced(b2)
  b2.text.insert(0, 'globex secret')
  const b3 = client('bob-own-doc-2', config.tokens.bob, { docId: globexDoc })
  await synced(b3)
  await converged('bob\'s two clients share the globex document', [b2, b3], (x) => x.text.toString() === 'globex secret')
  const ag = client('alice-on-globex', config.tokens.alice, { docId: globexDoc })
  await refused(ag, { secret: 'globex secret' })
})
