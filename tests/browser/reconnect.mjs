// A lost session: bob's page drops its connection, cannot reach the server for a while (its
// new WebSockets are refused by a Playwright route), then reconnects. With the grace period
// (default config) alice sees bob `reconnecting`, the SDK resumes bob's participant (same sid),
// alice sees it `active` again, and media flows both ways again. With MEET_EXPECT=new (a
// server with `meeting_grace_ms = 0`) bob is gone at once, and the SDK joins as a new
// participant and publishes again: alice decodes the new bob.

import { expectDecoding, joined, launch, openMeeting, pageState, run, step, waitFor } from "./lib.mjs";

const expect = process.env.MEET_EXPECT ?? "same";

await run(`reconnect (${expect} participant)`, async ({ defer }) => {
  const browser = await launch();
  defer(browser.close);

  step("alice and bob join and see each other");
  const alice = await openMeeting(browser.context, "alice");
  const aliceSid = await joined(alice);
  const bob = await openMeeting(browser.context, "bob");
  const bobSid = await joined(bob);
  await expectDecoding(alice, bobSid, { who: "bob" });
  await expectDecoding(bob, aliceSid, { who: "alice" });
  await alice.evaluate(() => {
    globalThis.seen = [];
    const m = globalThis.chorusMeeting.meeting;
    m.on("participant", ({ participant: p }) => globalThis.seen.push(`${p.sid}:${p.state}:${p.version}`));
    m.on("participant-left", ({ participant: p }) => globalThis.seen.push(`${p.sid}:left`));
  });

  step("bob's connection drops; the server is unreachable for a while");
  // New WebSockets of bob's page go through this route: refused while `reachable` is false,
  // so the SDK retries with backoff, then passed through to the server.
  let reachable = false;
  let refused = 0;
  await bob.routeWebSocket(/\/ws$/, (ws) => {
    if (reachable) {
      ws.connectToServer();
    } else {
      refused += 1;
      ws.close({ code: 1011, reason: "test: the server is unreachable" });
    }
  });
  await bob.evaluate(() => {
    globalThis.connection = [];
    globalThis.chorusMeeting.meeting.on("connection", ({ state }) => globalThis.connection.push(state));
    globalThis.chorusMeeting.client.reconnect();
  });
  if (expect === "same") {
    await waitFor("alice to see bob reconnecting", async () =>
      (await alice.evaluate(() => globalThis.seen)).some((e) => e.startsWith(`${bobSid}:reconnecting:`)),
    );
    const tile = await alice.locator(`.tile[data-key="${bobSid}"] .name`).textContent();
    if (!tile.includes("reconnecting")) throw new Error(`alice's tile of bob reads "${tile}"`);
  } else {
    await waitFor("alice to see bob leave (no grace period)", async () =>
      (await alice.evaluate(() => globalThis.seen)).includes(`${bobSid}:left`),
    );
  }
  await waitFor("bob's page to retry", async () => refused >= 2);
  reachable = true;

  step("the server is reachable again: bob's page is back in the meeting");
  await waitFor("bob to be back in the meeting", async () =>
    bob.evaluate(() => globalThis.connection.join() === "reconnecting,joined"),
  );
  const newSid = await bob.evaluate(() => globalThis.chorusMeeting.meeting.self.sid);
  const s = await pageState(bob);
  if (s.alert) throw new Error(`bob's page shows an error after reconnecting: ${s.alert}`);

  if (expect === "same") {
    if (newSid !== bobSid) throw new Error(`bob was not resumed: ${bobSid} became ${newSid}`);
    await waitFor("alice to see bob active again", async () =>
      (await alice.evaluate(() => globalThis.seen)).some((e) => e.startsWith(`${bobSid}:active:`)),
    );
  } else {
    if (newSid === bobSid) throw new Error(`bob kept ${bobSid} although the grace period is 0`);
    await waitFor("alice to see the new bob", async () =>
      (await alice.evaluate(() => globalThis.seen)).some((e) => e.startsWith(`${newSid}:active:`)),
    );
  }
  if (expect === "same" && (await alice.evaluate(() => globalThis.seen)).includes(`${bobSid}:left`)) {
    throw new Error("alice saw bob leave although he was resumed");
  }

  step("media flows both ways again");
  await expectDecoding(alice, newSid, { who: "bob" });
  await expectDecoding(bob, aliceSid, { who: "alice" });
  const tiles = (await pageState(alice)).tiles.map((t) => t.key).sort();
  if (tiles.join() !== [newSid, "self"].sort().join()) throw new Error(`alice's tiles: ${tiles}`);
});
