// (f) Read-only: a token granted only `subscribe` receives the others' edits, but its own updates
// are dropped: they never reach the other clients nor the stored document, neither as updates nor
// in the sync step 2 it sends when it reconnects.
import { client, config, converged, scenario, synced, sleep, waitFor, check, json } from './lib.mjs'

scenario('read-only client receives but cannot write', async () => {
  // alice opens (and so creates) the document first: a read-only token may not create one.
  const a = client('alice', config.tokens.alice)
  await synced(a)
  const r = client('read-only', config.tokens.readonly)
  await synced(r)

  a.text.insert(0, 'alice 1.')
  a.map.set('alice', 1)
  await waitFor('read-only sees alice\'s first edit', () => r.text.toString() === 'alice 1.' && r.map.get('alice') === 1,
    { explain: () => json(r.snapshot()) })

  // The read-only client edits; then alice edits again. Once the reader sees alice's second edit,
  // its own edit had long been sent on the same connection.
  r.text.insert(r.text.length, ' READ-ONLY 1.')
  r.map.set('readonly', 1)
  await sleep(200)
  a.text.insert(0, 'alice 2. ')
  await waitFor('read-only sees alice\'s second edit', () => r.text.toString().startsWith('alice 2. '),
    { explain: () => json(r.snapshot()) })
  await sleep(500)
  check(!a.text.toString().includes('READ-ONLY') && !a.map.has('readonly'),
    `the read-only client's edit reached alice: ${json(a.snapshot())}`)

  // A client joining now gets the document without the read-only edit.
  const c = client('carol', config.tokens.carol)
  await synced(c)
  await converged('alice and carol agree', [a, c], (x) => x.text.toString() === 'alice 2. alice 1.')
  check(!c.map.has('readonly'), 'the read-only edit is in the stored document')

  // Reconnecting, the read-only client sends its whole state in sync step 2: still dropped.
  r.provider.disconnect()
  r.map.set('readonly-offline', 1)
  r.provider.connect()
  await synced(r)
  a.map.set('alice', 2)
  await waitFor('read-only sees alice\'s edit after reconnecting', () => r.map.get('alice') === 2,
    { explain: () => json(r.snapshot()) })
  await sleep(500)
  const late = client('carol-late', config.tokens.carol)
  await synced(late)
  await converged('alice, carol and a late joiner agree', [a, c, late], (x) => x.map.get('alice') === 2)
  for (const x of [a, c, late]) {
    check(!x.text.toString().includes('READ-ONLY') && !x.map.has('readonly') && !x.map.has('readonly-offline'),
      `the read-only client's edits reached ${x.name}: ${json(x.snapshot())}`)
  }
  // The read-only client was never refused: it stayed connected throughout.
  check(r.log.closed.length === 0, `read-only client was closed: ${json(r.log.closed)}`)
})
