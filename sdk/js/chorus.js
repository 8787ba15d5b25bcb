// Chorus session protocol client for browsers (docs/protocol.md, sections 2.1 and 4).
//
// One WebSocket to `/ws`, `hello` first, JSON frames. Requests carry ids and resolve with the
// reply's `result` or reject with a `ChorusError` carrying the error `code`. Server-initiated
// frames (`message`, `presence`, `meeting.*`, ...) go to listeners registered with `on(type)`.
// The server's `ping`s are answered with `pong`; silence for two heartbeats closes the socket.
// With `reconnect` on, a lost connection is retried with exponential backoff and jitter and the
// `reconnected` event tells services to restore their state (nothing survives a connection).
//
// Plain ES module, no dependencies, no build step.

/** The protocol version this client speaks. */
export const PROTOCOL_VERSION = 1;

/** Largest request id a JavaScript client uses (ids must stay below 2^53). */
const MAX_ID = Number.MAX_SAFE_INTEGER;

/** A failed request or connection: `code` is the stable protocol error code (section 8). */
export class ChorusError extends Error {
  /**
   * @param {string} code stable error code, e.g. `forbidden`, or `closed`/`timeout` (client side)
   * @param {string} message human-readable text from the server or this client
   * @param {object} [details] extra fields, e.g. `{reconnect}` of a `disconnect`
   */
  constructor(code, message, details = {}) {
    super(message || code);
    this.name = "ChorusError";
    this.code = code;
    Object.assign(this, details);
  }
}

/** A minimal listener registry: `on` returns a function that removes the listener. */
export class Emitter {
  #listeners = new Map();

  /**
   * @param {string} type event type
   * @param {(value: any) => void} listener
   * @returns {() => void} unsubscribe
   */
  on(type, listener) {
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => this.off(type, listener);
  }

  /** Remove a listener added with `on`. */
  off(type, listener) {
    const set = this.#listeners.get(type);
    if (set) {
      set.delete(listener);
      if (set.size === 0) this.#listeners.delete(type);
    }
  }

  /** Call every listener of `type` with `value`; a throwing listener is reported, not fatal. */
  emit(type, value) {
    const set = this.#listeners.get(type);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(value);
      } catch (e) {
        console.error(`chorus: a "${type}" listener threw`, e);
      }
    }
  }
}

/** The `/ws` URL of the server that served this page. */
export function defaultUrl() {
  const { protocol, host } = globalThis.location;
  return `${protocol === "https:" ? "wss:" : "ws:"}//${host}/ws`;
}

/**
 * A session with a Chorus server.
 *
 * Events (`client.on(type, fn)`):
 * - `open` (welcome): a session started (first connection or a reconnection);
 * - `reconnected` (welcome): a session started after a lost one; re-subscribe, re-join;
 * - `close` ({code, message, reconnect}): the connection ended; `code` is the `disconnect`
 *   code, or `closed` when the socket just closed;
 * - `reconnecting` ({attempt, delayMs}): a reconnection is scheduled;
 * - any server frame type other than `reply`, `error`, `ping` and `disconnect`
 *   (`message`, `presence`, `meeting.participants`, ...): the frame itself;
 * - `error` (frame): an `error` frame without `id` (the server could not read a frame).
 */
export class Client extends Emitter {
  /**
   * @param {object} options
   * @param {string | (() => string | Promise<string>)} options.token the access token, or a
   *   function giving a fresh one for each connection (e.g. after `token_expired`)
   * @param {string} [options.url] the `/ws` URL; default: this page's server
   * @param {boolean} [options.reconnect] reconnect after a lost connection (default true)
   * @param {number} [options.requestTimeoutMs] reject a request unanswered this long (default 15000)
   * @param {number} [options.minBackoffMs] first reconnection delay (default 500)
   * @param {number} [options.maxBackoffMs] largest reconnection delay (default 30000)
   * @param {string} [options.clientName] sent in `hello.client`
   */
  constructor(options) {
    super();
    if (!options || !options.token) throw new ChorusError("invalid_request", "a token is required");
    this.options = {
      url: options.url ?? defaultUrl(),
      reconnect: options.reconnect ?? true,
      requestTimeoutMs: options.requestTimeoutMs ?? 15000,
      minBackoffMs: options.minBackoffMs ?? 500,
      maxBackoffMs: options.maxBackoffMs ?? 30000,
      clientName: options.clientName ?? "chorus-js/0.1",
      token: options.token,
    };
    /** `idle` | `connecting` | `open` | `closed` (closed by `close()`: never reconnects) */
    this.state = "idle";
    /** The `hello` reply of the current session, or null. */
    this.welcome = null;
    this.#pending = new Map();
  }

