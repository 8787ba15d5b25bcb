// The reference y-websocket server (@y/websocket-server), to check the scenarios themselves and,
// later, to compare against.
//
//   node reference-server.mjs [--port N]        serve on 127.0.0.1:N (default: a free port) and
//                                              print its yjs URL; runs until stopped
//   node reference-server.mjs --run [names...]  serve on a free port, run the scenarios that need
//                                              no auth (converge, late-joiner, offline-edit,
//                                              awareness, persist without restarts, or the
//                                              names given) against it; exits non-zero if one
//                                              fails
//
// The provider's URL is ws://127.0.0.1:PORT/yjs/<doc>; the reference server names the document
// after the whole path, which is fine: every scenario uses that same URL.

import http from 'node:http'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import path from 'node:path'
import { WebSocketServer } from 'ws'
import { setupWSConnection } from '@y/websocket-server/utils'

const here = path.dirname(fileURLToPath(import.meta.url))
const args = process.argv.slice(2)
const portArg = args.indexOf('--port')
const port = portArg >= 0 ? Number(args[portArg + 1]) : 0
const runIndex = args.indexOf('--run')

const wss = new WebSocketServer({ noServer: true })
wss.on('connection', setupWSConnection)
const server = http.createServer((_req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain' })
  res.end('reference y-websocket server\n')
})
server.on('upgrade', (req, socket, head) => {
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req))
})

await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve))
const url = `ws://127.0.0.1:${server.address().port}/yjs`

if (runIndex < 0) {
  console.log(url)
} else {
  const named = args.slice(runIndex + 1).filter((a) => !a.startsWith('--'))
  const scenarios = named.length ? named : ['converge', 'late-joiner', 'offline-edit', 'awareness', 'persist']
  let failed = 0
  for (const name of scenarios) {
    // persist runs its phases on one document, without restarts (this server keeps it in memory).
    const runs = name === 'persist' ? [['write'], ['append'], ['final']] : [[]]
    const doc = `ref-${name}-${process.pid}-${Date.now()}`
    let code = 0
    for (const extra of runs) {
      code = await new Promise((resolve) => {
        const child = spawn(process.execPath, [path.join(here, `${name}.mjs`), ...extra], {
          stdio: 'inherit',
          env: { ...process.env, YJS_SERVER_URL: url, YJS_DOC: doc, YJS_REFERENCE: '1' }
        })
        child.on('exit', (c, signal) => resolve(c ?? (signal ? 1 : 0)))
      })
      if (code !== 0) break
    }
    if (code !== 0) failed++
  }
  console.log(`${scenarios.length - failed} passed, ${failed} failed`)
  server.close()
  wss.close()
  process.exit(failed === 0 ? 0 : 1)
}
