// Shared helpers of the y-websocket compatibility scenarios.
//
// Every scenario is a plain script: it reads its configuration from the environment, drives real
// `y-websocket` providers against the server, and exits 0 after printing `ok: <scenario>`, or
// non-zero after printing what went wrong together with the frames each client saw.
//
// Environment:
//   YJS_SERVER_URL      ws://HOST:PORT/yjs (the provider appends /<doc>?token=...)
//   YJS_DOC             a document id unique to this run; scenarios derive further ids from it
//   YJS_TOKEN_ALICE     alice@acme          YJS_TOKEN_CAROL    carol@acme
//   YJS_TOKEN_BOB       bob@globex          YJS_TOKEN_READONLY an acme user with `subscribe` only
//   YJS_TIMEOUT_MS      the bound of every wait (default 10000); a failure bound, never a speed goal
//   YJS_REFERENCE=1     the server is @y/websocket-server (no auth): token-dependent checks are off

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import * as decoding from 'lib0/decoding'

export { Y }

const env = process.env

function required (name) {
  const value = env[name]
  if (value === undefined || value === '') {
    fail(`environment variable ${name} is not set (see the header of tests/yjs/lib.mjs)`)
  }
  return value
}

export const reference = env.YJS_REFERENCE === '1'

export const config = {
  url: required('YJS_SERVER_URL'),
  doc: required('YJS_DOC'),
  timeoutMs: Number(env.YJS_TIMEOUT_MS || 10000),
  tokens: {
    alice: reference ? env.YJS_TOKEN_ALICE || 'alice' : required('YJS_TOKEN_ALICE'),
    carol: reference ? env.YJS_TOKEN_CAROL || 'carol' : required('YJS_TOKEN_CAROL'),
    bob: reference ? env.YJS_TOKEN_BOB || 'bob' : required('YJS_TOKEN_BOB'),
    readonly: reference ? env.YJS_TOKEN_READONLY || 'readonly' : required('YJS_TOKEN_READONLY')
  }
}

const started = Date.now()
const elapsed = () => ((Date.now() - started) / 1000).toFixed(3) + 's'

/** Every client made by `client`, so a failure can show what each saw. */
const clients = []

function fail (message) {
  console.error(`FAIL: ${message}`)
  process.exit(1)
}

// ---------------------------------------------------------------------------------------------
// Frames: a readable description of every y-websocket message in and out.

const SYNC = 0
const AWARENESS = 1
const AUTH = 2
const QUERY_AWARENESS = 3

/** Decode one y-websocket message far enough to describe it. */
export function describeFrame (bytes) {
  const data = toBytes(bytes)
  try {
    const d = decoding.createDecoder(data)
    const type = decoding.readVarUint(d)
    switch (type) {
      case SYNC: {
        const sub = decoding.readVarUint(d)
        const payload = decoding.readVarUint8Array(d)
        const name = ['sync-step-1', 'sync-step-2', 'sync-update'][sub] || `sync-unknown(${sub})`
        return { kind: name, bytes: data.length, payload: payload.length }
      }
      case AWARENESS: {
        const update = decoding.readVarUint8Array(d)
        const ad = decoding.createDecoder(update)
        const n = decoding.readVarUint(ad)
        const states = []
        for (let i = 0; i < n; i++) {
          const clientID = decoding.readVarUint(ad)
          const clock = decoding.readVarUint(ad)
          const state = JSON.parse(decoding.readVarString(ad))
          states.push({ clientID, clock, state })
        }
        return { kind: 'awareness', bytes: data.length, states }
      }
      case AUTH: {
        const sub = decoding.readVarUint(d)
        if (sub === 0) {
          return { kind: 'auth-permission-denied', reason: decoding.readVarString(d) }
        }
        return { kind: `auth-unknown(${sub})`, bytes: data.length }
      }
      case QUERY_AWARENESS:
        return { kind: 'query-awareness', bytes: data.length }
      default:
        return { kind: `unknown-type(${type})`, bytes: data.length }
    }
  } catch (e) {
    return { kind: 'undecodable', bytes: data.length, error: String(e), hex: hex(data) }
  }
}

function toBytes (data) {
  if (data instanceof Uint8Array) return data
  if (data instanceof ArrayBuffer) return new Uint8Array(data)
  if (Array.isArray(data)) return new Uint8Array(Buffer.concat(data))
  return new Uint8Array(data)
}

function hex (bytes) {
  const shown = Buffer.from(bytes.slice(0, 64)).toString('hex')
  return bytes.length > 64 ? shown + '...' : shown
}

/**
 * A `ws` WebSocket that writes every event of its life into `log`: each connection attempt,
 * open, frame in and out (decoded), error, and close code with its reason.
 */
