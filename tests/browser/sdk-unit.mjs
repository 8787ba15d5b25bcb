// Unit tests of the SDK's pure parts, in Node (no browser): SDP media parsing and the emitter.
// Run: node --test sdk-unit.mjs

import assert from "node:assert/strict";
import test from "node:test";
import { ChorusError, Emitter } from "../../sdk/js/chorus.js";
import { parseSdpMedia } from "../../sdk/js/meeting.js";

const sdp = [
  "v=0",
  "o=- 1 2 IN IP4 127.0.0.1",
  "s=-",
  "t=0 0",
  "a=group:BUNDLE 0 1 2",
  "m=audio 9 UDP/TLS/RTP/SAVPF 111",
  "a=mid:0",
  "a=sendrecv",
  "a=msid:stream-a track-audio",
  "m=video 9 UDP/TLS/RTP/SAVPF 96",
  "a=mid:1",
  "a=recvonly",
  "m=video 0 UDP/TLS/RTP/SAVPF 96",
  "a=mid:2",
  "a=msid:- track-screen",
  "",
].join("\r\n");

test("each m-section's mid, kind, direction and msid", () => {
  assert.deepEqual(parseSdpMedia(sdp), [
    { mid: "0", kind: "audio", direction: "sendrecv", streamId: "stream-a", trackId: "track-audio" },
    { mid: "1", kind: "video", direction: "recvonly", streamId: null, trackId: null },
    { mid: "2", kind: "video", direction: "sendrecv", streamId: "-", trackId: "track-screen" },
  ]);
});

test("a session-level direction applies to sections without their own", () => {
  const text = "v=0\na=sendonly\nm=audio 9 RTP/AVP 0\na=mid:a\nm=video 9 RTP/AVP 96\na=mid:v\na=inactive\n";
  assert.deepEqual(
    parseSdpMedia(text).map((m) => [m.mid, m.direction]),
    [["a", "sendonly"], ["v", "inactive"]],
  );
});

test("no media sections", () => {
  assert.deepEqual(parseSdpMedia("v=0\r\ns=-\r\n"), []);
});

test("the emitter survives a throwing listener and unsubscribes", () => {
  const e = new Emitter();
  const seen = [];
  const original = console.error;
  console.error = () => {};
  try {
    e.on("x", () => {
      throw new Error("boom");
    });
    const off = e.on("x", (v) => seen.push(v));
    e.emit("x", 1);
    off();
    e.emit("x", 2);
  } finally {
    console.error = original;
  }
  assert.deepEqual(seen, [1]);
});

test("errors carry their code", () => {
  const err = new ChorusError("forbidden", "no publish grant", { reconnect: false });
  assert.equal(err.code, "forbidden");
  assert.equal(err.message, "no publish grant");
  assert.equal(err.reconnect, false);
  assert.ok(err instanceof Error);
});
