// Five meeting pages (alice, bob, carol, dave, erin) in one meeting in SFU mode: alice's page
// creates it asking for `mode=sfu`, the others join it as it is. Each page holds one
// connection, with the server, and decodes the other four participants' video through it.
// Then erin leaves: her tile and video go from the other pages, which still decode each other.

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

const NAMES = ["alice", "bob", "carol", "dave", "erin"];

await run("sfu", async ({ defer }) => {
  const browser = await launch();
  defer(browser.close);

  step("alice creates the meeting in SFU mode; bob, carol, dave and erin join it");
  const pages = {};
  const sids = {};
  pages.alice = await openMeeting(browser.context, "alice", { query: "&mode=sfu" });
  sids.alice = await joined(pages.alice);
  for (const who of NAMES.slice(1)) {
    pages[who] = await openMeeting(browser.context, who);
    sids[who] = await joined(pages[who]);
  }
  for (const [who, page] of Object.entries(pages)) {
    const mode = await page.evaluate(() => globalThis.chorusMeeting.meeting.mode);
    if (mode !== "sfu") throw new Error(`${who}'s meeting is in ${mode} mode`);
  }

  step("everyone publishes camera and microphone");
  for (const page of Object.values(pages)) await published(page);

  step("each page decodes the other four participants' video, all on its one connection");
  for (const [who, page] of Object.entries(pages)) {
    for (const other of NAMES.filter((o) => o !== who)) {
      await expectDecoding(page, sids[other], { who: other });
      const tile = await tileOf(page, sids[other]);
      if (tile.name !== other) throw new Error(`${who} shows ${other}'s tile named ${tile.name}`);
    }
    await waitFor(`${who} to receive audio`, async () => (await audioPacketsFrom(page, sids[NAMES.find((o) => o !== who)])) > 0);
    const connections = await page.evaluate(() => {
      const m = globalThis.chorusMeeting.meeting;
      return m.remoteTracks().filter((r) => r.track.kind === "video").map((r) => r.participant?.sid);
    });
    if (connections.length !== 4) throw new Error(`${who} receives ${connections.length} videos: ${connections}`);
  }

  step("erin leaves: her tile and video go from the other pages");
  await pages.erin.click("#leave");
  await waitFor("erin's page to show she left", async () => (await pageState(pages.erin)).state === "left");
  for (const who of NAMES.slice(0, 4)) {
    await waitFor(`${who} to drop erin`, async () =>
      pages[who].evaluate((sid) => {
        const m = globalThis.chorusMeeting.meeting;
        return (
          !m.participants.has(sid) &&
          m.remoteTracks().every((r) => r.participant?.sid !== sid) &&
          !document.querySelector(`.tile[data-sid="${sid}"]`)
        );
      }, sids.erin),
    );
  }

  step("the four others still decode each other");
  for (const who of NAMES.slice(0, 4)) {
    const other = NAMES[(NAMES.indexOf(who) + 1) % 4];
    await expectDecoding(pages[who], sids[other], { who: other });
  }
});
