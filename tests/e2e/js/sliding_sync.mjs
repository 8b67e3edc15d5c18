// End to end with matrix-js-sdk's SlidingSync (MSC4186) against a running Parley.
//
// bob runs the sliding sync client with Rust crypto; alice is a classic /sync client
// with Rust crypto. bob lists his rooms (two invites), joins them, opens one (a room
// subscription), receives a message live, and reads alice's encrypted message.
// Usage: node sliding_sync.mjs <base_url>. Prints one JSON line per step; exit 0 = pass.
import * as sdk from "matrix-js-sdk";
import { SlidingSync } from "matrix-js-sdk/lib/sliding-sync.js";
import { logger } from "matrix-js-sdk/lib/logger.js";

const base = process.argv[2];
const STEP_TIMEOUT_MS = 30_000;
logger.setLevel("error");

function step(name, data = {}) {
  console.log(JSON.stringify({ step: name, ...data }));
}

async function waitFor(what, check) {
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function register(name) {
  const url = `${base}/_matrix/client/v3/register`;
  const body = { username: name, password: "correct horse battery staple 1!" };
  const first = await fetch(url, { method: "POST", body: JSON.stringify(body),
                                   headers: { "Content-Type": "application/json" } });
  const session = (await first.json()).session;
  const second = await fetch(url, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...body, auth: { type: "m.login.dummy", session } }),
  });
  const json = await second.json();
  if (second.status !== 200) throw new Error(`register ${name}: ${JSON.stringify(json)}`);
  return sdk.createClient({ baseUrl: base, userId: json.user_id,
                            accessToken: json.access_token, deviceId: json.device_id });
}

function timelineBodies(room) {
  return room.getLiveTimeline().getEvents()
    .filter((e) => e.getType() === "m.room.message")
    .map((e) => e.getContent().body);
}

async function main() {
  const versions = await (await fetch(`${base}/_matrix/client/versions`)).json();
  if (!versions.unstable_features["org.matrix.simplified_msc3575"]) {
    throw new Error("server does not advertise org.matrix.simplified_msc3575");
  }
  const alice = await register("alice");
  const bob = await register("bob");
  await alice.initRustCrypto({ useIndexedDB: false });
  await bob.initRustCrypto({ useIndexedDB: false });
  await alice.startClient();
  await waitFor("alice's first sync", () => alice.isInitialSyncComplete());

  const plain = (await alice.createRoom({ name: "Plain", invite: [bob.getUserId()] })).room_id;
  const secret = (await alice.createRoom({
    name: "Secret", invite: [bob.getUserId()],
    initial_state: [{ type: "m.room.encryption", state_key: "",
                      content: { algorithm: "m.megolm.v1.aes-sha2" } }],
  })).room_id;

  const lists = new Map([["all", {
    ranges: [[0, 20]], timeline_limit: 1,
    required_state: [["m.room.name", ""], ["m.room.encryption", ""],
                     ["m.room.member", "$ME"], ["m.room.member", "$LAZY"]],
  }]]);
  const slidingSync = new SlidingSync(base, lists, {
    timeline_limit: 20, required_state: [["*", "*"]],
  }, bob, 10_000);
  await bob.startClient({ slidingSync });

  // 1. The room list: both invites, named.
  await waitFor("bob's invites", () => [plain, secret].every(
    (id) => bob.getRoom(id)?.getMyMembership() === "invite"));
  await waitFor("list count", () => slidingSync.getListData("all")?.joinedCount === 2);
  step("listed", { count: slidingSync.getListData("all").joinedCount,
                   names: [plain, secret].map((id) => bob.getRoom(id).name).sort() });

  // 2. Join both and open "Plain" (a room subscription).
  await bob.joinRoom(plain);
  await bob.joinRoom(secret);
  await waitFor("bob joined", () => [plain, secret].every(
    (id) => bob.getRoom(id)?.getMyMembership() === "join"));
  slidingSync.modifyRoomSubscriptions(new Set([plain]));
  await alice.sendTextMessage(plain, "hello bob");
  await waitFor("live message", () => timelineBodies(bob.getRoom(plain)).includes("hello bob"));
  step("live", { bodies: timelineBodies(bob.getRoom(plain)) });

  // 3. An encrypted message, decrypted by bob's Rust crypto (room key over to-device).
  await waitFor("bob's device keys visible to alice", async () => {
    const devices = await alice.getCrypto().getUserDeviceInfo([bob.getUserId()], true);
    return (devices.get(bob.getUserId())?.size ?? 0) > 0;
  });
  await waitFor("alice sees bob joined", () =>
    alice.getRoom(secret)?.getMember(bob.getUserId())?.membership === "join");
  await alice.sendTextMessage(secret, "top secret");
  const decrypted = await waitFor("decrypted message", async () => {
    const room = bob.getRoom(secret);
    const ev = room?.getLiveTimeline().getEvents().find((e) => e.isEncrypted());
    if (!ev) return null;
    await bob.decryptEventIfNeeded(ev);
    return ev.getType() === "m.room.message" && !ev.isDecryptionFailure()
      ? ev.getContent().body : null;
  });
  step("decrypted", { body: decrypted });

  alice.stopClient();
  bob.stopClient();
  step("done");
  process.exit(0);
}

main().catch((err) => {
  console.log(JSON.stringify({ step: "error", error: String(err && err.stack || err) }));
  process.exit(1);
});
