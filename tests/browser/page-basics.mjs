// The page and the SDK in a real browser, before any media flows: the page and its modules are
// served, the SDK opens a session (hello, welcome), the fake camera delivers frames to the page,
// and a bad token or a bad room id is reported on the page.

import { env, launch, openMeeting, pageState, run, step, waitFor } from "./lib.mjs";

await run("page-basics", async ({ defer }) => {
  const browser = await launch();
  defer(browser.close);

  step("the page opens a session as alice");
  const page = await openMeeting(browser.context, "alice");
  const welcome = await waitFor("the session to open", () =>
    page.evaluate(() => globalThis.chorusMeeting?.client.welcome ?? null),
  );
  if (welcome.user !== "alice" || welcome.org !== "acme") {
    throw new Error(`welcome for the wrong user: ${JSON.stringify(welcome)}`);
  }

  step("getUserMedia gives live fake camera frames");
  const frames = await page.evaluate(async () => {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
    const video = document.createElement("video");
    video.muted = true;
    video.srcObject = stream;
    document.body.append(video);
    await video.play();
    const t0 = video.currentTime;
    for (let i = 0; i < 100 && (video.videoWidth === 0 || video.currentTime <= t0); i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    const out = { kinds: stream.getTracks().map((t) => t.kind).sort(), width: video.videoWidth, advanced: video.currentTime > t0 };
    for (const t of stream.getTracks()) t.stop();
    video.remove();
    return out;
  });
  if (frames.kinds.join() !== "audio,video" || frames.width === 0 || !frames.advanced) {
    throw new Error(`the fake camera gives no frames: ${JSON.stringify(frames)}`);
  }

  step("a bad token is reported on the page");
  const bad = await openMeeting(browser.context, "mallory", { token: "not-a-token" });
  const refused = await waitFor("the bad token to be reported", async () => {
    const s = await pageState(bad);
    return s.state === "error" && s.alert ? s : null;
  });
  if (!refused.alert.includes("invalid_token")) throw new Error(`unexpected alert: ${refused.alert}`);

  step("a bad room id is refused by the server");
  const response = await browser.context.request.get(`${env("MEET_BASE_URL")}/meet/${"x".repeat(65)}?token=t`);
  if (response.status() !== 400) throw new Error(`a 65-character room id answered ${response.status()}`);

  step("the SDK modules are served as JavaScript");
  for (const file of ["chorus.js", "meeting.js"]) {
    const r = await browser.context.request.get(`${env("MEET_BASE_URL")}/sdk/${file}`);
    if (r.status() !== 200 || !r.headers()["content-type"].startsWith("text/javascript")) {
      throw new Error(`/sdk/${file}: ${r.status()} ${r.headers()["content-type"]}`);
    }
  }
});