function recordingWebSocket (log) {
  return class RecordingWebSocket extends WebSocket {
    constructor (url, protocols) {
      super(url, protocols)
      const attempt = ++log.attempts
      const note = (what, detail) => log.events.push({ t: elapsed(), attempt, what, ...detail })
      note('connect', { url: url.replace(/token=[^&]*/, 'token=…') })
      this.addEventListener('open', () => { log.opens++; note('open') })
      this.addEventListener('message', (e) => {
        const frame = describeFrame(e.data)
        log.frames.push(frame)
        note('in', frame)
      })
      this.addEventListener('error', (e) => note('error', { message: e.message || String(e.error) }))
      this.addEventListener('close', (e) => {
        log.closes.push({ code: e.code, reason: e.reason })
        note('close', { code: e.code, reason: e.reason })
      })
      const send = this.send.bind(this)
      this.send = (data, ...rest) => {
        note('out', describeFrame(data))
        return send(data, ...rest)
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Clients.

/**
 * A Y.Doc with a y-websocket provider to `docId` authenticated as `token`.
 * BroadcastChannel is off: every client of a scenario lives in this one process, and must sync
 * through the server only.
 */
export function client (name, token, { docId = config.doc, connect = true, params } = {}) {
  const log = { name, attempts: 0, opens: 0, frames: [], closes: [], events: [], closed: [], statuses: [] }
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(config.url, docId, doc, {
    connect,
    params: params ?? (token === undefined ? {} : { token }),
    WebSocketPolyfill: recordingWebSocket(log),
    disableBc: true,
    maxBackoffTime: 500
  })
  provider.on('closed', (event) => log.closed.push(event))
  provider.on('status', ({ status }) => log.statuses.push(status))
  const c = {
    name,
    doc,
    provider,
    log,
    awareness: provider.awareness,
    text: doc.getText('text'),
    map: doc.getMap('map'),
    snapshot: () => ({ text: doc.getText('text').toString(), map: doc.getMap('map').toJSON() }),
    synced: () => provider.synced,
    destroy: () => provider.destroy()
  }
  clients.push(c)
  return c
}

// ---------------------------------------------------------------------------------------------
// Phases driven from outside: the scenario prints `PHASE <name>` and waits for one line on its
// standard input, which the driver (tests/it/yjs_node.rs) writes once it has done its part.

let stdinLines = null

export async function phase (name) {
  if (stdinLines === null) {
    const { createInterface } = await import('node:readline')
    const rl = createInterface({ input: process.stdin })
    const queue = []
    const waiting = []
    rl.on('line', (line) => (waiting.length ? waiting.shift()(line) : queue.push(line)))
    rl.on('close', () => { while (waiting.length) waiting.shift()(null) })
    stdinLines = () => queue.length ? Promise.resolve(queue.shift()) : new Promise((resolve) => waiting.push(resolve))
  }
  console.log(`PHASE ${name}`)
  const answer = await stdinLines()
  if (answer === null) throw new Error(`the driver closed standard input at phase ${name}`)
  return answer
}

// ---------------------------------------------------------------------------------------------
// Waiting and checking.

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Wait until `predicate()` holds, at most `timeoutMs` (a failure bound, not a speed goal).
 * On timeout, fails with `what` and the optional `explain()` of the state.
 */
export async function waitFor (what, predicate, { timeoutMs = config.timeoutMs, explain } = {}) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (predicate()) return
    if (Date.now() > deadline) {
      const state = explain ? `\n  state: ${explain()}` : ''
      throw new Error(`not within ${timeoutMs / 1000} s: ${what}${state}`)
    }
    await sleep(20)
  }
}

export function check (condition, message) {
  if (!condition) throw new Error(message)
}

/** JSON with object keys sorted, so two equal maps print the same whatever their insertion order. */
export const json = (value) => JSON.stringify(value, (_key, v) =>
  v && typeof v === 'object' && !Array.isArray(v)
    ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, v[k]]))
    : v)

export async function synced (...cs) {
  for (const c of cs) {
    await waitFor(`${c.name} synced with the server`, c.synced, {
      explain: () => `attempts=${c.log.attempts} opens=${c.log.opens} closes=${json(c.log.closes)}`
    })
  }
}

/** Wait until every client has the same document (state vectors, text and map). */
export async function converged (what, cs, expect) {
  const same = () => {
    const first = cs[0]
    const sv = Buffer.from(Y.encodeStateVector(first.doc)).toString('hex')
    const snap = json(first.snapshot())
    return cs.every((c) =>
      Buffer.from(Y.encodeStateVector(c.doc)).toString('hex') === sv &&
      json(c.snapshot()) === snap
    ) && (expect === undefined || expect(first))
  }
  await waitFor(what, same, {
    explain: () => cs.map((c) => `\n    ${c.name}: ${json(c.snapshot())}`).join('')
  })
}

/**
 * Run a scenario: `body` gets nothing and throws on failure. Prints `ok: name`, or the error and
 * the frame log of every client, and exits. The whole scenario is bounded too.
 */
export function scenario (name, body) {
  const limit = Math.max(60_000, config.timeoutMs * 6)
  const guard = setTimeout(() => {
    report(name, new Error(`the scenario did not finish within ${limit / 1000} s`))
    process.exit(1)
  }, limit)
  body().then(
    () => {
      clearTimeout(guard)
      for (const c of clients) c.destroy()
      console.log(`ok: ${name} (${elapsed()})`)
      process.exit(0)
    },
    (err) => {
      clearTimeout(guard)
      report(name, err)
      for (const c of clients) c.destroy()
      process.exit(1)
    }
  )
}

function report (name, err) {
  console.error(`FAIL: ${name}: ${err && err.message ? err.message : err}`)
  if (err && err.stack && process.env.YJS_STACK === '1') console.error(err.stack)
  console.error(`server ${config.url}, doc ${config.doc}${reference ? ' (reference server)' : ''}`)
  for (const c of clients) {
    console.error(`--- ${c.name}: attempts=${c.log.attempts} opens=${c.log.opens} synced=${c.synced()} ` +
      `closes=${json(c.log.closes)} doc=${json(c.snapshot())}`)
    const events = c.log.events
    const shown = events.length > 80 ? events.slice(events.length - 80) : events
    if (shown.length < events.length) console.error(`    (${events.length - shown.length} earlier events left out)`)
    for (const e of shown) console.error(`    ${json(e)}`)
  }
}
