// The meeting page (alice, fake camera and microphone) meets a WebRTC peer of the Rust load
// tool: the page joins and publishes, prints `ready`, and the Rust test then joins its peer and
// writes the peer's sid on stdin. The page maps the peer's tracks to its published ones, and
// its getStats() shows the peer's audio and video RTP arriving and growing. The peer's media is
// synthetic (not decodable), so packets are counted, not frames. The Rust test checks its own
// side meanwhile and writes `done` on stdin when finished; the page stays until then.
//
// The peer joins second on purpose: its sid is then the greater, so it is the polite side of
// the pair (docs/protocol.md 15.6). See tests/it/meet_rtc.rs for what happens otherwise.

import {
  audioPacketsFrom,
  joined,
  launch,
  log,
  openMeeting,
  pageState,
  run,
  step,
  TIMEOUT_MS,
  videoFrom,
  waitFor,
} from "./lib.mjs";

/** The lines written to stdin, one at a time: `await next()` fails after `timeoutMs`. */
function stdinLines() {
  const lines = [];
  const waiting = [];
  let buffered = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk) => {
    buffered += chunk;
    let end;
    while ((end = buffered.indexOf("\n")) >= 0) {
      lines.push(buffered.slice(0, end).trim());
      buffered = buffered.slice(end + 1);
    }
    while (lines.length && waiting.length) waiting.shift()(lines.shift());
  });
  return (timeoutMs) =>
    lines.length
      ? Promise.resolve(lines.shift())
      : new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`no line on stdin within ${timeoutMs} ms`)), timeoutMs);
          waiting.push((line) => {
            clearTimeout(timer);
            resolve(line);
          });
        });
}

await run("rtc-peer", async ({ defer }) => {
  const next = stdinLines();
  const browser = await launch();
  defer(browser.close);

  step("alice opens the meeting page, joins and publishes camera and microphone");
  const page = await openMeeting(browser.context, "alice");
  await joined(page);
  await page.evaluate(() =>
    globalThis.chorusMeeting.meeting.on("error", ({ error, context }) => console.error(`meeting error (${context}): ${error}`)),
  );
  await waitFor("alice to publish", async () => {
    const s = await pageState(page);
    if (s.publishing && s.publishing !== "yes") throw new Error(`alice could not publish: ${s.alert}`);
    return s.publishing === "yes";
  });

  step("the Rust peer joins");
  console.log("ready");
  const rust = await next(TIMEOUT_MS);
  log(`the Rust peer is ${rust}`);

  step("the page maps the Rust peer's tracks and receives their RTP");
  const inbound = async () => {
    const video = await videoFrom(page, rust);
    return { video: video.packets, audio: await audioPacketsFrom(page, rust), track: video.track };
  };
  const first = await waitFor("RTP from the Rust peer", async () => {
    const s = await inbound();
    return s.track && s.video > 0 && s.audio > 0 ? s : null;
  });
  if (first.track.source !== "camera") throw new Error(`the Rust peer's video maps to ${JSON.stringify(first.track)}`);
  const later = await waitFor("the Rust peer's RTP to keep coming", async () => {
    const s = await inbound();
    return s.video >= first.video + 20 && s.audio >= first.audio + 20 ? s : null;
  });
  log(`inbound from the Rust peer: video ${first.video} -> ${later.video}, audio ${first.audio} -> ${later.audio} packets`);

  step("wait until the Rust side has checked what it received");
  const done = await next(TIMEOUT_MS);
  if (done !== "done") throw new Error(`expected done on stdin, got ${done}`);
  process.stdin.pause();
});
