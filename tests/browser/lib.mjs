// Shared helpers of the browser scenarios: headless Chromium (Debian's /usr/bin/chromium, driven
// by playwright-core) with a fake camera and microphone, the meeting page served by Chorus,
// bounded polling, and diagnostics printed on failure.
//
// Environment (set by tests/it/meet_browser.rs):
//   MEET_BASE_URL     http://127.0.0.1:PORT of the Chorus server
//   MEET_ROOM         a room id no other run uses
//   MEET_TOKEN_<WHO>  access tokens (ALICE, BOB, CAROL: default grants; VIEWER: subscribe only)
//   MEET_TIMEOUT_MS   bound of every wait (default 20000): a failure bound, never a speed goal
//   CHROMIUM          the browser binary (default /usr/bin/chromium)

import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

export const TIMEOUT_MS = Number(process.env.MEET_TIMEOUT_MS ?? 20000);
export const BASE_URL = process.env.MEET_BASE_URL;
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

export function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`environment variable ${name} is not set`);
  return value;
}

const logs = []; // every page's console and errors, printed when a scenario fails

export function log(line) {
  const stamp = new Date().toISOString().slice(11, 23);
  logs.push(`${stamp} ${line}`);
}

/**
 * Launch Chromium with a fresh profile. `fakeUi: false` leaves out the flag that grants
 * camera and microphone without asking: getUserMedia then fails (the negative control).
 */
export async function launch({ fakeUi = true } = {}) {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: run scripts/browser-deps.sh (apt-get install chromium)`);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-chromium-"));
  const args = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
    // Host candidates as plain addresses: a page's peer connection may gather before its
    // camera permission, when Chromium would hide them behind mDNS names that the other page
    // must resolve over multicast (unreliable on a loaded machine: ICE then stays `new`).
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    // Several pages share one browser: keep the ones in the background running at full speed.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    // getDisplayMedia picks the fake screen without a picker.
    "--auto-accept-this-tab-capture",
    "--auto-select-desktop-capture-source=Entire screen",
  ];
  if (fakeUi) args.push("--use-fake-ui-for-media-stream");
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    args,
  });
  const close = async () => {
    await context.close().catch(() => {});
    fs.rmSync(dir, { recursive: true, force: true });
  };
  return { context, close };
}

/** Open the meeting page of `room` as `who` in a new tab of `context`. */
export async function openMeeting(context, who, { room = env("MEET_ROOM"), token, name, query = "" } = {}) {
  const page = await context.newPage();
  page.on("console", (m) => log(`[${who}] console.${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => log(`[${who}] page error: ${e.message}`));
  page.on("requestfailed", (r) => log(`[${who}] request failed: ${r.url()} ${r.failure()?.errorText}`));
  const params = new URLSearchParams({ token: token ?? env(`MEET_TOKEN_${who.toUpperCase()}`) });
  if (name ?? who) params.set("name", name ?? who);
  const url = `${BASE_URL}/meet/${encodeURIComponent(room)}?${params}${query}`;
  const response = await page.goto(url);
  if (!response || response.status() !== 200) {
    throw new Error(`[${who}] GET ${url} answered ${response?.status()}`);
  }
  page.who = who;
  return page;
}

/**
 * Poll `check` (an async function returning a truthy value when done) until it succeeds or the
 * bound passes; then fail with `what` and the last value seen.
 */
