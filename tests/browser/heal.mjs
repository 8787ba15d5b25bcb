// A lost offer or answer heals: in a mesh meeting, bob's page drops the first offer or answer it
// sends to carol (as a signal lost on the way would be), so their connection is left waiting.
// Within the SDK's renegotiation check (the impolite side of a connection that is not up and
// whose states have not moved for 10 s offers again, with an ICE restart) bob and carol decode
// each other's video all the same.
// Without that check the pair stays unconnected and the wait times out.

import { expectDecoding, joined, launch, log, openMeeting, published, run, step } from "./lib.mjs";

await run("heal", async ({ defer }) => {
  const browser = await launch();
  defer(browser.close);

  step("alice and bob join and publish; they decode each other");
  const alice = await openMeeting(browser.context, "alice");
  const sids = { alice: await joined(alice) };
  const bob = await openMeeting(browser.context, "bob");
  sids.bob = await joined(bob);
  for (const page of [alice, bob]) await published(page);
  await expectDecoding(alice, sids.bob, { who: "bob" });
  await expectDecoding(bob, sids.alice, { who: "alice" });

  step("bob's page will drop the first offer or answer it sends to anyone but alice");
  await bob.evaluate((alice) => {
    const meeting = globalThis.chorusMeeting.meeting;
    const send = meeting.signal.bind(meeting);
    globalThis.droppedSignal = null;
    meeting.signal = (to, kind, fields) => {
      if (globalThis.droppedSignal === null && to !== alice && (kind === "offer" || kind === "answer")) {
        globalThis.droppedSignal = kind;
        return;
      }
      send(to, kind, fields);
    };
  }, sids.alice);

  step("carol joins and publishes: one of bob's signals to her is lost, and the pair heals");
  const carol = await openMeeting(browser.context, "carol");
  sids.carol = await joined(carol);
  await published(carol);
  await expectDecoding(bob, sids.carol, { who: "carol" });
  await expectDecoding(carol, sids.bob, { who: "bob" });
  const dropped = await bob.evaluate(() => globalThis.droppedSignal);
  if (dropped === null) throw new Error("bob's page dropped no signal to carol: the test proved nothing");
  log(`bob's page dropped its first ${dropped} to carol`);
  await expectDecoding(carol, sids.alice, { who: "alice" });
});
