// Chorus meetings in the browser (docs/protocol.md, section 15), in either of the meeting's
// modes, with the same API:
// - mesh: every participant holds one RTCPeerConnection with every other and sends its media
//   to each directly. The session protocol carries the signalling (`meeting.signal`: offers,
//   answers, trickle ICE), the participant list with its tracks (`meeting.participants`) and
//   admin actions.
// - sfu (15.7): one RTCPeerConnection with the server, which always offers (`meeting.offer`,
//   answered with `meeting.answer`); each offer's `media` says which track every m-line carries
//   and whose it is. Lines of our own tracks get the local track (sendonly); the others are
//   received tracks.
// A mesh meeting may turn into SFU mode while it runs (`meeting.mode`, never back): the peer
// connections close, the published tracks stay published and go on the server's lines.
//
// Negotiation is "perfect negotiation" per pair: either side may offer at any time; on a
// collision the polite peer (the one whose sid compares greater) rolls back and answers, the
// impolite one ignores the other's offer.
//
// Matching remote media to tracks. A receiver's MediaStreamTrack id is not the sender's, but
// the remote description keeps, per m-section, `a=msid:<stream id> <track id>` with the sender's
// MediaStreamTrack id, which is the `cid` the sender published. After every remote description
// the SDK maps each transceiver's `mid` to that track id, keeps those whose remote direction
// sends (sendrecv/sendonly), and pairs them with the participant's published tracks by `cid`.
// A track is reported (`track` event) once both the media and the published track are known,
// whichever comes first, and ended (`track-ended`) when either goes.
//
// Plain ES module, no dependencies.

import { ChorusError, Emitter } from "./chorus.js";

/** Track sources a participant may publish. */
export const SOURCES = Object.freeze(["camera", "microphone", "screen_share", "screen_share_audio"]);

/**
 * The media sections of an SDP: `{mid, kind, direction, streamId, trackId}` per `m=` line.
 * The direction defaults to the session-level one, then to `sendrecv` (RFC 8866).
 * @param {string} sdp
 * @returns {Array<{mid: string|null, kind: string, direction: string, streamId: string|null, trackId: string|null}>}
 */
export function parseSdpMedia(sdp) {
  const directions = new Set(["sendrecv", "sendonly", "recvonly", "inactive"]);
  const sections = [];
  let sessionDirection = "sendrecv";
  let current = null;
  for (const line of sdp.split(/\r?\n/)) {
    if (line.startsWith("m=")) {
      current = { mid: null, kind: line.slice(2).split(" ")[0], direction: null, streamId: null, trackId: null };
      sections.push(current);
    } else if (line.startsWith("a=")) {
      const attr = line.slice(2);
      if (directions.has(attr)) {
        if (current) current.direction = attr;
        else sessionDirection = attr;
      } else if (current && attr.startsWith("mid:")) {
        current.mid = attr.slice(4);
      } else if (current && attr.startsWith("msid:")) {
        const [streamId, trackId] = attr.slice(5).split(" ");
        current.streamId = streamId ?? null;
        current.trackId = trackId ?? null;
      }
    }
  }
  for (const s of sections) s.direction ??= sessionDirection;
  return sections;
}

// SFU mode: the server asks for camera video in these simulcast layers (rids, lowest first),
// each a quarter, a half and the whole of the captured size.
const LAYERS = ["q", "h", "f"];
const LAYER_SCALE = [4, 2, 1];
// How long an element's size must hold before it is reported (resizes come in bursts).
const LAYOUT_DEBOUNCE_MS = 250;
// Mesh: a peer connection with media that is not connected, and whose signaling and ICE states
// have not moved for this long, is negotiated again with an ICE restart (an offer or answer
// lost, the network changing while connecting); one that is slow but moving is left alone.
const RENEGOTIATE_MS = 10_000;

function sends(direction) {
  return direction === "sendrecv" || direction === "sendonly";
}

// Which stream a local track is sent in: camera and microphone together (so the receiver can
// keep them in sync), a screen share and its audio together.
function streamGroup(source) {
  return source === "screen_share" || source === "screen_share_audio" ? "screen" : "camera";
}

/**
 * A meeting in one room, joined through a connected `Client`.
 *
 * Events (`meeting.on(type, fn)`):
 * - `joined` ({participant, participants, grants}): the join (or a resume) succeeded;
 * - `participant` ({participant, previous}): another participant joined or changed (state,
 *   name, tracks, mute);
 * - `participant-left` ({participant}): another participant left;
 * - `self` ({participant}): the server's view of this participant changed;
 * - `track` ({participant, track, mediaTrack}): a remote track's media arrived; `track` is the
 *   published Track (`sid`, `cid`, `kind`, `source`, `muted`), `mediaTrack` its MediaStreamTrack;
 * - `track-ended` ({participant, track, mediaTrack}): that media went (unpublished, left);
 * - `data` ({from, payload, topic}): a `sendData` message from participant `from`;
 * - `muted` ({track, mediaTrack, muted, by}): an admin muted one of this participant's tracks
 *   (it is muted locally already);
 * - `left` ({reason, by}): this participant is out of the meeting (`leave()` gives `left`);
 * - `connection` ({state}): `reconnecting` while the session is lost, `joined` once back;
 * - `peer-state` ({participant, state}): a peer connection's `connectionState` changed (in
 *   SFU mode the one connection with the server: `participant` is null);
 * - `mode` ({mode}): the meeting turned into SFU mode (`sfu`) while it runs; the remote
 *   tracks end and arrive again through the server;
 * - `speakers` ({speakers}): SFU mode, who speaks now, loudest first: `[{participant, level}]`
 *   with `level` from 0 to 100 (an empty list: nobody);
 * - `paused` ({participant, track, paused, reason}): SFU mode, the server stopped (`paused`
 *   true) or resumed forwarding a remote video `track` (its meta) of `participant` to this
 *   page, for `reason` (`bandwidth`: it does not fit the bandwidth estimated towards you);
 * - `error` ({error, context}): a failure outside any call (signalling, resume).
 */
