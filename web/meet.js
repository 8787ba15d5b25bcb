// The meeting page: /meet/{room}?token=TOKEN[&space=SPACE][&name=NAME].
// Joins the room's meeting with camera and microphone, shows a tile per participant (and one per
// screen share), and offers mute, screen share and leave. State for scripts and tests is kept in
// data attributes: body[data-state], body[data-publishing], .tile[data-sid][data-mic][data-camera];
// `globalThis.chorusMeeting` holds the SDK's client and meeting, for the console.

import { ChorusError, Client } from "/sdk/chorus.js";
import { Meeting } from "/sdk/meeting.js";

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"),
  alert: $("alert"),
  notice: $("notice"),
  tiles: $("tiles"),
  mic: $("mic"),
  camera: $("camera"),
  screen: $("screen"),
  leave: $("leave"),
  template: $("tile-template"),
};

const LEFT_REASONS = {
  left: "You left the meeting.",
  removed: "You were removed from the meeting by an admin.",
  disconnected: "You were disconnected for too long and left the meeting.",
  replaced: "You joined this meeting from another tab or device.",
  access: "You no longer have access to this room.",
};

const ERROR_TEXT = {
  invalid_token: "The token in this link is not valid. Ask for a new meeting link.",
  token_expired: "The token in this link has expired. Ask for a new meeting link.",
  not_found: "There is no such room here, or you may not see it.",
  forbidden: "You are not allowed to do that in this room.",
  limit_exceeded: "The meeting is full.",
  closed: "The connection to the server was lost.",
  timeout: "The server did not answer in time.",
};

function setState(state) {
  document.body.dataset.state = state;
}

function status(text) {
  ui.status.textContent = text;
}

function describe(error) {
  if (error instanceof ChorusError || error?.code) {
    const text = ERROR_TEXT[error.code] ?? "Something went wrong.";
    return `${text} (${error.code}: ${error.message})`;
  }
  return `${error?.name ?? "Error"}: ${error?.message ?? error}`;
}

function showAlert(text) {
  ui.alert.textContent = text;
  ui.alert.hidden = false;
}

function showNotice(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = false;
}

// ---- tiles

const tiles = new Map(); // key -> {el, video, stream, unobserve}
let loudest = null; // the loudest speaker's sid, as last listed

// A participant's tile (not its screen share) is highlighted while it is the loudest speaker.
function renderSpeaking(t) {
  t.el.classList.toggle("speaking", !t.el.classList.contains("screen") && t.el.dataset.sid === loudest);
}

function tileKey(sid, source) {
  return source === "screen_share" || source === "screen_share_audio" ? `${sid}:screen` : sid;
}

function tile(key, { label, name = label, local = false, screen = false, sid }) {
  let t = tiles.get(key);
  if (!t) {
    const el = ui.template.content.firstElementChild.cloneNode(true);
    const video = el.querySelector("video");
    const stream = new MediaStream();
    video.srcObject = stream;
    video.muted = local; // never play one's own microphone back
    el.dataset.key = key;
    el.dataset.sid = sid;
    if (local) el.classList.add("local");
    if (screen) el.classList.add("screen");
    t = { el, video, stream };
    tiles.set(key, t);
    renderSpeaking(t);
    if (local) ui.tiles.prepend(el);
    else ui.tiles.append(el);
  }
  t.el.querySelector(".name").textContent = label;
  t.el.querySelector(".placeholder").textContent = [...name][0] ?? "";
  t.el.setAttribute("aria-label", label);
  return t;
}

function dropTile(key) {
  const t = tiles.get(key);
  if (!t) return;
  t.unobserve?.();
  t.video.srcObject = null;
  t.el.remove();
  tiles.delete(key);
}

function addMedia(t, mediaTrack) {
  if (!t.stream.getTracks().includes(mediaTrack)) t.stream.addTrack(mediaTrack);
  // Re-attach so the element picks up a track added after it started.
  t.video.srcObject = t.stream;
  t.video.play().catch(() => {});
}

