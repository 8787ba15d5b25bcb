// A meeting that outgrows its mesh (a server with `meeting_sfu_participants = 3`): alice and bob
// meet peer to peer and decode each other; carol's join, the third, turns the meeting into SFU
// mode for everyone. Each page drops its peer connections, keeps its camera and microphone
// published, and then decodes both other participants' video through the server.

import { expectDecoding, joined, launch, openMeeting, published, run, step, waitFor } from "./lib.mjs";

const NAMES = ["alice", "bob", "carol"];

/** The page's mode, its status line, and its remote videos that are live. */
async function modeOf(page) {
  return page.evaluate(() => {
    const m = globalThis.chorusMeeting.meeting;
    return {
      mode: m.mode,
      shown: document.body.dataset.mode ?? null,
      status: document.getElementById("status").textContent,
      videos: m
        .remoteTracks()
        .filter((r) => r.track.kind === "video" && r.mediaTrack.readyState === "live")
        .map((r) => r.participant?.sid),
    };
  });
}

await run("switch", async ({ defer }) => {
  const browser = await launch();
  defer(browser.close);

  step("alice and bob meet peer to peer");
  const pages = {};
  const sids = {};
  for (const who of ["alice", "bob"]) {
    pages[who] = await openMeeting(browser.context, who);
    sids[who] = await joined(pages[who]);
    await published(pages[who]);
  }
  await expectDecoding(pages.alice, sids.bob, { who: "bob" });
  await expectDecoding(pages.bob, sids.alice, { who: "alice" });
  for (const who of ["alice", "bob"]) {
    const seen = await modeOf(pages[who]);
    if (seen.mode !== "mesh" || !seen.status.includes("peer to peer")) {
      throw new Error(`${who} before the switch: ${JSON.stringify(seen)}`);
    }
  }

  step("carol joins, the third: the meeting turns into SFU mode on every page");
  pages.carol = await openMeeting(browser.context, "carol");
  sids.carol = await joined(pages.carol);
  await published(pages.carol);
  for (const who of NAMES) {
    await waitFor(`${who}'s page to show SFU mode`, async () => {
      const seen = await modeOf(pages[who]);
      return seen.mode === "sfu" && seen.shown === "sfu" && seen.status.includes("through the server") ? seen : null;
    });
  }

  step("each page decodes the other two participants' video through the server");
  for (const who of NAMES) {
    for (const other of NAMES.filter((o) => o !== who)) {
      await expectDecoding(pages[who], sids[other], { who: other });
    }
    // The mesh's received tracks ended with its peer connections: the live ones come from the
    // one connection with the server.
    const seen = await modeOf(pages[who]);
    const expected = NAMES.filter((o) => o !== who).map((o) => sids[o]).sort();
    if (JSON.stringify([...seen.videos].sort()) !== JSON.stringify(expected)) {
      throw new Error(`${who} receives live videos from ${seen.videos}, expected ${expected}`);
    }
  }
});