export class Meeting extends Emitter {
  /**
   * @param {import("./chorus.js").Client} client a client (connected before `join`)
   * @param {object} options
   * @param {string} options.room the room id
   * @param {string} [options.space] the space (default: the caller's organisation home space)
   * @param {string} [options.name] display name (default: the token's name or user id)
   * @param {"mesh"|"sfu"} [options.mode] the meeting's mode if this join creates it (default:
   *   the server's choice); the meeting's actual mode is `meeting.mode` once joined
   */
  constructor(client, options) {
    super();
    if (!options?.room) throw new ChorusError("invalid_request", "a room is required");
    this.client = client;
    this.room = options.room;
    this.space = options.space;
    this.name = options.name;
    this.requestedMode = options.mode;
    /** `mesh` | `sfu`: how the meeting carries media, from the join reply or `meeting.mode`. */
    this.mode = null;
    /** This participant as the server sees it (`sid`, `tracks`, ...), once joined. */
    this.self = null;
    /** The other participants by sid (active or reconnecting). */
    this.participants = new Map();
    /** `{publish, subscribe, data, admin}` from the join reply. */
    this.grants = null;
    /** ICE servers from the join reply, in RTCPeerConnection form. */
    this.iceServers = [];
    /** `idle` | `joining` | `joined` | `reconnecting` | `left` */
    this.state = "idle";
  }

  #peers = new Map(); // sid -> Peer (mesh mode)
  #server = null; // ServerSession (sfu mode)
  #local = new Map(); // track sid -> {track, meta, stream}
  #streams = new Map(); // stream group -> MediaStream (the msid carried to peers)
  #unlisten = [];
  #outbox = []; // signals made while the session is lost, sent once the participant is resumed

  /**
   * Join the meeting. Creates the room when the server allows it (`meetings_auto_create`).
   * @returns {Promise<object>} the join reply (`participant`, `participants`, `grants`, ...)
   * @throws {ChorusError} e.g. `not_found` (no such room or space), `limit_exceeded` (full)
   */
  async join() {
    if (this.state === "joining" || this.state === "joined") {
      throw new ChorusError("invalid_request", "already joined");
    }
    this.state = "joining";
    this.#listen();
    try {
      const reply = await this.client.request(
        "meeting.join",
        this.#fields({ name: this.name, mode: this.requestedMode }),
      );
      this.#applyJoin(reply);
      return reply;
    } catch (e) {
      this.#teardown();
      this.state = "idle";
      throw e;
    }
  }

