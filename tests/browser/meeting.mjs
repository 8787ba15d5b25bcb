// Three meeting pages (alice, bob, carol) join one room through Chorus, each with the fake
// camera and microphone, and each decodes the other two participants' video. Then: a mute on
// one page shows on the others, an admin mute reaches its target, a screen share is decoded,
// a participant that leaves disappears from the others' pages with its video, and so does one
// that closes its tab.

import {
  audioPacketsFrom,
  expectDecoding,
  joined,
  launch,
  openMeeting,
  pageState,
  published,
  run,
  step,
  tileOf,
  waitFor,
} from "./lib.mjs";

await run("meeting", async ({ defer }) => {
  const browser = await launch();
  defer(browser.close);

  step("alice joins first (creating the room), then bob and carol");
  const alice = await openMeeting(browser.context, "alice");
  const sids = { alice: await joined(alice) };
  const bob = await openMeeting(browser.context, "bob");
  const carol = await openMeeting(browser.context, "carol");
  sids.bob = await joined(bob);
  sids.carol = await joined(carol);
  const pages = { alice, bob, carol };

  step("everyone publishes camera and microphone");
  for (const page of Object.values(pages)) await published(page);

  step("each page decodes the other two participants' video and receives their audio");
  for (const [who, page] of Object.entries(pages)) {
    for (const other of Object.keys(pages).filter((o) => o !== who)) {
      await expectDecoding(page, sids[other], { who: other });
      await waitFor(`${who} to receive audio of ${other}`, async () => (await audioPacketsFrom(page, sids[other])) > 0);
      const tile = await tileOf(page, sids[other]);
      if (tile.name !== other) throw new Error(`${who} shows ${other}'s tile named ${tile.name}`);
    }
  }

  step("alice sends a data message: bob and carol get it from her");
  for (const page of [bob, carol]) {
    await page.evaluate(() => {
      globalThis.received = [];
      globalThis.chorusMeeting.meeting.on("data", (d) => globalThis.received.push(d));
    });
  }
  await alice.evaluate(() => globalThis.chorusMeeting.meeting.sendData("hello all", { topic: "chat" }));
  for (const page of [bob, carol]) {
    const got = await waitFor(`${page.who} to get alice's data`, () => page.evaluate(() => globalThis.received[0]));
    if (got.from !== sids.alice || got.payload !== "hello all" || got.topic !== "chat") {
      throw new Error(`${page.who} got ${JSON.stringify(got)}`);
    }
  }

  step("alice mutes her microphone and turns her camera off: bob and carol see it");
  await alice.click("#mic");
  await alice.click("#camera");
  for (const page of [bob, carol]) {
    await waitFor(`${page.who} to show alice muted`, async () => {
      const t = await tileOf(page, sids.alice);
      return t && t.mic === "off" && t.camera === "off" ? t : null;
    });
  }
  const badge = await bob.locator(`.tile[data-key="${sids.alice}"] .badges`).textContent();
  if (!badge.includes("microphone off") || !badge.includes("camera off")) {
    throw new Error(`bob's tile of alice shows "${badge}"`);
  }
  const pressed = await alice.getAttribute("#mic", "aria-pressed");
  if (pressed !== "true") throw new Error(`alice's microphone button is not pressed (${pressed})`);

  step("alice turns her camera on again: bob sees it and decodes her video");
  await alice.click("#camera");
  await waitFor("bob to show alice's camera on", async () => (await tileOf(bob, sids.alice))?.camera === "on");
  await expectDecoding(bob, sids.alice, { who: "alice" });

  step("alice (the room's owner, an admin) mutes bob's microphone: bob's page mutes it");
  const grants = await alice.evaluate(() => globalThis.chorusMeeting.meeting.grants);
  if (!grants.admin) throw new Error(`alice created the room but is not its admin: ${JSON.stringify(grants)}`);
  await alice.evaluate(async (bobSid) => {
    const m = globalThis.chorusMeeting.meeting;
    const mic = m.participants.get(bobSid).tracks.find((t) => t.source === "microphone");
    await m.muteParticipant(bobSid, mic.sid);
  }, sids.bob);
  await waitFor("bob's page to mute its microphone", async () =>
    bob.evaluate(() => {
      const { local } = globalThis.chorusMeeting;
      return (
        local.mic.enabled === false &&
        document.getElementById("mic").getAttribute("aria-pressed") === "true" &&
        !document.getElementById("notice").hidden
      );
    }),
  );
  await waitFor("carol to show bob's microphone off", async () => (await tileOf(carol, sids.bob))?.mic === "off");

  step("bob shares his screen: alice and carol decode it");
  const screenable = await bob.evaluate(() => !document.getElementById("screen").disabled);
  if (!screenable) throw new Error("bob's screen share button is disabled");
  await bob.click("#screen");
  await waitFor("bob to share", async () => (await bob.getAttribute("#screen", "aria-pressed")) === "true");
  await expectDecoding(alice, sids.bob, { who: "bob", screen: true });
  await expectDecoding(carol, sids.bob, { who: "bob", screen: true });

  step("bob stops sharing: the screen tiles go");
  await bob.click("#screen");
  for (const page of [alice, carol]) {
    await waitFor(`${page.who} to drop bob's screen tile`, async () => !(await tileOf(page, `${sids.bob}:screen`)));
  }

  step("carol leaves: her tile and video go from alice's and bob's pages");
  await carol.click("#leave");
  await waitFor("carol's page to show she left", async () => (await pageState(carol)).state === "left");
  for (const page of [alice, bob]) {
    await waitFor(`${page.who} to drop carol`, async () => {
      const gone = await page.evaluate((sid) => {
        const m = globalThis.chorusMeeting.meeting;
        return (
          !m.participants.has(sid) &&
          m.remoteTracks().every((r) => r.participant?.sid !== sid) &&
          !document.querySelector(`.tile[data-sid="${sid}"]`)
        );
      }, sids.carol);
      return gone;
    });
  }

  step("alice and bob still decode each other");
  await expectDecoding(alice, sids.bob, { who: "bob" });
  await expectDecoding(bob, sids.alice, { who: "alice" });

  step("bob closes his tab: alice drops him at once, long before the grace period would");
  await bob.close({ runBeforeUnload: true });
  await waitFor(
    "alice to drop bob",
    async () => alice.evaluate((sid) => !globalThis.chorusMeeting.meeting.participants.has(sid), sids.bob),
    { timeoutMs: 5000 },
  );
});
