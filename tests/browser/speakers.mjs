// Active speakers through the SFU (a server whose every meeting is one): three pages (alice,
// bob, carol) publish camera and microphone. The server ranks who speaks from the audio level
// of each packet (RFC 6464) and sends `meeting.speakers`; the SDK emits `speakers`, and the page
// outlines the loudest speaker's tile (its own "self" tile on the speaker's page).
//
// The microphone is a steady 440 Hz tone at -9 dBov (a WebAudio oscillator handed to the page
// in place of getUserMedia's audio track; the camera stays Chromium's fake one). Chromium's fake
// microphone will not do: after its audio processing it is a short beep every 0.5 s, decaying
// from about -8 to -125 dBov in 20 ms steps, whose mean over the server's 1 s window is about
// -67 dBov, below the -50 dBov at which speaking starts (three pages with it got no `speakers`
// event in 10 s).
//
// 1. All three microphones on: every page lists all three and outlines one tile, the first
//    listed speaker's.
// 2. bob and carol mute (the page's microphone button, as a user would): every page lists alice
//    alone and outlines her tile, and no other.
// 3. dave joins while alice speaks, his microphone silent (`silent` in his page's address):
//    the join itself tells him that alice speaks (not a later `meeting.speakers`, which only
//    tells changes), and his page outlines her tile.
// 4. alice mutes, carol unmutes: every page lists carol alone; the outline moves to her tile.
// 5. carol mutes: the list empties and no tile is outlined.

import { joined, launch, log, openMeeting, published, run, step, waitFor } from "./lib.mjs";


/**
 * Runs in every page before its scripts: the microphone becomes a steady tone, and every
 * `speakers` event of the page's meeting is kept in `globalThis.speakerLists` from the moment
 * the page creates it (before it connects, so no list is missed).
 */
function toneMicrophoneAndRecordSpeakers() {
  const getUserMedia = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = async (constraints) => {
    const stream = constraints?.video ? await getUserMedia({ ...constraints, audio: false }) : new MediaStream();
    if (constraints?.audio) {
      const audio = new AudioContext();
      const tone = new OscillatorNode(audio, { frequency: 440 });
      const out = new MediaStreamAudioDestinationNode(audio, { channelCount: 1 });
      // Amplitude 0.5: an RMS level of -9 dBov; a silent page's microphone sends silence.
      const gain = new URLSearchParams(location.search).has("silent") ? 0 : 0.5;
      tone.connect(new GainNode(audio, { gain })).connect(out);
      tone.start();
      await audio.resume();
      stream.addTrack(out.stream.getAudioTracks()[0]);
    }
    return stream;
  };
  globalThis.speakerLists = [];
  globalThis.speakersAtJoin = [];
  Object.defineProperty(globalThis, "chorusMeeting", {
    configurable: true,
    set(value) {
      Object.defineProperty(globalThis, "chorusMeeting", { value, writable: true, configurable: true });
      // The lists the SDK emits while it applies a join reply, apart: a frame from the
      // server is handled in a later task, after the microtask that ends `joining`.
      let joining = false;
      value.meeting.on("joined", () => {
        joining = true;
        queueMicrotask(() => {
          joining = false;
        });
      });
      value.meeting.on("speakers", ({ speakers }) => {
        globalThis.speakerLists.push(speakers);
        if (joining) globalThis.speakersAtJoin.push(speakers);
        console.log(`speakers ${JSON.stringify(speakers)}${joining ? " (join reply)" : ""}`);
      });
    },
  });
}

/** What `page` shows now: the last `speakers` list and the tiles that are outlined. */
async function speakersShown(page) {
  return page.evaluate(() => {
    const last = globalThis.speakerLists.at(-1) ?? null;
    const tiles = [...document.querySelectorAll(".tile")].map((t) => {
      const style = getComputedStyle(t);
      return {
        sid: t.dataset.sid,
        speaking: t.classList.contains("speaking"),
        outlined: style.outlineStyle !== "none" && parseFloat(style.outlineWidth) > 0,
      };
    });
    return { last, tiles };
  });
}

/**
 * Wait until every page's last `speakers` list names exactly `expected` (sids, any order), each
 * with a level from 0 to 100, and the page outlines exactly one tile, the first listed
 * speaker's (none when the list is empty). While it does not, the check throws what the page
 * shows, which `waitFor` reports when its bound passes.
 */