function removeMedia(t, mediaTrack) {
  if (t.stream.getTracks().includes(mediaTrack)) t.stream.removeTrack(mediaTrack);
}

/** Show a participant's mute state from its published tracks. */
function renderState(t, tracks) {
  const mic = tracks.find((tr) => tr.source === "microphone");
  const cam = tracks.find((tr) => tr.source === "camera");
  t.el.dataset.mic = !mic ? "none" : mic.muted ? "off" : "on";
  t.el.dataset.camera = !cam ? "none" : cam.muted ? "off" : "on";
  const badges = [];
  if (mic?.muted) badges.push("microphone off");
  if (cam?.muted) badges.push("camera off");
  if (t.el.dataset.paused) badges.push("video paused: low bandwidth");
  t.el.querySelector(".badges").textContent = badges.join(" · ");
}

function participantLabel(p) {
  return p.state === "reconnecting" ? `${p.name} (reconnecting…)` : p.name;
}

function renderParticipant(p) {
  const t = tile(p.sid, { label: participantLabel(p), name: p.name, sid: p.sid });
  t.el.dataset.name = p.name;
  t.el.dataset.state = p.state;
  renderState(t, p.tracks ?? []);
  const screen = tiles.get(`${p.sid}:screen`);
  if (screen) screen.el.querySelector(".name").textContent = `${p.name} (screen)`;
}

// ---- the meeting