  #ws = null;
  #pending;
  #nextId = 1;
  #attempt = 0;
  #everOpened = false;
  #retryTimer = null;
  #livenessTimer = null;
  #lastReceived = 0;
  #connectWaiters = [];

  /**
   * Connect and say `hello`; resolves with the welcome. Rejects with the `disconnect` code
   * (e.g. `invalid_token`) when the server refuses the session, or `closed` when the socket
   * fails first. With `reconnect` on, a failed first attempt is not retried: only a session that
   * was once open is.
   * @returns {Promise<object>} the welcome (section 4.2)
   */
  connect() {
    if (this.state === "open") return Promise.resolve(this.welcome);
    const waiter = new Promise((resolve, reject) => this.#connectWaiters.push({ resolve, reject }));
    if (this.state !== "connecting") this.#open();
    return waiter;
  }

  /** End the session for good: no reconnection; pending requests reject with `closed`. */
  close() {
    this.state = "closed";
    clearTimeout(this.#retryTimer);
    this.#stopLiveness();
    const ws = this.#ws;
    this.#ws = null;
    if (ws) ws.close(1000, "client closed");
    this.#failPending(new ChorusError("closed", "the client closed the connection"));
    this.#settleConnect(null, new ChorusError("closed", "the client closed the connection"));
  }

  /**
   * Drop the current connection and reconnect at once, as after a lost connection (services
   * get `reconnected` and restore their state). For when the app knows the path changed, e.g.
   * the browser's `online` event after a network switch.
   */
  reconnect() {
    if (this.state !== "open" || !this.#ws) return;
    this.#attempt = 0;
    this.#abandon(this.#ws, { code: "closed", message: "reconnecting on request", reconnect: true, now: true });
  }

  /**
   * Send a request and wait for its reply.
   * @param {string} type e.g. `meeting.join`
   * @param {object} [fields] the request's other fields
   * @param {{timeoutMs?: number}} [opts]
   * @returns {Promise<object>} the reply's `result`
   * @throws {ChorusError} the `error` frame (`code`, `message`), or `closed`/`timeout`
   */
  request(type, fields = {}, opts = {}) {
    if (this.state !== "open" || !this.#ws) {
      return Promise.reject(new ChorusError("closed", "not connected"));
    }
    return this.#send(this.#ws, { type, ...fields }, opts.timeoutMs ?? this.options.requestTimeoutMs);
  }

  #send(ws, frame, timeoutMs) {
    const id = this.#nextId;
    this.#nextId = this.#nextId >= MAX_ID ? 1 : this.#nextId + 1;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new ChorusError("timeout", `no reply to \`${frame.type}\` within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      try {
        ws.send(JSON.stringify({ ...frame, id }));
      } catch (e) {
        clearTimeout(timer);
        this.#pending.delete(id);
        reject(new ChorusError("closed", `cannot send: ${e.message}`));
      }
    });
  }

  async #open() {
    this.state = "connecting";
    let token;
    try {
      token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
    } catch (e) {
      this.#lost({ code: "invalid_token", message: `no token: ${e.message}`, reconnect: false });
      return;
    }
    if (this.state !== "connecting") return; // closed meanwhile
    let ws;
    try {
      ws = new WebSocket(this.options.url);
    } catch (e) {
      this.#lost({ code: "closed", message: `cannot open ${this.options.url}: ${e.message}`, reconnect: false });
      return;
    }
    this.#ws = ws;
    let disconnect = null; // the server's `disconnect` frame, if it sent one
    ws.onmessage = (event) => {
      if (ws !== this.#ws) return;
      this.#lastReceived = Date.now();
      if (typeof event.data !== "string") return; // MessagePack is never asked for here
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        console.warn("chorus: a frame that is not JSON", event.data);
        return;
      }
      if (frame.type === "disconnect") disconnect = frame;
      this.#dispatch(ws, frame);
    };
    ws.onclose = (event) => {
      if (ws !== this.#ws) return;
      this.#ws = null;
      this.#lost(
        disconnect ?? {
          code: "closed",
          message: event.reason || `the connection closed (${event.code})`,
          reconnect: true,
        },
      );
    };
    ws.onopen = async () => {
      if (ws !== this.#ws) return;
      try {
        const hello = { type: "hello", version: PROTOCOL_VERSION, token, client: this.options.clientName };
        const welcome = await this.#send(ws, hello, this.options.requestTimeoutMs);
        if (ws !== this.#ws) return;
        this.welcome = welcome;
        this.state = "open";
        const reconnected = this.#everOpened;
        this.#everOpened = true;
        this.#attempt = 0;
        this.#startLiveness(ws, welcome.heartbeat_ms);
        this.#settleConnect(welcome, null);
        this.emit("open", welcome);
        if (reconnected) this.emit("reconnected", welcome);
      } catch (e) {
        // A refused hello arrives as `disconnect` and then a close; `#lost` handles it.
        if (e.code === "timeout") {
          this.#abandon(ws, { code: "timeout", message: "no reply to hello", reconnect: true });
        }
      }
    };
  }

  #dispatch(ws, frame) {
    switch (frame.type) {
      case "reply":
      case "error": {
        const waiter = frame.id === undefined ? undefined : this.#pending.get(frame.id);
        if (!waiter) {
          if (frame.type === "error") this.emit("error", frame);
          return;
        }
        this.#pending.delete(frame.id);
        clearTimeout(waiter.timer);
        if (frame.type === "reply") waiter.resolve(frame.result ?? {});
        else waiter.reject(new ChorusError(frame.code, frame.message));
        return;
      }
      case "ping":
        try {
          ws.send('{"type":"pong"}');
        } catch {
          // the close handler reports the lost connection
        }
        return;
      case "disconnect":
        return; // kept by the message handler; reported with the close
      default:
        this.emit(frame.type, frame);
    }
  }

  // Give up on a socket that may never report its close (a dead path): report it lost now.
  #abandon(ws, info) {
    if (ws !== this.#ws) return;
    this.#ws = null;
    try {
      ws.close(4000, info.code);
    } catch {
      // already closing
    }
    this.#lost(info);
  }

  #lost(info) {
    this.#stopLiveness();
    const wasOpen = this.state === "open";
    if (this.state === "closed") return;
    this.welcome = null;
    const error = new ChorusError(info.code, info.message, { reconnect: info.reconnect });
    this.#failPending(error);
    this.emit("close", { code: info.code, message: info.message, reconnect: info.reconnect });
    // Only a session that was open once is retried: a first connect reports its failure.
    const retry = this.options.reconnect && info.reconnect !== false && (wasOpen || this.#everOpened);
    if (!retry) {
      this.state = "idle";
      this.#settleConnect(null, error);
      return;
    }
    this.state = "connecting";
    const base = Math.min(this.options.maxBackoffMs, this.options.minBackoffMs * 2 ** this.#attempt);
    const delayMs = info.now ? 0 : Math.round(base / 2 + Math.random() * (base / 2));
    this.#attempt = Math.min(this.#attempt + 1, 16);
    this.emit("reconnecting", { attempt: this.#attempt, delayMs, code: info.code });
    this.#retryTimer = setTimeout(() => {
      if (this.state === "connecting") this.#open();
    }, delayMs);
  }

  #failPending(error) {
    for (const waiter of this.#pending.values()) {
      clearTimeout(waiter.timer);
      waiter.reject(error);
    }
    this.#pending.clear();
  }

  #settleConnect(welcome, error) {
    const waiters = this.#connectWaiters;
    this.#connectWaiters = [];
    for (const w of waiters) (error ? w.reject(error) : w.resolve(welcome));
  }

  // Server liveness (section 4.4): nothing received for two heartbeats means the path is gone.
  #startLiveness(ws, heartbeatMs) {
    this.#stopLiveness();
    const limit = 2 * (heartbeatMs || 25000);
    this.#lastReceived = Date.now();
    this.#livenessTimer = setInterval(() => {
      if (ws !== this.#ws) return this.#stopLiveness();
      if (Date.now() - this.#lastReceived > limit) {
        const message = `nothing from the server for ${limit} ms`;
        this.#abandon(ws, { code: "timeout", message, reconnect: true });
      }
    }, Math.min(limit / 4, 5000));
  }

  #stopLiveness() {
    clearInterval(this.#livenessTimer);
    this.#livenessTimer = null;
  }
}