async function expectSpeakers(pages, sids, expected, what) {
  const names = Object.fromEntries(Object.entries(sids).map(([who, sid]) => [sid, who]));
  const name = (sid) => names[sid] ?? sid;
  const wanted = expected.map((who) => sids[who]).sort();
  for (const [who, page] of Object.entries(pages)) {
    const shown = await waitFor(`${who}'s page to show ${what}`, async () => {
      const s = await speakersShown(page);
      if (!s.last) throw new Error("no speakers event yet");
      const listed = s.last.map((x) => x.participant);
      const top = listed[0];
      const outlined = s.tiles.filter((t) => t.outlined).map((t) => name(t.sid));
      const speaking = s.tiles.filter((t) => t.speaking).map((t) => name(t.sid));
      const seen = `last list ${JSON.stringify(s.last.map((x) => [name(x.participant), x.level]))}, ` +
        `outlined ${JSON.stringify(outlined)}, class speaking ${JSON.stringify(speaking)}, ${s.tiles.length} tiles`;
      const want = top ? JSON.stringify([name(top)]) : "[]";
      const ok =
        JSON.stringify([...listed].sort()) === JSON.stringify(wanted) &&
        s.last.every((x) => Number.isInteger(x.level) && x.level >= 0 && x.level <= 100) &&
        s.tiles.length === Object.keys(pages).length &&
        JSON.stringify(outlined) === want &&
        JSON.stringify(speaking) === want;
      if (!ok) throw new Error(seen);
      return seen;
    });
    log(`${who} shows ${what}: ${shown}`);
  }
}

/** Click the page's microphone button and wait until the page shows the new state. */
async function setMicrophone(page, on) {
  const pressed = on ? "false" : "true";
  if ((await page.getAttribute("#mic", "aria-pressed")) === pressed) {
    throw new Error(`${page.who}'s microphone is already ${on ? "on" : "off"}`);
  }
  await page.click("#mic");
  await waitFor(`${page.who}'s microphone to be ${on ? "on" : "off"}`, async () =>
    page.evaluate(
      (pressed) =>
        document.getElementById("mic").getAttribute("aria-pressed") === pressed &&
        document.querySelector('.tile[data-key="self"]').dataset.mic === (pressed === "true" ? "off" : "on"),
      pressed,
    ),
  );
}

await run("speakers", async ({ defer }) => {
  const browser = await launch();
  defer(browser.close);
  await browser.context.addInitScript(toneMicrophoneAndRecordSpeakers);

  step("alice, bob and carol join the meeting (SFU mode) and publish, microphones on");
  const pages = {};
  const sids = {};
  for (const who of ["alice", "bob", "carol"]) {
    pages[who] = await openMeeting(browser.context, who);
    sids[who] = await joined(pages[who]);
    const mode = await pages[who].evaluate(() => globalThis.chorusMeeting.meeting.mode);
    if (mode !== "sfu") throw new Error(`${who}'s meeting is in ${mode} mode`);
  }
  for (const page of Object.values(pages)) await published(page);

  step("every page lists all three as speakers and outlines the first one's tile only");
  await expectSpeakers(pages, sids, ["alice", "bob", "carol"], "all three speaking");

  step("bob and carol mute: every page lists alice alone and outlines her tile only");
  await setMicrophone(pages.bob, false);
  await setMicrophone(pages.carol, false);
  await expectSpeakers(pages, sids, ["alice"], "alice alone speaking");

  step("dave joins while alice speaks, silent: his page lists alice and outlines her tile");
  pages.dave = await openMeeting(browser.context, "dave", { query: "&silent" });
  sids.dave = await joined(pages.dave);
  const atJoin = await pages.dave.evaluate(() => globalThis.speakersAtJoin);
  if (JSON.stringify(atJoin.map((list) => list.map((x) => x.participant))) !== JSON.stringify([[sids.alice]])) {
    throw new Error(`dave's join told him the speakers ${JSON.stringify(atJoin)}, not alice alone`);
  }
  await published(pages.dave);
  await expectSpeakers(pages, sids, ["alice"], "alice alone speaking");

  step("alice mutes and carol unmutes: the outline moves to carol's tile on every page");
  await setMicrophone(pages.alice, false);
  await setMicrophone(pages.carol, true);
  await expectSpeakers(pages, sids, ["carol"], "carol alone speaking");

  step("carol mutes: nobody speaks, no tile is outlined");
  await setMicrophone(pages.carol, false);
  await expectSpeakers(pages, sids, [], "nobody speaking");
});
