// (c) A client edits while disconnected (provider.disconnect(), edit, provider.connect()) and
// syncs on reconnect, merging with what the others wrote meanwhile.
import { client, config, converged, scenario, synced, sleep, check, json } from './lib.mjs'

scenario('offline edits sync on reconnect', async () => {
  const a = client('alice', config.tokens.alice)
  const c = client('carol', config.tokens.carol)
  await synced(a, c)
  a.text.insert(0, 'base.')
  await converged('alice and carol share the base text', [a, c], (x) => x.text.toString() === 'base.')

  a.provider.disconnect()
  a.text.insert(a.text.length, ' alice-offline.')
  a.map.set('offline', 'alice')
  c.text.insert(0, 'carol-online. ')
  c.map.set('online', 'carol')
  await sleep(300)
  check(!c.text.toString().includes('alice-offline'), 'carol saw alice\'s edit while alice was disconnected')
  check(!a.text.toString().includes('carol-online'), 'alice saw carol\'s edit while disconnected')

  const opensBefore = a.log.opens
  a.provider.connect()
  await synced(a)
  check(a.log.opens > opensBefore, 'alice did not open a new connection')
  await converged('alice and carol converged after alice reconnected', [a, c], (x) =>
    x.text.toString() === 'carol-online. base. alice-offline.' &&
    x.map.get('offline') === 'alice' && x.map.get('online') === 'carol')

  // A second round trip, with offline edits on both sides this time.
  a.provider.disconnect()
  c.provider.disconnect()
  a.map.set('round2', 'alice')
  c.map.set('round2-carol', 'carol')
  a.provider.connect()
  c.provider.connect()
  await synced(a, c)
  await converged('both offline clients converged after reconnecting', [a, c], (x) =>
    x.map.get('round2') === 'alice' && x.map.get('round2-carol') === 'carol')
  check(json(a.snapshot()) === json(c.snapshot()), 'snapshots differ')
})
