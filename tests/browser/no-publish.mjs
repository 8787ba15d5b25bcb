// A participant whose token lacks the `publish` grant (viewer) joins a meeting with alice. The
// server refuses its camera and microphone and the page says so; it still watches alice. Even
// a page that goes around the SDK (an offer that sends video, straight through the session) is
// refused, and alice never receives any media from it.

import {
  expectDecoding,
  joined,
  launch,
  openMeeting,
  pageState,
  run,
  step,
  tileOf,
  waitFor,
} from "./lib.mjs";

await run("no-publish", async ({ defer }) => {
  const browser = await launch();
  defer(browser.close);

  step("alice joins and publishes");
  const alice = await openMeeting(browser.context, "alice");
  const aliceSid = await joined(alice);
  await waitFor("alice to publish", async () => (await pageState(alice)).publishing === "yes");

  step("the viewer joins: the page shows that the server refused to let it publish");
  const viewer = await openMeeting(browser.context, "viewer");
  const viewerSid = await joined(viewer);
  const refused = await waitFor("the refusal on the viewer's page", async () => {
    const s = await pageState(viewer);
    return s.publishing === "refused" ? s : null;
  });
  if (!refused.alert?.includes("You may not publish") || !refused.alert.includes("forbidden")) {
    throw new Error(`the viewer's page shows: ${refused.alert}`);
  }
  const grants = await viewer.evaluate(() => globalThis.chorusMeeting.meeting.grants);
  if (grants.publish || !grants.subscribe) throw new Error(`viewer grants: ${JSON.stringify(grants)}`);
  const cameraOn = await viewer.evaluate(() =>
    (globalThis.chorusMeeting.local.stream?.getTracks() ?? []).some((t) => t.readyState === "live"),
  );
  if (cameraOn) throw new Error("the viewer's camera still runs after the refusal");

  step("the viewer watches alice");
  await expectDecoding(viewer, aliceSid, { who: "alice" });

  step("alice lists the viewer without tracks");
  await waitFor("alice to show the viewer", async () => (await tileOf(alice, viewerSid))?.camera === "none");

  step("an offer that sends video, sent around the SDK, is refused and not relayed; so are a publish and data");
  const attempt = await viewer.evaluate(async (to) => {
    const { client, meeting } = globalThis.chorusMeeting;
    const stream = await navigator.mediaDevices.getUserMedia({ video: true });
    const pc = new RTCPeerConnection();
    pc.addTransceiver(stream.getVideoTracks()[0], { direction: "sendonly", streams: [stream] });
    await pc.setLocalDescription();
    const result = {};
    try {
      await client.request("meeting.signal", { room: meeting.room, space: meeting.space, to, kind: "offer", sdp: pc.localDescription.sdp });
      result.code = "relayed";
    } catch (e) {
      result.code = e.code;
      result.message = e.message;
    }
    try {
      await meeting.publish(stream.getVideoTracks()[0], "camera");
      result.publish = "published";
    } catch (e) {
      result.publish = e.code;
    }
    try {
      await meeting.sendData("let me in");
      result.data = "sent";
    } catch (e) {
      result.data = e.code;
    }
    pc.close();
    for (const t of stream.getTracks()) t.stop();
    return result;
  }, aliceSid);
  if (attempt.code !== "forbidden" || attempt.publish !== "forbidden" || attempt.data !== "forbidden") {
    throw new Error(`the server let the viewer send: ${JSON.stringify(attempt)}`);
  }

  step("alice got no media from the viewer, and still shows the viewer without tracks");
  // Let any relayed offer run its course before looking: alice answers the viewer's real offer
  // and keeps sending to it, so this wait also shows the session is busy, not stalled.
  await expectDecoding(viewer, aliceSid, { who: "alice" });
  const fromViewer = await alice.evaluate(async (sid) => {
    const m = globalThis.chorusMeeting.meeting;
    const stats = await m.getStats(sid);
    let packets = 0;
    stats?.forEach((s) => {
      if (s.type === "inbound-rtp") packets += s.packetsReceived ?? 0;
    });
    return { packets, remote: m.remoteTracks().filter((r) => r.participant?.sid === sid).length };
  }, viewerSid);
  if (fromViewer.packets !== 0 || fromViewer.remote !== 0) {
    throw new Error(`alice received media from the viewer: ${JSON.stringify(fromViewer)}`);
  }
  const tile = await tileOf(alice, viewerSid);
  if (tile.camera !== "none" || tile.mic !== "none" || tile.videoWidth !== 0) {
    throw new Error(`alice shows the viewer with media: ${JSON.stringify(tile)}`);
  }
});