  /**
   * Publish a local track and send it to every peer.
   * @param {MediaStreamTrack} track
   * @param {string} source one of `SOURCES`
   * @param {{muted?: boolean}} [options]
   * @returns {Promise<object>} the published Track
   * @throws {ChorusError} `forbidden` without the publish grant, `limit_exceeded` past 8 tracks
   */
  async publish(track, source, options = {}) {
    this.#requireJoined();
    if (!SOURCES.includes(source)) throw new ChorusError("invalid_request", `unknown source \`${source}\``);
    const muted = Boolean(options.muted);
    // Through the SFU the camera goes out in simulcast layers (15.7), so each receiver gets
    // the size it shows; a screen share keeps its one full-size encoding. Asked in a mesh too,
    // for a switch to SFU mode.
    const simulcast = source === "camera" && track.kind === "video";
    const { track: meta } = await this.client.request(
      "meeting.publish",
      this.#fields({ cid: track.id, kind: track.kind, source, muted, ...(simulcast ? { simulcast } : {}) }),
    );
    const group = streamGroup(source);
    if (!this.#streams.has(group)) this.#streams.set(group, new MediaStream());
    const entry = { track, meta, stream: this.#streams.get(group) };
    track.enabled = !muted;
    this.#local.set(meta.sid, entry);
    for (const peer of this.#peers.values()) peer.addLocal(entry);
    this.#server?.attach(entry);
    return meta;
  }

  /**
   * Stop sending a published track (the MediaStreamTrack itself is left running).
   * @param {MediaStreamTrack | string} track the track or its Track sid
   */
  async unpublish(track) {
    const entry = this.#entry(track);
    this.#local.delete(entry.meta.sid);
    for (const peer of this.#peers.values()) peer.removeLocal(entry);
    this.#server?.detach(entry);
    if (this.state === "joined") {
      await this.client.request("meeting.unpublish", this.#fields({ track: entry.meta.sid }));
    }
  }

  /**
   * Mute or unmute a published track: it stops sending media (`enabled = false`) and the others
   * see `muted` on its Track.
   * @param {MediaStreamTrack | string} track the track or its Track sid
   * @param {boolean} muted
   * @returns {Promise<object>} the updated Track
   */
  async setMuted(track, muted) {
    this.#requireJoined();
    const entry = this.#entry(track);
    entry.track.enabled = !muted;
    let reply;
    try {
      reply = await this.client.request("meeting.mute", this.#fields({ track: entry.meta.sid, muted }));
    } catch (e) {
      entry.track.enabled = !entry.meta.muted; // as the others still see it
      throw e;
    }
    entry.meta = reply.track;
    return reply.track;
  }

  /**
   * Admin: mute another participant's track (they cannot be unmuted by an admin).
   * @param {string} participant the participant's sid
   * @param {string} track the Track sid
   */
  async muteParticipant(participant, track) {
    this.#requireJoined();
    return (await this.client.request("meeting.mute", this.#fields({ participant, track, muted: true }))).track;
  }

  /** Admin: remove another participant from the meeting. */
  async removeParticipant(participant) {
    this.#requireJoined();
    await this.client.request("meeting.remove", this.#fields({ participant }));
  }

  /**
   * Send a data message through the server to every other active participant, or to `to`.
   * @param {string} payload at most 16 KiB
   * @param {{topic?: string, to?: string[]}} [options]
   * @throws {ChorusError} `forbidden` without the data grant, `not_found` for a `to` not here
   */
  async sendData(payload, options = {}) {
    this.#requireJoined();
    await this.client.request("meeting.data", this.#fields({ payload, topic: options.topic, to: options.to }));
  }

  /** This participant's published local tracks: `[{track, meta}]`. */
  localTracks() {
    return [...this.#local.values()].map(({ track, meta }) => ({ track, meta }));
  }

  /** The remote tracks received so far: `[{participant, track, mediaTrack}]`. */
  remoteTracks() {
    const out = [];
    for (const peer of this.#peers.values()) {
      for (const live of peer.live.values()) {
        out.push({ participant: this.participants.get(peer.sid) ?? null, track: live.meta, mediaTrack: live.mediaTrack });
      }
    }
    for (const live of this.#server?.live.values() ?? []) {
      out.push({ participant: this.participants.get(live.from) ?? null, track: live.meta, mediaTrack: live.mediaTrack });
    }
    return out;
  }

  /**
   * WebRTC statistics of the connection with one participant (`RTCStatsReport`), or null. In
   * SFU mode every participant's media comes on the one connection with the server: its report.
   * @param {string} participant the participant's sid
   */
  async getStats(participant) {
    if (this.#server) return this.participants.has(participant) ? this.#server.pc.getStats() : null;
    const peer = this.#peers.get(participant);
    return peer ? peer.pc.getStats() : null;
  }

  /**
   * Leave the meeting and close every peer connection. Local tracks keep running.
   * @param {string} [reason]
   */
  async leave(reason) {
    if (this.state === "left" || this.state === "idle") return;
    const wasJoined = this.state === "joined";
    this.#teardown();
    this.state = "left";
    try {
      if (wasJoined) await this.client.request("meeting.leave", this.#fields(reason ? { reason } : {}));
    } finally {
      this.emit("left", { reason: "left", by: this.self?.sid });
    }
  }

  // ---- internals

  #fields(extra) {
    const fields = { room: this.room, ...extra };
    if (this.space) fields.space = this.space;
    for (const [k, v] of Object.entries(fields)) if (v === undefined) delete fields[k];
    return fields;
  }

  #requireJoined() {
    if (this.state !== "joined") throw new ChorusError("invalid_request", `not in the meeting (${this.state})`);
  }

  #entry(track) {
    const sid = typeof track === "string" ? track : [...this.#local.values()].find((e) => e.track === track)?.meta.sid;
    const entry = sid && this.#local.get(sid);
    if (!entry) throw new ChorusError("not_found", "that track is not published");
    return entry;
  }

  #ours(frame) {
    return frame.room === this.room && (!this.space || frame.space === this.space);
  }

  #listen() {
    const c = this.client;
    this.#unlisten.push(
      c.on("meeting.participants", (f) => this.#ours(f) && this.#onParticipants(f)),
      c.on("meeting.signal", (f) => this.#ours(f) && this.#onSignal(f)),
      c.on("meeting.offer", (f) => {
        if (this.#ours(f) && this.state === "joined") this.#server?.handleOffer(f);
      }),
      c.on("meeting.mode", (f) => {
        if (this.#ours(f) && this.state === "joined" && f.mode === "sfu" && this.mode !== "sfu") {
          this.mode = "sfu";
          this.#startServer();
          this.emit("mode", { mode: this.mode });
        }
      }),
      c.on("meeting.muted", (f) => this.#ours(f) && this.#onMuted(f)),
      c.on("meeting.layers", (f) => {
        if (this.#ours(f) && this.state === "joined") this.#server?.setLayers(f.track, f.active);
      }),
      c.on("meeting.paused", (f) => {
        if (!this.#ours(f) || this.state !== "joined") return;
        const live = this.#server?.live.get(f.track);
        if (!live) return;
        const participant = this.participants.get(live.from) ?? { sid: live.from };
        this.emit("paused", { participant, track: live.meta, paused: f.paused, reason: f.reason });
      }),
      c.on("meeting.speakers", (f) => {
        if (this.#ours(f) && this.state === "joined") this.emit("speakers", { speakers: f.speakers });
      }),
      c.on("meeting.data", (f) => {
        if (this.#ours(f) && this.state === "joined") {
          this.emit("data", { from: f.from, payload: f.payload, topic: f.topic });
        }
      }),
      c.on("meeting.left", (f) => this.#ours(f) && this.#onLeft(f)),
      c.on("close", () => {
        if (this.state === "joined") {
          this.state = "reconnecting";
          this.emit("connection", { state: "reconnecting" });
        }
      }),
      c.on("reconnected", () => {
        if (this.state === "reconnecting") this.#resume();
      }),
    );
  }

  #applyJoin(reply) {
    this.space = reply.space;
    this.room = reply.room;
    this.self = reply.participant;
    this.grants = reply.grants;
    this.iceServers = (reply.ice_servers ?? []).map((s) => ({
      urls: s.urls,
      ...(s.username !== undefined ? { username: s.username } : {}),
      ...(s.credential !== undefined ? { credential: s.credential } : {}),
    }));
    this.state = "joined";
    this.mode = reply.mode ?? "mesh";
    // A join or a resume starts a new connection with the server; its offer follows.
    if (this.mode === "sfu") this.#startServer();
    const present = new Set(reply.participants.map((p) => p.sid));
    for (const [sid, p] of [...this.participants]) {
      if (!present.has(sid)) this.#removeParticipant({ ...p, state: "left" });
    }
    for (const p of reply.participants) this.#upsert(p, true);
    this.emit("joined", {
      participant: this.self,
      participants: [...this.participants.values()],
      grants: this.grants,
    });
    // Who speaks already: `meeting.speakers` frames only tell changes.
    if (this.mode === "sfu") this.emit("speakers", { speakers: reply.speakers ?? [] });
  }

  async #resume() {
    const previous = this.self?.sid;
    let reply;
    try {
      reply = await this.client.request("meeting.join", this.#fields({ name: this.name, resume: previous }));
    } catch (e) {
      if (e.code === "closed" || e.code === "timeout") return; // the next reconnection retries
      try {
        reply = await this.client.request("meeting.join", this.#fields({ name: this.name }));
      } catch (e2) {
        this.emit("error", { error: e2, context: "resume" });
        return;
      }
    }
    const outbox = this.#outbox.splice(0);
    if (reply.participant.sid !== previous) {
      // A new participant: the others see a newcomer, so start every peer afresh and publish
      // the local tracks again.
      for (const sid of [...this.#peers.keys()]) this.#closePeer(sid);
      const local = [...this.#local.values()];
      this.#local.clear();
      this.#applyJoin(reply);
      for (const { track, meta } of local) {
        try {
          await this.publish(track, meta.source, { muted: meta.muted });
        } catch (e) {
          this.emit("error", { error: e, context: "republish" });
        }
      }
    } else {
      this.#applyJoin(reply);
      for (const [to, kind, fields] of outbox) if (this.#peers.has(to)) this.signal(to, kind, fields);
      // The network may have changed with the session: renegotiate with fresh ICE.
      for (const peer of this.#peers.values()) peer.pc.restartIce();
    }
    this.emit("connection", { state: "joined" });
  }

  #onParticipants(frame) {
    if (this.state !== "joined" && this.state !== "reconnecting") return;
    for (const p of frame.participants) this.#upsert(p, false);
  }

  #upsert(p, fromJoin) {
    if (p.sid === this.self?.sid) {
      if (p.version >= (this.self.version ?? 0)) {
        this.self = p;
        this.emit("self", { participant: p });
      }
      return;
    }
    const previous = this.participants.get(p.sid);
    if (previous && previous.version > p.version) return; // stale
    if (p.state === "left") {
      if (previous) this.#removeParticipant(p);
      return;
    }
    this.participants.set(p.sid, p);
    let peer = this.#peers.get(p.sid);
    if (!peer && p.state === "active" && this.mode !== "sfu") peer = this.#createPeer(p.sid);
    if (!fromJoin || !previous || previous.version !== p.version) {
      this.emit("participant", { participant: p, previous: previous ?? null });
    }
    if (peer) this.#syncRemote(peer);
    if (this.#server) this.#syncServer();
  }

  #removeParticipant(p) {
    this.participants.delete(p.sid);
    this.#closePeer(p.sid);
    if (this.#server) this.#syncServer();
    this.emit("participant-left", { participant: p });
  }

  #createPeer(sid) {
    const polite = this.self.sid > sid;
    const peer = new Peer(this, sid, polite);
    this.#peers.set(sid, peer);
    for (const entry of this.#local.values()) peer.addLocal(entry);
    return peer;
  }

  #closePeer(sid) {
    const peer = this.#peers.get(sid);
    if (!peer) return;
    this.#peers.delete(sid);
    const participant = this.participants.get(sid) ?? { sid };
    for (const live of peer.live.values()) {
      this.emit("track-ended", { participant, track: live.meta, mediaTrack: live.mediaTrack });
    }
    peer.live.clear();
    peer.close();
  }

  /**
   * Sfu mode: a new connection with the server, whose offer follows. Peer connections of a
   * mesh (the meeting switched) close: their received tracks end.
   */
  #startServer() {
    for (const sid of [...this.#peers.keys()]) this.#closePeer(sid);
    this.#closeServer();
    this.#server = new ServerSession(this);
  }

  /** Sfu mode: close the connection with the server; its received tracks end. */
  #closeServer() {
    const server = this.#server;
    if (!server) return;
    this.#server = null;
    for (const live of server.live.values()) {
      const participant = this.participants.get(live.from) ?? { sid: live.from };
      this.emit("track-ended", { participant, track: live.meta, mediaTrack: live.mediaTrack });
    }
    server.live.clear();
    server.close();
  }

  #onSignal(frame) {
    if (this.state !== "joined" || this.mode === "sfu") return;
    let peer = this.#peers.get(frame.from);
    // The offer may come before the participant list names its sender.
    if (!peer) peer = this.#createPeer(frame.from);
    peer.handleSignal(frame);
  }

  #onMuted(frame) {
    const entry = this.#local.get(frame.track);
    if (!entry) return;
    entry.track.enabled = !frame.muted;
    entry.meta = { ...entry.meta, muted: frame.muted };
    this.emit("muted", { track: entry.meta, mediaTrack: entry.track, muted: frame.muted, by: frame.by });
  }

  #onLeft(frame) {
    if (this.state === "left" || this.state === "idle") return;
    this.#teardown();
    this.state = "left";
    this.emit("left", { reason: frame.reason, by: frame.by });
  }

  #teardown() {
    this.#outbox = [];
    this.#local.clear();
    this.#streams.clear();
    for (const sid of [...this.#peers.keys()]) this.#closePeer(sid);
    this.#closeServer();
    for (const off of this.#unlisten) off();
    this.#unlisten = [];
  }

  /**
   * SFU mode: report the size of the element that shows remote video track `track` (its sid)
   * as it changes, so the server sends the simulcast layer that fits (none while the element
   * has no size, e.g. hidden). Returns a function that stops watching. In a mesh, does nothing.
   * @param {string} track
   * @param {HTMLElement} element
   * @returns {() => void}
   */
  observeVideo(track, element) {
    if (this.mode !== "sfu" || typeof ResizeObserver === "undefined") return () => {};
    let timer = null;
    let sent = null;
    const report = () => {
      timer = null;
      const ratio = globalThis.devicePixelRatio || 1;
      const width = Math.min(16384, Math.round(element.clientWidth * ratio));
      const height = Math.min(16384, Math.round(element.clientHeight * ratio));
      if (this.state !== "joined" || (sent && sent[0] === width && sent[1] === height)) return;
      sent = [width, height];
      this.client.request("meeting.layout", this.#fields({ track, width, height })).catch((error) => {
        sent = null;
        // The track went meanwhile: its element goes with it.
        if (error.code === "not_found" || error.code === "closed") return;
        this.emit("error", { error, context: "layout" });
      });
    };
    const observer = new ResizeObserver(() => {
      clearTimeout(timer);
      timer = setTimeout(report, LAYOUT_DEBOUNCE_MS);
    });
    observer.observe(element);
    return () => {
      clearTimeout(timer);
      observer.disconnect();
    };
  }

  /** @internal Send a signalling message to `to`; failures are reported as `error` events. */
  signal(to, kind, fields) {
    if (this.state === "reconnecting") {
      // Kept for the resumed participant (same sid, same peer connections); bounded, as ICE
      // is restarted after the resume anyway.
      if (this.#outbox.length < 256) this.#outbox.push([to, kind, fields]);
      return;
    }
    // A peer connection closed by a switch to SFU mode may still be negotiating.
    if (this.state !== "joined" || this.mode === "sfu") return;
    this.client.request("meeting.signal", this.#fields({ to, kind, ...fields })).catch((error) => {
      // The participant left meanwhile: its peer goes with the next participant update.
      if (error.code === "not_found" || error.code === "closed") return;
      this.emit("error", { error, context: `signal ${kind}` });
    });
  }

  /** @internal Answer the server's offer (sfu mode); failures are reported as `error` events. */
  answer(sdp) {
    if (this.state !== "joined") return;
    this.client.request("meeting.answer", this.#fields({ sdp })).catch((error) => {
      if (error.code === "closed") return; // the resume brings a new offer
      this.emit("error", { error, context: "answer" });
    });
  }

  /** @internal The published entry of our own track `sid` (sfu mode). */
  localEntry(sid) {
    return this.#local.get(sid);
  }

  /**
   * Sfu mode: recompute the received tracks from the server's lines (which track each m-line
   * carries, and whose) and the participants' published tracks.
   */
  #syncServer() {
    const server = this.#server;
    const now = new Map(); // track sid -> {meta, mediaTrack, from}
    for (const transceiver of server.pc.getTransceivers()) {
      const line = transceiver.mid !== null ? server.lines.get(transceiver.mid) : undefined;
      if (!line || line.participant === this.self?.sid) continue;
      const participant = this.participants.get(line.participant);
      const meta = participant?.tracks.find((t) => t.sid === line.track);
      if (meta && participant.state !== "left") {
        now.set(meta.sid, { meta, mediaTrack: transceiver.receiver.track, from: participant.sid });
      }
    }
    for (const [sid, live] of [...server.live]) {
      const next = now.get(sid);
      if (!next || next.mediaTrack !== live.mediaTrack) {
        server.live.delete(sid);
        const participant = this.participants.get(live.from) ?? { sid: live.from };
        this.emit("track-ended", { participant, track: live.meta, mediaTrack: live.mediaTrack });
      }
    }
    for (const [sid, next] of now) {
      const live = server.live.get(sid);
      if (live) {
        live.meta = next.meta;
      } else {
        server.live.set(sid, next);
        this.emit("track", { participant: this.participants.get(next.from), track: next.meta, mediaTrack: next.mediaTrack });
      }
    }
  }

  /** @internal called by the server session after it applied an offer */
  serverChanged(server) {
    if (this.#server === server) this.#syncServer();
  }

  /** Recompute which remote tracks a peer's media carries; called after each change. */
  #syncRemote(peer) {
    const participant = this.participants.get(peer.sid);
    const published = new Map((participant?.tracks ?? []).map((t) => [t.cid, t]));
    const now = new Map(); // track sid -> {meta, mediaTrack}
    const remote = peer.pc.remoteDescription;
    if (remote && participant && participant.state !== "left") {
      const byMid = new Map(parseSdpMedia(remote.sdp).map((m) => [m.mid, m]));
      for (const transceiver of peer.pc.getTransceivers()) {
        const m = transceiver.mid !== null ? byMid.get(transceiver.mid) : undefined;
        if (!m || !m.trackId || !sends(m.direction)) continue;
        const meta = published.get(m.trackId);
        if (meta) now.set(meta.sid, { meta, mediaTrack: transceiver.receiver.track });
      }
    }
    const who = participant ?? { sid: peer.sid };
    for (const [sid, live] of [...peer.live]) {
      const next = now.get(sid);
      if (!next || next.mediaTrack !== live.mediaTrack) {
        peer.live.delete(sid);
        this.emit("track-ended", { participant: who, track: live.meta, mediaTrack: live.mediaTrack });
      }
    }
    for (const [sid, next] of now) {
      const live = peer.live.get(sid);
      if (live) {
        live.meta = next.meta; // mute state etc.; the participant event tells it
      } else {
        peer.live.set(sid, next);
        this.emit("track", { participant: who, track: next.meta, mediaTrack: next.mediaTrack });
      }
    }
  }

  /** @internal called by a peer after it applied a remote description */
  remoteChanged(peer) {
    if (this.#peers.get(peer.sid) === peer) this.#syncRemote(peer);
  }
}

/** The connection with one other participant (internal). */
class Peer {
  constructor(meeting, sid, polite) {
    this.meeting = meeting;
    this.sid = sid;
    this.polite = polite;
    this.pc = new RTCPeerConnection({ iceServers: meeting.iceServers });
    this.live = new Map(); // track sid -> {meta, mediaTrack}
    this.transceivers = new Map(); // local track sid -> the RTCRtpTransceiver sending it
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.queuedCandidates = [];
    this.chain = Promise.resolve();
    this.closed = false;

    const pc = this.pc;
    pc.onnegotiationneeded = async () => {
      try {
        this.makingOffer = true;
        this.fitDirections();
        await pc.setLocalDescription();
        if (pc.localDescription.type === "offer") {
          meeting.signal(sid, "offer", { sdp: pc.localDescription.sdp });
        }
      } catch (error) {
        if (!this.closed) meeting.emit("error", { error, context: "offer" });
      } finally {
        this.makingOffer = false;
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      if (!candidate || !candidate.candidate) {
        meeting.signal(sid, "candidate", { candidate: null });
        return;
      }
      const c = { candidate: candidate.candidate };
      if (candidate.sdpMid !== null) c.sdp_mid = candidate.sdpMid;
      if (candidate.sdpMLineIndex !== null) c.sdp_mline_index = candidate.sdpMLineIndex;
      if (candidate.usernameFragment) c.username_fragment = candidate.usernameFragment;
      meeting.signal(sid, "candidate", { candidate: c });
    };
    this.moved = performance.now(); // the last change of a signaling, ICE or connection state
    const moved = () => {
      this.moved = performance.now();
    };
    pc.onsignalingstatechange = moved;
    pc.oniceconnectionstatechange = moved;
    pc.onicegatheringstatechange = moved;
    pc.onconnectionstatechange = () => {
      moved();
      meeting.emit("peer-state", { participant: meeting.participants.get(sid) ?? { sid }, state: pc.connectionState });
      if (pc.connectionState === "failed") pc.restartIce();
    };
    // Receivers come and go with descriptions; `remoteChanged` after each one is the source of
    // truth, so `ontrack` only has to cover a track unmuting after its description.
    pc.ontrack = () => meeting.remoteChanged(this);
    this.watchdog = setInterval(() => {
      this.chain = this.chain.then(() => this.unstick());
    }, RENEGOTIATE_MS);
  }

  // Both sides check about as often: only the impolite one offers again, so the new offers do
  // not collide. An offer still waiting for its answer is rolled back first.
  async unstick() {
    const pc = this.pc;
    if (this.closed || this.polite || pc.connectionState === "connected") return;
    if (pc.getTransceivers().length === 0) return; // nothing to connect for yet
    if (performance.now() - this.moved < RENEGOTIATE_MS) return; // slow, not stuck
    this.moved = performance.now();
    try {
      if (pc.signalingState === "have-local-offer") await pc.setLocalDescription({ type: "rollback" });
      pc.restartIce();
    } catch (error) {
      if (!this.closed) this.meeting.emit("error", { error, context: "renegotiate" });
    }
  }

  // What a participant may send is bounded by its grants, and the server checks each SDP:
  // without `publish` nothing is sent, without `subscribe` nothing is received.
  fitDirections() {
    const { publish, subscribe } = this.meeting.grants ?? { publish: true, subscribe: true };
    for (const t of this.pc.getTransceivers()) {
      if (t.direction === "stopped" || t.currentDirection === "stopped") continue;
      let send = sends(t.direction) && publish;
      let recv = (t.direction === "sendrecv" || t.direction === "recvonly") && subscribe;
      const direction = send && recv ? "sendrecv" : send ? "sendonly" : recv ? "recvonly" : "inactive";
      if (t.direction !== direction) t.direction = direction;
    }
  }

  // Each published track gets a transceiver of its own, never a reused one: the `a=msid` line
  // names the sender's id, which is the track's id only for a sender created with the track
  // (`replaceTrack` into an old sender keeps the old id). An unpublished track's transceiver is
  // stopped, which frees its m-section for reuse by a later transceiver.
  addLocal(entry) {
    if (this.closed || this.transceivers.has(entry.meta.sid)) return;
    const { subscribe } = this.meeting.grants ?? { subscribe: true };
    const transceiver = this.pc.addTransceiver(entry.track, {
      direction: subscribe ? "sendrecv" : "sendonly",
      streams: [entry.stream],
    });
    this.transceivers.set(entry.meta.sid, transceiver);
  }

  removeLocal(entry) {
    const transceiver = this.transceivers.get(entry.meta.sid);
    if (!transceiver || this.closed) return;
    this.transceivers.delete(entry.meta.sid);
    try {
      transceiver.stop(); // renegotiates: the m-section is rejected, the remote track ends
    } catch {
      // the connection closed meanwhile
    }
  }

  handleSignal(frame) {
    // One signal at a time per peer, in arrival order.
    this.chain = this.chain
      .then(() => this.applySignal(frame))
      .catch((error) => {
        if (!this.closed) this.meeting.emit("error", { error, context: `signal ${frame.kind} from ${this.sid}` });
      });
  }

  async applySignal(frame) {
    if (this.closed) return;
    const pc = this.pc;
    if (frame.kind === "offer" || frame.kind === "answer") {
      const collision = frame.kind === "offer" && (this.makingOffer || pc.signalingState !== "stable");
      this.ignoreOffer = !this.polite && collision;
      if (this.ignoreOffer) return;
      await pc.setRemoteDescription({ type: frame.kind, sdp: frame.sdp });
      this.meeting.remoteChanged(this);
      if (frame.kind === "offer") {
        this.fitDirections();
        await pc.setLocalDescription();
        this.meeting.signal(this.sid, "answer", { sdp: pc.localDescription.sdp });
      }
      // Candidates that came before this description, after the answer: some may belong to an
      // earlier offer that was lost or rolled back, and must not keep the answer from going.
      for (const c of this.queuedCandidates.splice(0)) await this.addCandidate(c, { stale: true });
    } else if (frame.kind === "candidate") {
      if (!pc.remoteDescription) {
        if (this.queuedCandidates.length < 256) this.queuedCandidates.push(frame.candidate ?? null);
        return;
      }
      await this.addCandidate(frame.candidate ?? null);
    }
  }

  async addCandidate(c, { stale = false } = {}) {
    try {
      if (c === null) {
        await this.pc.addIceCandidate(); // end of candidates
        return;
      }
      await this.pc.addIceCandidate({
        candidate: c.candidate,
        sdpMid: c.sdp_mid ?? null,
        sdpMLineIndex: c.sdp_mline_index ?? null,
        usernameFragment: c.username_fragment ?? null,
      });
    } catch (error) {
      // Candidates of an offer we ignored, or queued ones of an earlier offer, fail to apply;
      // anything else is worth telling.
      if (!this.ignoreOffer && !stale && c !== null) throw error;
    }
  }

  close() {
    this.closed = true;
    clearInterval(this.watchdog);
    this.pc.close();
  }
}

/**
 * Sfu mode: the one connection with the server (internal). The server offers every change;
 * this side answers, sending its own tracks on the lines the server names for them.
 */
class ServerSession {
  constructor(meeting) {
    this.meeting = meeting;
    this.pc = new RTCPeerConnection({ iceServers: meeting.iceServers });
    this.lines = new Map(); // mid -> {mid, track, participant, kind} of the last offer
    this.live = new Map(); // received track sid -> {meta, mediaTrack, from}
    this.layers = new Map(); // own track sid -> the simulcast rids the server wants sent
    this.chain = Promise.resolve();
    this.closed = false;
    const pc = this.pc;
    pc.onconnectionstatechange = () => {
      meeting.emit("peer-state", { participant: null, state: pc.connectionState });
    };
    pc.ontrack = () => meeting.serverChanged(this);
  }

  handleOffer(frame) {
    // One offer at a time, in arrival order (the server sends the next after our answer).
    this.chain = this.chain
      .then(() => this.answerOffer(frame))
      .catch((error) => {
        if (!this.closed) this.meeting.emit("error", { error, context: "server offer" });
      });
  }

  async answerOffer(frame) {
    if (this.closed) return;
    const pc = this.pc;
    await pc.setRemoteDescription({ type: "offer", sdp: frame.sdp });
    this.lines = new Map(frame.media.map((line) => [line.mid, line]));
    const self = this.meeting.self?.sid;
    const { publish, subscribe } = this.meeting.grants ?? { publish: true, subscribe: true };
    for (const transceiver of pc.getTransceivers()) {
      const line = transceiver.mid !== null ? this.lines.get(transceiver.mid) : undefined;
      if (!line || transceiver.currentDirection === "stopped") continue;
      if (line.participant === self) {
        transceiver.direction = publish ? "sendonly" : "inactive";
        const entry = this.meeting.localEntry(line.track);
        if (entry) await this.send(transceiver, entry);
      } else {
        transceiver.direction = subscribe ? "recvonly" : "inactive";
      }
    }
    await pc.setLocalDescription();
    this.meeting.answer(pc.localDescription.sdp);
    this.meeting.serverChanged(this);
  }

  async send(transceiver, entry) {
    if (transceiver.sender.track === entry.track) return;
    await transceiver.sender.replaceTrack(entry.track);
    transceiver.sender.setStreams(entry.stream);
    await this.#encode(transceiver, entry.meta.sid);
  }

  /**
   * Size each simulcast layer the server's offer asked for (the browser made one encoding per
   * rid), and send only the layers the server last said it needs.
   */
  async #encode(transceiver, trackSid) {
    const sender = transceiver.sender;
    const params = sender.getParameters();
    if (!params.encodings || params.encodings.length < 2) return;
    const active = this.layers.get(trackSid);
    let changed = false;
    for (const encoding of params.encodings) {
      const layer = LAYERS.indexOf(encoding.rid);
      if (layer < 0) continue;
      const scale = LAYER_SCALE[layer];
      const on = active ? active.includes(encoding.rid) : true;
      if (encoding.scaleResolutionDownBy !== scale || encoding.active !== on) {
        encoding.scaleResolutionDownBy = scale;
        encoding.active = on;
        changed = true;
      }
    }
    if (changed) await sender.setParameters(params);
  }

  /** The server needs only layers `active` of our track `trackSid`: pause the others. */
  setLayers(trackSid, active) {
    this.layers.set(trackSid, active);
    this.chain = this.chain
      .then(async () => {
        const transceiver = this.#transceiverOf(trackSid);
        if (transceiver?.sender.track && !this.closed) await this.#encode(transceiver, trackSid);
      })
      .catch((error) => {
        if (!this.closed) this.meeting.emit("error", { error, context: "layers" });
      });
  }

  #transceiverOf(trackSid) {
    for (const transceiver of this.pc.getTransceivers()) {
      const line = transceiver.mid !== null ? this.lines.get(transceiver.mid) : undefined;
      if (line && line.track === trackSid && line.participant === this.meeting.self?.sid) return transceiver;
    }
    return null;
  }

  /** A track was published: send it on its line, if the server offered it already. */
  attach(entry) {
    this.chain = this.chain
      .then(async () => {
        const transceiver = this.#transceiverOf(entry.meta.sid);
        if (transceiver && !this.closed) await this.send(transceiver, entry);
      })
      .catch((error) => {
        if (!this.closed) this.meeting.emit("error", { error, context: "send track" });
      });
  }

  /** A track was unpublished: stop sending it (the server stops its line). */
  detach(entry) {
    const transceiver = this.#transceiverOf(entry.meta.sid);
    if (transceiver && !this.closed) transceiver.sender.replaceTrack(null).catch(() => {});
  }

  close() {
    this.closed = true;
    this.pc.close();
  }
}
