"""The encrypted half of contrib/workers/local_trial.sh, with matrix-nio.

    trial_nio.py before BASE_URL STATE_DIR      # register, fill (run on the SQLite server)
    trial_nio.py after-LABEL BASE_URL STATE_DIR # the same devices carry on after a move

'before' registers two users, logs in encrypting clients (device and one-time keys
uploaded), makes an encrypted room with megolm messages both ways and a few plain rooms,
uploads media, sets a display name, an avatar, account data and a room tag. 'after-*'
logs in again with the same device ids and crypto stores (kept in STATE_DIR): every
earlier encrypted message must still decrypt, every room, the media, profile, account
data and tag be there, and a new encrypted message reach the other user. Any failure
exits non-zero. Not part of the test suite (needs a running server).
"""

import asyncio
import io
import json
import os
import secrets
import sys
import time
from urllib.parse import quote

from nio import (
    AsyncClient,
    AsyncClientConfig,
    DownloadResponse,
    JoinResponse,
    LoginResponse,
    RegisterResponse,
    RoomCreateResponse,
    RoomMessagesResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
    UploadResponse,
)

ROOT = sys.argv[3] if len(sys.argv) > 3 else "nio-trial"
STATE = os.path.join(ROOT, "state.json")
ALICE, BOB = "@nio_alice:localhost", "@nio_bob:localhost"
PW = {ALICE: "nio-alice-" + secrets.token_hex(8), BOB: "nio-bob-" + secrets.token_hex(8)}
ROOMS, PER_ROOM = 3, 10
MEGOLM = {"type": "m.room.encryption", "state_key": "",
          "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
MEDIA = b"operator trial media " * 200


def ok(resp, cls, what):
    if not isinstance(resp, cls):
        raise SystemExit(f"FAIL {what}: {type(resp).__name__} {resp}")
    print(f"ok   {what}")
    return resp


def client(base, user, device=None, enc=True):
    os.makedirs(os.path.join(ROOT, user), exist_ok=True)
    cfg = AsyncClientConfig(encryption_enabled=enc, store_sync_tokens=True, max_timeouts=0,
                            request_timeout=30)
    return AsyncClient(base, user, device_id=device, store_path=os.path.join(ROOT, user),
                       config=cfg)


async def raw(c, method, path, body=None):
    r = await c.send(method, path, None if body is None else json.dumps(body),
                     {"Authorization": f"Bearer {c.access_token}",
                      "Content-Type": "application/json"})
    return r.status, await r.json(content_type=None)


async def sync_until(c, room, pred, what, limit=30):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        resp = await c.sync(timeout=1000)
        if not isinstance(resp, SyncResponse):
            raise SystemExit(f"FAIL sync {c.user_id}: {resp}")
        j = resp.rooms.join.get(room)
        for e in j.timeline.events if j else []:
            if pred(e):
                print(f"ok   {what}")
                return e
    raise SystemExit(f"FAIL {what}: not seen")


async def send_enc(c, room, body):
    if c.should_query_keys:
        await c.keys_query()
    r = ok(await c.room_send(room, "m.room.message", {"msgtype": "m.text", "body": body},
                             ignore_unverified_devices=True), RoomSendResponse,
           f"encrypted send by {c.user_id}: {body!r}")
    return r.event_id


async def before(base):
    os.makedirs(ROOT, exist_ok=True)
    st = {"devices": {}, "rooms": [], "pw": PW}
    for user in (ALICE, BOB):
        c = client(base, "", enc=False)
        ok(await c.register(user[1:].split(":")[0], PW[user]), RegisterResponse,
           f"register {user}")
        await c.close()
    cs = {}
    for u in (ALICE, BOB):
        c = client(base, u)
        ok(await c.login(PW[u], device_name="trial"), LoginResponse, f"login {u}")
        await c.keys_upload()
        await c.sync(timeout=0)
        st["devices"][u] = c.device_id
        cs[u] = c
    alice, bob = cs[ALICE], cs[BOB]
    r = ok(await alice.room_create(name="secret", initial_state=[MEGOLM],
                                   invite=[BOB]), RoomCreateResponse,
           "createRoom encrypted")
    room = r.room_id
    await alice.sync(timeout=0)
    await bob.sync(timeout=0)
    ok(await bob.join(room), JoinResponse, "bob joins encrypted room")
    await bob.sync(timeout=0)
    await alice.sync(timeout=0)
    st["enc_room"] = room
    st["enc_msgs"] = {}
    for i in range(3):
        eid = await send_enc(alice, room, f"alice secret {i}")
        st["enc_msgs"][eid] = f"alice secret {i}"
    await sync_until(bob, room, lambda e: isinstance(e, RoomMessageText)
                         and e.body == "alice secret 2", "bob decrypts alice's message")
    eid = await send_enc(bob, room, "bob secret reply")
    st["enc_msgs"][eid] = "bob secret reply"
    await sync_until(alice, room, lambda e: getattr(e, "body", None) == "bob secret reply",
                     "alice decrypts bob's reply")
    # Plain rooms with some history, so the port has rows to copy.
    for n in range(ROOMS):
        r = ok(await alice.room_create(name=f"plain {n}", invite=[BOB]),
               RoomCreateResponse, f"createRoom plain {n}")
        st["rooms"].append(r.room_id)
        await alice.sync(timeout=0)
        await bob.sync(timeout=0)
        await bob.join(r.room_id)
        await bob.sync(timeout=0)
        await alice.sync(timeout=0)
        for i in range(PER_ROOM):
            who = alice if i % 2 else bob
            await who.room_send(r.room_id, "m.room.message",
                                {"msgtype": "m.text", "body": f"plain {n}/{i}"})
    print(f"ok   {ROOMS} plain rooms x {PER_ROOM} messages")
    up, _ = await alice.upload(io.BytesIO(MEDIA), content_type="application/octet-stream",
                               filename="trial.bin", filesize=len(MEDIA))
    st["mxc"] = ok(up, UploadResponse, "media upload").content_uri
    s, b = await raw(alice, "PUT", f"/_matrix/client/v3/profile/{quote(ALICE)}"
                     "/displayname", {"displayname": "Alice Operator"})
    assert s == 200, b
    s, b = await raw(alice, "PUT", f"/_matrix/client/v3/profile/{quote(ALICE)}"
                     "/avatar_url", {"avatar_url": st["mxc"]})
    assert s == 200, b
    s, b = await raw(alice, "PUT", f"/_matrix/client/v3/user/{quote(ALICE)}"
                     "/account_data/org.example.trial", {"kept": [1, 2, 3]})
    assert s == 200, b
    s, b = await raw(bob, "PUT", f"/_matrix/client/v3/user/{quote(BOB)}"
                     f"/rooms/{quote(room)}/tags/u.work", {"order": 0.5})
    assert s == 200, b
    print("ok   displayname, avatar, account data, tag")
    for c in cs.values():
        await c.close()
    with open(STATE, "w") as f:
        json.dump(st, f)


async def after(base, label):
    with open(STATE) as f:
        st = json.load(f)
    PW.update(st["pw"])
    cs = {}
    for u in (ALICE, BOB):
        c = client(base, u, device=st["devices"][u])
        r = ok(await c.login(PW[u]), LoginResponse, f"[{label}] login {u}")
        assert r.device_id == st["devices"][u], "new device id"
        ok(await c.sync(timeout=0, full_state=True), SyncResponse, f"[{label}] full sync {u}")
        cs[u] = c
    alice, bob = cs[ALICE], cs[BOB]
    room = st["enc_room"]
    for c in (alice, bob):
        assert room in c.rooms and c.rooms[room].encrypted, "encrypted room missing"
        for rid in st["rooms"]:
            assert rid in c.rooms, f"room {rid} missing for {c.user_id}"
        page = ok(await c.room_messages(room, start=c.next_batch, limit=50),
                  RoomMessagesResponse, f"[{label}] /messages {c.user_id}")
        got = {e.event_id: getattr(e, "body", None) for e in page.chunk}
        for eid, body in st["enc_msgs"].items():
            if got.get(eid) != body:
                raise SystemExit(f"FAIL {c.user_id} cannot decrypt {eid}: {got.get(eid)}")
        print(f"ok   [{label}] {c.user_id} decrypts {len(st['enc_msgs'])} old messages, "
              f"sees {len(c.rooms)} rooms")
    page = ok(await alice.room_messages(st["rooms"][0], start=alice.next_batch, limit=100),
              RoomMessagesResponse, f"[{label}] plain history")
    bodies = [e.body for e in page.chunk if isinstance(e, RoomMessageText)]
    assert len([b for b in bodies if b.startswith("plain 0/")]) == PER_ROOM, bodies
    d = ok(await alice.download(st["mxc"]), DownloadResponse, f"[{label}] media download")
    assert d.body == MEDIA
    s, b = await raw(bob, "GET", f"/_matrix/client/v3/profile/{quote(ALICE)}")
    assert (s, b.get("displayname"), b.get("avatar_url")) == (200, "Alice Operator",
                                                              st["mxc"]), (s, b)
    s, b = await raw(alice, "GET", f"/_matrix/client/v3/user/{quote(ALICE)}"
                     "/account_data/org.example.trial")
    assert (s, b) == (200, {"kept": [1, 2, 3]}), (s, b)
    s, b = await raw(bob, "GET", f"/_matrix/client/v3/user/{quote(BOB)}"
                     f"/rooms/{quote(room)}/tags")
    assert s == 200 and "u.work" in b.get("tags", {}), (s, b)
    print(f"ok   [{label}] profile, account data, tags")
    new = await send_enc(alice, room, f"after {label}")
    await sync_until(bob, room, lambda e: getattr(e, "event_id", None) == new
                     and getattr(e, "body", None) == f"after {label}",
                     f"[{label}] bob decrypts a new message")
    st["enc_msgs"][new] = f"after {label}"
    for c in cs.values():
        await c.close()
    with open(STATE, "w") as f:
        json.dump(st, f)


if __name__ == "__main__":
    phase, base = sys.argv[1], sys.argv[2]
    if phase == "before":
        asyncio.run(before(base))
    elif phase.startswith("after-"):
        asyncio.run(after(base, phase[len("after-"):]))
    else:
        raise SystemExit(__doc__)