const params = new URLSearchParams(location.search);
const token = params.get("token");
const space = params.get("space") || undefined;
const name = params.get("name") || undefined;
// The meeting's mode if this page creates it (`mesh` or `sfu`; default: the server's choice).
const mode = params.get("mode") || undefined;
const room = decodeURIComponent(location.pathname.replace(/^\/meet\//, "").replace(/\/$/, ""));
$("room-name").textContent = room;
document.title = `${room} · Chorus meeting`;

let client = null;
let meeting = null;
const local = { stream: null, mic: null, camera: null, screen: [] };

async function main() {
  setState("connecting");
  if (!token) {
    fail("This meeting link has no token. Open it as /meet/ROOM?token=YOUR_TOKEN.");
    return;
  }
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(room)) {
    fail(`"${room}" is not a room id: 1 to 64 of A-Z a-z 0-9 - _ .`);
    return;
  }

  // Ask for the devices while connecting; the answer is needed only after joining.
  // Through the SFU, the camera goes out in three layers (a quarter, a half, the whole): a
  // larger capture keeps the lowest one useful.
  const size = mode === "sfu" ? { width: { ideal: 1280 }, height: { ideal: 720 } } : { width: { ideal: 640 }, height: { ideal: 360 } };
  const media = navigator.mediaDevices
    .getUserMedia({ audio: true, video: size })
    .then((stream) => ({ stream }), (error) => ({ error }));

  client = new Client({ token, clientName: "chorus-meet/0.1" });
  meeting = new Meeting(client, { room, space, name, mode });
  globalThis.chorusMeeting = { client, meeting, local };
  wire(meeting, client);

  try {
    await client.connect();
    status("Joining…");
    await meeting.join();
  } catch (error) {
    fail(describe(error));
    return;
  }
  setState("joined");
  updateStatus();
  ui.leave.disabled = false;
  tile("self", { label: `You (${meeting.self.name})`, name: meeting.self.name, local: true, sid: meeting.self.sid });

  const { stream, error } = await media;
  if (meeting.state !== "joined") return;
  if (error) {
    document.body.dataset.publishing = "no-devices";
    showAlert(`Camera and microphone are not available (${error.name}: ${error.message}). You can still watch and listen.`);
    return;
  }
  local.stream = stream;
  await publishLocal(stream);
}

async function publishLocal(stream) {
  const self = tiles.get("self");
  const published = [];
  try {
    for (const track of stream.getTracks()) {
      const source = track.kind === "audio" ? "microphone" : "camera";
      await meeting.publish(track, source);
      published.push(track);
      if (source === "microphone") local.mic = track;
      else local.camera = track;
      addMedia(self, track);
    }
  } catch (error) {
    for (const track of stream.getTracks()) {
      if (!published.includes(track)) track.stop();
    }
    document.body.dataset.publishing = error.code === "forbidden" ? "refused" : "failed";
    if (error.code === "forbidden") {
      showAlert(`You may not publish in this room: the server refused your camera and microphone (${error.code}: ${error.message}). You can still watch and listen.`);
    } else {
      showAlert(`Could not share your camera and microphone. ${describe(error)}`);
    }
    if (published.length === 0) self.el.dataset.camera = "none";
    renderControls();
    return;
  }
  document.body.dataset.publishing = "yes";
  renderState(self, meeting.localTracks().map((t) => t.meta));
  renderControls();
}

function wire(meeting, client) {
  meeting.on("participant", ({ participant }) => {
    renderParticipant(participant);
    updateStatus();
  });
  meeting.on("participant-left", ({ participant }) => {
    dropTile(participant.sid);
    dropTile(`${participant.sid}:screen`);
    updateStatus();
  });
  meeting.on("track", ({ participant, track, mediaTrack }) => {
    const p = meeting.participants.get(participant.sid) ?? participant;
    const key = tileKey(p.sid, track.source);
    const screen = key.endsWith(":screen");
    const label = screen ? `${p.name} (screen)` : participantLabel(p);
    const t = tile(key, { label, name: p.name, screen, sid: p.sid });
    addMedia(t, mediaTrack);
    if (track.kind === "video") {
      // SFU mode: the server sends the simulcast layer that fits the tile.
      t.unobserve?.();
      t.unobserve = meeting.observeVideo(track.sid, t.video);
    }
    if (!screen) renderState(t, p.tracks ?? []);
  });
  meeting.on("track-ended", ({ participant, track, mediaTrack }) => {
    const key = tileKey(participant.sid, track.source);
    const t = tiles.get(key);
    if (!t) return;
    removeMedia(t, mediaTrack);
    if (track.kind === "video") {
      t.unobserve?.();
      t.unobserve = null;
    }
    if (key.endsWith(":screen") && t.stream.getTracks().length === 0) dropTile(key);
  });
  meeting.on("muted", ({ track, by }) => {
    const who = meeting.participants.get(by)?.name ?? "An admin";
    showNotice(`${who} muted your ${track.source === "camera" ? "camera" : track.source === "microphone" ? "microphone" : "screen share"}.`);
    const self = tiles.get("self");
    if (self) renderState(self, meeting.localTracks().map((t) => t.meta));
    renderControls();
  });
  meeting.on("paused", ({ participant, track, paused }) => {
    const t = tiles.get(track.source === "screen_share" ? `${participant.sid}:screen` : participant.sid);
    if (!t) return;
    if (paused) t.el.dataset.paused = "bandwidth";
    else delete t.el.dataset.paused;
    renderState(t, meeting.participants.get(participant.sid)?.tracks ?? []);
  });
  meeting.on("speakers", ({ speakers }) => {
    loudest = speakers[0]?.participant ?? null;
    for (const t of tiles.values()) renderSpeaking(t);
  });
  meeting.on("left", ({ reason }) => {
    setState("left");
    status(LEFT_REASONS[reason] ?? `You are out of the meeting (${reason}).`);
    stopLocal();
    for (const key of [...tiles.keys()]) dropTile(key);
    for (const b of [ui.mic, ui.camera, ui.screen, ui.leave]) b.disabled = true;
  });
  meeting.on("mode", updateStatus);
  meeting.on("connection", ({ state }) => {
    if (state === "reconnecting") status("Connection lost, reconnecting…");
    else updateStatus();
  });
  meeting.on("error", ({ error, context }) => {
    showAlert(`${context}: ${describe(error)}`);
  });
  client.on("close", ({ code, message, reconnect }) => {
    if (reconnect === false && document.body.dataset.state !== "error") {
      fail(describe(new ChorusError(code, message)));
    }
  });
}

function updateStatus() {
  if (!meeting || meeting.state !== "joined") return;
  const n = meeting.participants.size;
  const others = n === 0 ? "nobody else is here yet" : `${n} other${n === 1 ? "" : "s"}`;
  const via = meeting.mode === "sfu" ? "through the server" : "peer to peer";
  status(`In the meeting · ${others} · ${via}`);
  document.body.dataset.mode = meeting.mode;
}

function fail(text) {
  setState("error");
  status("Not in the meeting");
  showAlert(text);
  stopLocal();
  for (const b of [ui.mic, ui.camera, ui.screen, ui.leave]) b.disabled = true;
}

function stopLocal() {
  for (const track of local.stream?.getTracks() ?? []) track.stop();
  for (const track of local.screen) track.stop();
}

// ---- controls

function metaOf(track) {
  return meeting.localTracks().find((t) => t.track === track)?.meta;
}

function renderControls() {
  const joined = meeting?.state === "joined";
  const mic = local.mic && metaOf(local.mic);
  const cam = local.camera && metaOf(local.camera);
  ui.mic.disabled = !joined || !mic;
  ui.mic.setAttribute("aria-pressed", String(Boolean(mic?.muted)));
  ui.mic.textContent = mic?.muted ? "Unmute microphone" : "Mute microphone";
  ui.camera.disabled = !joined || !cam;
  ui.camera.setAttribute("aria-pressed", String(Boolean(cam?.muted)));
  ui.camera.textContent = cam?.muted ? "Turn camera on" : "Turn camera off";
  ui.screen.disabled = !joined || !meeting.grants?.publish || !navigator.mediaDevices.getDisplayMedia;
  ui.screen.setAttribute("aria-pressed", String(local.screen.length > 0));
  ui.screen.textContent = local.screen.length > 0 ? "Stop sharing" : "Share screen";
}

async function toggleMute(track) {
  const meta = metaOf(track);
  if (!meta) return;
  try {
    await meeting.setMuted(track, !meta.muted);
  } catch (error) {
    showAlert(describe(error));
  }
  const self = tiles.get("self");
  if (self) renderState(self, meeting.localTracks().map((t) => t.meta));
  renderControls();
}

async function toggleScreen() {
  if (local.screen.length > 0) {
    await stopScreen();
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: true });
  } catch (error) {
    if (error.name !== "NotAllowedError") showAlert(`Cannot share the screen (${error.name}: ${error.message}).`);
    return;
  }
  const preview = tile("self:screen", { label: "Your screen", local: true, screen: true, sid: meeting.self.sid });
  try {
    for (const track of stream.getTracks()) {
      await meeting.publish(track, track.kind === "video" ? "screen_share" : "screen_share_audio");
      local.screen.push(track);
      if (track.kind === "video") addMedia(preview, track);
      // The browser's own "stop sharing" ends the track.
      track.addEventListener("ended", () => stopScreen());
    }
  } catch (error) {
    showAlert(`Cannot share the screen. ${describe(error)}`);
    for (const track of stream.getTracks()) if (!local.screen.includes(track)) track.stop();
  }
  renderControls();
}

async function stopScreen() {
  const tracks = local.screen.splice(0);
  for (const track of tracks) {
    track.stop();
    if (meeting.state === "joined") {
      try {
        await meeting.unpublish(track);
      } catch (error) {
        showAlert(describe(error));
      }
    }
  }
  dropTile("self:screen");
  renderControls();
}

ui.mic.addEventListener("click", () => toggleMute(local.mic));
ui.camera.addEventListener("click", () => toggleMute(local.camera));
ui.screen.addEventListener("click", () => toggleScreen());
ui.leave.addEventListener("click", async () => {
  ui.leave.disabled = true;
  try {
    await meeting.leave();
  } catch (error) {
    showAlert(describe(error));
  }
  client.close();
});
// After a network change the old connection may linger half-dead: start a new one at once.
addEventListener("online", () => client?.reconnect());
// Leaving the page leaves the meeting at once, so the others do not wait for the grace period.
addEventListener("pagehide", () => {
  if (meeting?.state === "joined") meeting.leave().catch(() => {});
});

main();
