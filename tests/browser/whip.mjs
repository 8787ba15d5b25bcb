// A WHIP publisher watched by the meeting page. The Rust test (tests/it/whip_browser.rs) makes
// a webrtc-rs peer publish audio and video into the room with WHIP, which starts the room's
// meeting in SFU mode; its participant sid and name come in MEET_WHIP_SID and MEET_WHIP_NAME.
// A subscribe-only viewer opens the meeting page: it shows the publisher's tile under its name,
// maps its tracks (camera, microphone), and its getStats() shows their RTP arriving and growing
// through the server. The peer's media is synthetic (not decodable), so packets are counted.

import { audioPacketsFrom, env, joined, launch, log, openMeeting, pageState, run, step, videoFrom, waitFor } from "./lib.mjs";

await run("whip", async ({ defer }) => {
  const sid = env("MEET_WHIP_SID");
  const name = env("MEET_WHIP_NAME");
  const browser = await launch();
  defer(browser.close);

  step("the viewer opens the meeting page of the room the WHIP client publishes into");
  const page = await openMeeting(browser.context, "viewer");
  await joined(page);
  const mode = await page.evaluate(() => globalThis.chorusMeeting.meeting.mode);
  if (mode !== "sfu") throw new Error(`the meeting is in ${mode} mode, not sfu`);

  step("the page shows the WHIP publisher's tile under its name");
  await waitFor("the WHIP publisher's tile", async () => {
    const s = await pageState(page);
    return s.tiles.find((t) => t.sid === sid && t.name === name) ?? null;
  });

  step("the page maps the publisher's tracks and receives their RTP through the SFU");
  const inbound = async () => {
    const video = await videoFrom(page, sid);
    return { video: video.packets, audio: await audioPacketsFrom(page, sid), track: video.track };
  };
  const first = await waitFor("RTP from the WHIP publisher", async () => {
    const s = await inbound();
    return s.track && s.video > 0 && s.audio > 0 ? s : null;
  });
  if (first.track.source !== "camera") throw new Error(`the WHIP video maps to ${JSON.stringify(first.track)}`);
  const later = await waitFor("the WHIP publisher's RTP to keep coming", async () => {
    const s = await inbound();
    return s.video >= first.video + 20 && s.audio >= first.audio + 20 ? s : null;
  });
  log(`inbound from the WHIP publisher: video ${first.video} -> ${later.video}, audio ${first.audio} -> ${later.audio} packets`);
});
