// Simulcast through the SFU: alice publishes her camera in three layers; bob shows her in a
// small tile, carol in a large one. Each page reports its tile's size, so the server sends
// bob a lower layer than carol: bob's video is narrower. Without layer selection both would
// get the same (highest) layer and the same width. Then bob hides alice's tile: nothing of her
// video reaches him any more, while carol still decodes it.

import { expectDecoding, joined, launch, log, openMeeting, published, run, step, videoFrom, waitFor } from "./lib.mjs";

// The tile column width each page is given, in CSS pixels (device pixel ratio 1).
const SMALL = 160;
const LARGE = 1280;

// Through the CSS object model: the page's Content-Security-Policy refuses inline styles.
function sizeTiles(page, width) {
  return page.evaluate((width) => {
    document.querySelector(".tiles").style.setProperty("grid-template-columns", `${width}px`, "important");
  }, width);
}

function hideRemoteVideos(page) {
  return page.evaluate(() => {
    for (const video of document.querySelectorAll(".tile:not(.local) video")) {
      video.style.setProperty("display", "none", "important");
    }
  });
}

await run("simulcast", async ({ defer }) => {
  const browser = await launch();
  defer(browser.close);

  step("alice creates the meeting in SFU mode and publishes; bob and carol join");
  const alice = await openMeeting(browser.context, "alice", { query: "&mode=sfu" });
  const aliceSid = await joined(alice);
  await published(alice);
  const bob = await openMeeting(browser.context, "bob");
  const bobSid = await joined(bob);
  const carol = await openMeeting(browser.context, "carol");
  await joined(carol);
  await bob.setViewportSize({ width: 400, height: 600 });
  await carol.setViewportSize({ width: 1400, height: 900 });
  await sizeTiles(bob, SMALL);
  await sizeTiles(carol, LARGE);

  step("alice sends her camera in three simulcast layers");
  const encodings = await waitFor("alice's sender to have three encodings", () =>
    alice.evaluate(async (bobSid) => {
      const m = globalThis.chorusMeeting.meeting;
      const stats = await m.getStats(bobSid);
      const rids = [];
      stats?.forEach((s) => {
        if (s.type === "outbound-rtp" && s.kind === "video" && s.rid) rids.push(s.rid);
      });
      return rids.length === 3 ? rids.sort() : null;
    }, bobSid),
  );
  log(`alice sends layers ${encodings}`);

  step("bob (small tile) gets a narrower layer than carol (large tile)");
  await expectDecoding(bob, aliceSid, { who: "alice" });
  await expectDecoding(carol, aliceSid, { who: "alice" });
  const widths = await waitFor("the two pages to receive different layers", async () => {
    const small = await videoFrom(bob, aliceSid);
    const large = await videoFrom(carol, aliceSid);
    log(`bob ${small.videoWidth}px, carol ${large.videoWidth}px`);
    return small.videoWidth > 0 && small.videoWidth * 2 <= large.videoWidth ? { small, large } : null;
  });
  log(`bob receives alice ${widths.small.videoWidth}px wide, carol ${widths.large.videoWidth}px`);

  step("bob hides alice's tile: her video stops reaching him, carol still decodes it");
  await hideRemoteVideos(bob);
  let before = await videoFrom(bob, aliceSid);
  await waitFor("bob's frames from alice to stop", async () => {
    await new Promise((r) => setTimeout(r, 1000));
    const now = await videoFrom(bob, aliceSid);
    const stopped = now.framesDecoded === before.framesDecoded;
    before = now;
    return stopped;
  });
  await expectDecoding(carol, aliceSid, { who: "alice" });
});
