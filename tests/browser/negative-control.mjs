// The negative control: the checks of the other scenarios can fail. Alice's browser runs
// without `--use-fake-ui-for-media-stream`, so getUserMedia is refused (NotAllowedError): her
// page must say so, and bob, in a browser with the fake devices, must NOT see her video decode
// (the same `expectDecoding` check that passes in meeting.mjs times out here), while alice still
// decodes bob's (so the meeting itself works).

import { expectDecoding, joined, launch, openMeeting, pageState, run, step, waitFor } from "./lib.mjs";

await run("negative-control", async ({ defer }) => {
  const denied = await launch({ fakeUi: false });
  defer(denied.close);
  const granted = await launch();
  defer(granted.close);

  step("alice (no device permission) and bob join");
  const alice = await openMeeting(denied.context, "alice");
  const aliceSid = await joined(alice);
  const bob = await openMeeting(granted.context, "bob");
  const bobSid = await joined(bob);

  step("alice's page reports the refused devices");
  const s = await waitFor("alice's page to report the devices", async () => {
    const s = await pageState(alice);
    return s.publishing ? s : null;
  });
  if (s.publishing !== "no-devices" || !s.alert?.includes("NotAllowedError")) {
    throw new Error(`alice's page did not report NotAllowedError: ${JSON.stringify(s)}`);
  }

  step("alice decodes bob's video");
  await expectDecoding(alice, bobSid, { who: "bob" });

  step("bob's check for alice's video fails");
  let failed = null;
  try {
    await expectDecoding(bob, aliceSid, { who: "alice", timeoutMs: 4000 });
  } catch (e) {
    failed = e;
  }
  if (!failed) throw new Error("bob decoded video from alice, who has no camera: the check cannot fail");
  if (!/timed out/.test(failed.message)) throw failed;
  step(`as expected: ${failed.message.split(" (last")[0]}`);
});
