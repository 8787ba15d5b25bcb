// Hocuspocus (@hocuspocus/server), the peer `chorus bench yjs --yjs-server hocuspocus` and
// benches/yjs-compare.sh measure Chorus against.
//
//   node hocuspocus-server.mjs [--port N] [--host H]
//
// Serves on H:N (default 127.0.0.1 and a free port), prints its WebSocket URL on one line once
// it listens, and runs until stopped (SIGINT or SIGTERM). No extensions and no hooks: documents
// live in memory only, every token is accepted, as the reference y-websocket server is run. The
// document name travels inside each message, so any path of the URL reaches the same documents.

import { Server } from '@hocuspocus/server'

const args = process.argv.slice(2)

function option (name, fallback) {
  const i = args.indexOf(name)
  if (i < 0) return fallback
  const value = args[i + 1]
  if (value === undefined || value.startsWith('--')) {
    console.error(`hocuspocus-server: ${name} needs a value`)
    process.exit(2)
  }
  return value
}

for (const arg of args) {
  if (arg.startsWith('--') && arg !== '--port' && arg !== '--host') {
    console.error(`hocuspocus-server: unknown option ${arg} (usage: node hocuspocus-server.mjs [--port N] [--host H])`)
    process.exit(2)
  }
}

const host = option('--host', '127.0.0.1')
const port = Number(option('--port', '0'))
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`hocuspocus-server: --port must be a port number (0 for a free one), not ${option('--port')}`)
  process.exit(2)
}

// The port goes into the configuration: `listen(0)` would fall back to the default port.
const server = new Server({ address: host, port, quiet: true })
await server.listen()
console.log(`ws://${host}:${server.address.port}`)

const stop = async () => {
  await server.destroy()
  process.exit(0)
}
process.on('SIGINT', stop)
process.on('SIGTERM', stop)