export async function waitFor(what, check, { timeoutMs = TIMEOUT_MS, intervalMs = 100 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = `threw: ${e.message}`;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** The page's state: body[data-state], the alert text, and its tiles. */
export async function pageState(page) {
  return page.evaluate(() => ({
    state: document.body.dataset.state ?? null,
    publishing: document.body.dataset.publishing ?? null,
    status: document.getElementById("status").textContent,
    alert: document.getElementById("alert").hidden ? null : document.getElementById("alert").textContent,
    self: globalThis.chorusMeeting?.meeting.self?.sid ?? null,
    tiles: [...document.querySelectorAll(".tile")].map((t) => ({
      key: t.dataset.key,
      sid: t.dataset.sid,
      name: t.dataset.name ?? null,
      mic: t.dataset.mic ?? null,
      camera: t.dataset.camera ?? null,
      videoWidth: t.querySelector("video").videoWidth,
      currentTime: t.querySelector("video").currentTime,
      tracks: t.querySelector("video").srcObject?.getTracks().map((x) => x.kind) ?? [],
    })),
  }));
}

/** Wait until the page has joined; returns its participant sid. */
export async function joined(page) {
  const s = await waitFor(`${page.who} to join`, async () => {
    const s = await pageState(page);
    if (s.state === "error") throw new Error(`${page.who} failed to join: ${s.alert}`);
    return s.state === "joined" && s.self ? s : null;
  });
  return s.self;
}

/** Wait until the page publishes its camera and microphone; fail with its alert if it cannot. */
export async function published(page) {
  await waitFor(`${page.who} to publish`, async () => {
    const s = await pageState(page);
    if (s.publishing && s.publishing !== "yes") throw new Error(`${page.who} could not publish: ${s.alert}`);
    return s.publishing === "yes";
  });
}

/**
 * Video received by `page` from participant `sid`: framesDecoded of the peer connection's
 * inbound video (camera, or screen with `source`), and the tile's rendering.
 */
export async function videoFrom(page, sid, { screen = false } = {}) {
  return page.evaluate(
    async ({ sid, screen }) => {
      const m = globalThis.chorusMeeting.meeting;
      const remote = m.remoteTracks().filter((r) => r.participant?.sid === sid && r.track.kind === "video");
      const wanted = remote.find((r) => (r.track.source === "screen_share") === screen);
      const stats = await m.getStats(sid);
      let framesDecoded = 0;
      let packets = 0;
      // Where a connection that shows nothing is stuck: its transport, and video from the
      // participant on any receiver.
      let transport = null;
      let anyVideoPackets = 0;
      stats?.forEach((s) => {
        if (s.type === "transport") transport = { ice: s.iceState ?? null, dtls: s.dtlsState ?? null };
        if (s.type !== "inbound-rtp" || s.kind !== "video") return;
        anyVideoPackets += s.packetsReceived ?? 0;
        if (wanted && s.trackIdentifier === wanted.mediaTrack.id) {
          framesDecoded += s.framesDecoded ?? 0;
          packets += s.packetsReceived ?? 0;
        }
      });
      const key = screen ? `${sid}:screen` : sid;
      const tile = document.querySelector(`.tile[data-key="${CSS.escape(key)}"]`);
      const video = tile?.querySelector("video");
      return {
        track: wanted ? { source: wanted.track.source, muted: wanted.track.muted } : null,
        framesDecoded,
        packets,
        connection: Boolean(stats),
        transport,
        anyVideoPackets,
        tile: Boolean(tile),
        videoWidth: video?.videoWidth ?? 0,
        currentTime: video?.currentTime ?? 0,
        rendered: Boolean(video && wanted && video.srcObject?.getTracks().includes(wanted.mediaTrack)),
      };
    },
    { sid, screen },
  );
}

/**
 * Prove that `page` decodes live video from `sid`: framesDecoded grows between two samples, and
 * the tile's <video> has a size and advancing time.
 */
export async function expectDecoding(page, sid, { who = sid, screen = false, timeoutMs } = {}) {
  const what = `${page.who} to decode ${screen ? "the screen share" : "video"} of ${who}`;
  const first = await waitFor(`${what} (first frames)`, async () => {
    const v = await videoFrom(page, sid, { screen });
    if (v.framesDecoded > 0 && v.rendered && v.videoWidth > 0) return v;
    // Not yet: what the page shows is what a timeout reports.
    throw new Error(JSON.stringify(v));
  }, { timeoutMs });
  const second = await waitFor(`${what} (frames keep coming)`, async () => {
    const v = await videoFrom(page, sid, { screen });
    return v.framesDecoded >= first.framesDecoded + 5 && v.currentTime > first.currentTime ? v : null;
  }, { timeoutMs });
  log(`${what}: framesDecoded ${first.framesDecoded} -> ${second.framesDecoded}, ${second.videoWidth}px wide`);
  return second;
}

/** Inbound audio packets `page` received from `sid`. */
export async function audioPacketsFrom(page, sid) {
  return page.evaluate(async (sid) => {
    const stats = await globalThis.chorusMeeting.meeting.getStats(sid);
    let packets = 0;
    stats?.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") packets += s.packetsReceived ?? 0;
    });
    return packets;
  }, sid);
}

/** The tile of `sid` as `page` shows it, or null. */
export async function tileOf(page, key) {
  const s = await pageState(page);
  return s.tiles.find((t) => t.key === key) ?? null;
}

/** Run a scenario: print the steps; on failure print every page's log and exit 1. */
export async function run(name, scenario) {
  const cleanups = [];
  const started = Date.now();
  try {
    await scenario({ defer: (fn) => cleanups.push(fn) });
    console.log(`ok ${name} (${Date.now() - started} ms)`);
    for (const line of logs.filter((l) => !l.includes("console."))) console.log(`  ${line}`);
  } catch (e) {
    console.error(`FAILED ${name}: ${e.stack ?? e}`);
    console.error("--- log");
    for (const line of logs) console.error(line);
    process.exitCode = 1;
  } finally {
    for (const fn of cleanups.reverse()) await fn().catch(() => {});
  }
}

/** Print a step of the scenario. */
export function step(text) {
  log(`step: ${text}`);
}
