"""Group commit of chat sends (gbmedia/messaging/group_commit.py) against real PostgreSQL.

Sends waiting at one moment share one statement: consecutive seqs in queue order,
each its own id and ack; a bad send in a batch fails alone; an idempotency key
repeated inside a batch, or stored by another writer while the batch waited for
the conversation's lock, is still stored once; two writers (two nodes) sending to
the same conversations keep seqs gap-free; the outbox gets each message's event in
the same statement. Plus the fan-out's wire format: frames written straight to the
socket reach a client that negotiated compression, and a node still understands
the one-event bus messages of a node that does not batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gbmedia.errors import ApiError
from gbmedia.messaging import socket as chat_socket
from gbmedia.messaging.delivery import CHANNEL
from gbmedia.messaging.messages import Messages, message_event
from gbmedia.messaging.models import ChatCaller, SendResult
from gbmedia.node import Node
from tests.helpers import Tenant, bearer
from tests.messaging.test_chat_socket import ChatClient, connect, conversation_of, token


def caller(tenant: Tenant, identity: str) -> ChatCaller:
    return ChatCaller(uuid.UUID(tenant.instance_id), identity)


async def group(client: TestClient, tenant: Tenant, owner: str, *members: str) -> uuid.UUID:
    return uuid.UUID(await conversation_of(client, tenant, owner, *members))


async def group_in_lane_of(
    client: TestClient, tenant: Tenant, messages: Messages, other: uuid.UUID, same: bool = True
) -> uuid.UUID:
    """A new conversation of alice and bob whose sends go to ``other``'s writer lane (or, not ``same``, another)."""
    while True:
        cid = await group(client, tenant, "alice", "bob")
        if (messages.batcher.lane_of(cid) is messages.batcher.lane_of(other)) == same:
            return cid


async def warm(messages: Messages, tenant: Tenant, cid: uuid.UUID, identity: str = "alice") -> None:
    """One send first, so the instance's search language is cached and later sends queue without waiting."""
    await messages.send(caller(tenant, identity), cid, "warm-up", f"warm-{uuid.uuid4().hex}")


async def stored_seqs(pool: asyncpg.Pool, cid: uuid.UUID) -> list[int]:
    return [r["seq"] for r in await pool.fetch("SELECT seq FROM messages WHERE conversation_id = $1 ORDER BY seq", cid)]


async def test_concurrent_sends_share_a_batch_and_get_consecutive_seqs_and_their_own_ids(
    client: TestClient, node: Node, tenant: Tenant
):
    members = [f"m{i}" for i in range(10)]
    cid = await group(client, tenant, "alice", *members)
    messages = node.chat.messages
    await warm(messages, tenant, cid)
    batches_before = messages.batcher.batches
    senders = ["alice", *members] * 4
    results = await asyncio.gather(
        *(messages.send(caller(tenant, who), cid, f"hello {n}", f"k{n}") for n, who in enumerate(senders))
    )
    assert messages.batcher.batches - batches_before < len(senders)  # they did share statements
    assert messages.batcher.largest > 1
    # Queue order is seq order: the n-th send got seq n + 2 (the warm-up is seq 1).
    assert [r.message.seq for r in results] == list(range(2, len(senders) + 2))
    assert all(r.created for r in results)
    assert len({r.message.id for r in results}) == len(senders)
    rows = await node.db.pool.fetch(
        "SELECT id, seq, sender_id, content FROM messages WHERE conversation_id = $1 AND seq > 1 ORDER BY seq", cid
    )
    assert [(r["id"], r["seq"], r["sender_id"], r["content"]) for r in rows] == [
        (r.message.id, r.message.seq, who, f"hello {n}")
        for n, (r, who) in enumerate(zip(results, senders, strict=True))
    ]
    assert await node.db.pool.fetchval("SELECT last_seq FROM conversations WHERE id = $1", cid) == len(senders) + 1


async def test_a_bad_send_in_a_batch_fails_alone_and_leaves_no_gap(client: TestClient, node: Node, tenant: Tenant):
    cid = await group(client, tenant, "alice", "bob")
    other = await group(client, tenant, "carol", "dave")  # alice is not a member of this one
    messages = node.chat.messages
    await warm(messages, tenant, cid)
    first = await messages.send(caller(tenant, "alice"), cid, "original", "reused")
    sends = [
        messages.send(caller(tenant, "alice"), cid, "one", "a1"),
        messages.send(caller(tenant, "alice"), other, "not mine", "a2"),  # not a member
        messages.send(caller(tenant, "bob"), cid, "two", "b1"),
        messages.send(caller(tenant, "alice"), cid, "different text", "reused"),  # key reused, other content
        messages.send(caller(tenant, "alice"), uuid.uuid4(), "nowhere", "a3"),  # no such conversation
        messages.send(caller(tenant, "alice"), cid, "original", "reused"),  # a retry: the stored message
        messages.send(caller(tenant, "bob"), cid, "three", "b2"),
    ]
    one, not_member, two, reused, missing, retry, three = await asyncio.gather(*sends, return_exceptions=True)
    assert isinstance(not_member, ApiError) and (not_member.status, not_member.code) == (403, "not_a_member")
    assert isinstance(reused, ApiError) and (reused.status, reused.code) == (409, "idempotency_key_reused")
    assert reused.details == {"seq": first.message.seq}
    assert isinstance(missing, ApiError) and (missing.status, missing.code) == (404, "conversation_not_found")
    assert (retry.created, retry.message.id, retry.message.seq) == (False, first.message.id, first.message.seq)
    base = first.message.seq
    assert [one.message.seq, two.message.seq, three.message.seq] == [base + 1, base + 2, base + 3]
    assert await stored_seqs(node.db.pool, cid) == list(range(1, base + 4))
    assert await stored_seqs(node.db.pool, other) == []


async def test_a_key_twice_in_one_batch_is_stored_once(client: TestClient, node: Node, tenant: Tenant):
    cid = await group(client, tenant, "alice", "bob")
    messages = node.chat.messages
    await warm(messages, tenant, cid)
    a, b, c = await asyncio.gather(
        messages.send(caller(tenant, "alice"), cid, "same", "twice"),
        messages.send(caller(tenant, "alice"), cid, "same", "twice"),
        messages.send(caller(tenant, "alice"), cid, "not the same", "twice"),
        return_exceptions=True,
    )
    assert a.created and not b.created and b.message.id == a.message.id and b.message.seq == a.message.seq
    assert isinstance(c, ApiError) and c.code == "idempotency_key_reused"
    # The same key from another sender is another message.
    d = await messages.send(caller(tenant, "bob"), cid, "same", "twice")
    assert d.created and d.message.seq == a.message.seq + 1
    assert (
        await node.db.pool.fetchval(
            "SELECT count(*) FROM messages WHERE conversation_id = $1 AND idempotency_key = 'twice'", cid
        )
        == 2
    )


@contextlib.asynccontextmanager
async def conversation_locked(pool: asyncpg.Pool, cid: uuid.UUID | str) -> AsyncIterator[None]:
    """Hold a conversation's row lock, as another node's writer would, until the block ends (then roll back)."""
    async with pool.acquire() as holder:
        tx = holder.transaction()
        await tx.start()
        try:
            await holder.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", cid)
            yield
        finally:
            await tx.rollback()


@contextlib.asynccontextmanager
async def another_node_storing(pool: asyncpg.Pool, cid: uuid.UUID, sender: str, key: str) -> AsyncIterator[int]:
    """Another node's send of ``key``: it takes the conversation's next seq (and its lock) first, and
    stores and commits the message 'raced' when the block ends. Yields that seq."""
    async with pool.acquire() as other_node:
        tx = other_node.transaction()
        await tx.start()
        seq = await other_node.fetchval(
            "UPDATE conversations SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq", cid
        )
        yield seq
        await other_node.execute(
            """INSERT INTO messages (shard_key, customer_id, instance_id, conversation_id, seq, sender_id, content,
                                     idempotency_key)
               SELECT shard_key, customer_id, instance_id, id, $2, $3, 'raced', $4
                 FROM conversations WHERE id = $1""",
            cid,
            seq,
            sender,
            key,
        )
        await tx.commit()


async def wait_for_lock_waiter(pool: asyncpg.Pool, count: int) -> None:
    """Until ``count`` backends wait for a lock (PostgreSQL has no event to await for that)."""
    for _ in range(3000):
        if await pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'") >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {count} backends waiting for a lock within 30 s")


async def test_a_key_stored_by_another_writer_while_the_batch_waited_is_not_stored_twice(
    client: TestClient, node: Node, tenant: Tenant
):
    """Another node commits the key while this batch waits for the conversation's lock: the batch's
    snapshot cannot see that row, the unique index refuses the insert, and the fallback (each send on
    its own) finds it; the batch's other send is stored with the next seq, after the other node's."""
    cid = await group(client, tenant, "alice", "bob")
    messages = node.chat.messages
    await warm(messages, tenant, cid)
    pool = node.db.pool
    fallbacks = messages.batcher.fallbacks
    async with another_node_storing(pool, cid, "alice", "race") as seq:
        sends = asyncio.gather(
            messages.send(caller(tenant, "alice"), cid, "raced", "race"),
            messages.send(caller(tenant, "bob"), cid, "bystander", "b-1"),
        )
        await wait_for_lock_waiter(pool, 1)  # the batch's statement started, then blocked on the row lock
    raced, bystander = await sends
    assert not raced.created and raced.message.seq == seq
    assert bystander.created and bystander.message.seq == seq + 1
    assert messages.batcher.fallbacks == fallbacks + 1
    assert await stored_seqs(pool, cid) == list(range(1, seq + 2))


async def test_two_writers_on_the_same_conversations_keep_seqs_gap_free(client: TestClient, node: Node, tenant: Tenant):
    """Two nodes' batchers (two Messages on one database) sending at once to overlapping conversations:
    locks in id order, so no deadlock; every conversation numbered 1..n without gaps or repeats."""
    conversations = [await group(client, tenant, "alice", "bob") for _ in range(3)]
    first = node.chat.messages
    second = Messages(node.db.pool, node.chat.conversations)
    for messages in (first, second):
        await warm(messages, tenant, conversations[0])
    sends = [
        (first if n % 2 else second).send(
            caller(tenant, "alice" if n % 3 else "bob"), conversations[n % 3], f"m{n}", f"k{n}"
        )
        for n in range(120)
    ]
    for result in await asyncio.gather(*sends):
        assert result.created
    for cid in conversations:
        seqs = await stored_seqs(node.db.pool, cid)
        assert seqs == list(range(1, len(seqs) + 1))
        assert await node.db.pool.fetchval("SELECT last_seq FROM conversations WHERE id = $1", cid) == len(seqs)
    assert (
        await node.db.pool.fetchval(
            "SELECT count(*) FROM messages WHERE conversation_id = ANY($1::uuid[])", conversations
        )
        == 122
    )


async def test_the_outbox_gets_each_messages_event_in_the_same_statement(
    client: TestClient, node: Node, tenant: Tenant
):
    cid = await group(client, tenant, "alice", "bob")
    messages = node.chat.messages
    await warm(messages, tenant, cid)
    results = await asyncio.gather(
        *(
            messages.send(caller(tenant, "bob"), cid, f"é {n}", f"o{n}", metadata={"n": n, "tags": ["x"]})
            for n in range(5)
        )
    )
    rows = await node.db.pool.fetch(
        "SELECT id, event_id, topic, key, payload FROM outbox WHERE payload->>'type' = 'message.created' "
        "AND payload->'message'->>'sender' = 'bob' ORDER BY id"
    )
    assert [r["payload"]["message"] for r in rows] == [message_event(r.message) for r in results]
    assert all(r["topic"] == "chat.messages" and r["key"] == str(cid) for r in rows)
    assert all(r["payload"]["event_id"] == str(r["event_id"]) for r in rows)
    assert [r["payload"]["message"]["seq"] for r in rows] == sorted(r.message.seq for r in results)


async def test_a_socket_that_negotiated_compression_reads_the_fanned_out_frames(
    client: TestClient, tenant: Tenant, connect
):
    """Chat frames are written uncompressed straight to the transport (RSV1 clear): legal on a
    permessage-deflate socket, and aiohttp's own compressed replies on it still decode."""
    cid = await conversation_of(client, tenant, "alice", "bob")
    alice = await connect(tenant, "alice")
    bob = ChatClient(await client.ws_connect("/rtc", compress=15))
    try:
        assert bob.ws.compress == 15
        reply = await bob.request({"type": "auth", "token": token(tenant, "bob")})
        assert reply["type"] == "authenticated"
        for n in range(3):
            ack = await alice.request(
                {"type": "chat_send", "conversation_id": cid, "content": f"x{n}" * 50, "idempotency_key": f"z{n}"}
            )
            assert ack["type"] == "chat_ack"
        await bob.wait(lambda e: len(bob.messages(cid)) == 3)
        assert [m["content"] for m in bob.messages(cid)] == [f"x{n}" * 50 for n in range(3)]
        sent = await bob.request(
            {"type": "chat_send", "conversation_id": cid, "content": "back", "idempotency_key": "bk"}
        )
        assert (sent["type"], sent["seq"]) == ("chat_ack", 4)
        page = await bob.request({"type": "chat_history", "conversation_id": cid, "after_seq": 0})
        assert [m["seq"] for m in page["messages"]] == [1, 2, 3, 4]
    finally:
        await bob.close()


async def test_the_ack_carries_the_request_id_and_arrives_once(client: TestClient, tenant: Tenant, connect):
    cid = await conversation_of(client, tenant, "alice", "bob")
    alice = await connect(tenant, "alice")
    await alice.ws.send_json({"type": "chat_send", "conversation_id": cid, "content": "no id", "idempotency_key": "n1"})
    ack = await alice.wait(lambda e: e["type"] == "chat_ack")
    assert "id" not in ack and ack["seq"] == 1
    ack = await alice.request(
        {"type": "chat_send", "conversation_id": cid, "content": "with id", "idempotency_key": "n2"}
    )
    assert ack["seq"] == 2
    await alice.wait(lambda e: len(alice.messages(cid)) == 2)
    assert [e.get("id") for e in alice.events if e["type"] == "chat_ack"] == [None, ack["id"]]


async def test_one_event_bus_messages_and_malformed_entries(client: TestClient, node: Node, tenant: Tenant, connect):
    """A node that publishes one event per bus message (before batching) still reaches this node's
    sessions; malformed entries are skipped without losing the good ones next to them."""
    bob = await connect(tenant, "bob")
    event = {"type": "typing", "conversation_id": "c", "identity": "alice", "active": True}
    await node.bus.publish(CHANNEL, {"instance_id": tenant.instance_id, "members": ["bob"], "event": event})
    assert await bob.wait(lambda e: e["type"] == "typing") == event
    good = {"type": "typing", "conversation_id": "c", "identity": "carol", "active": False}
    await node.bus.publish(
        CHANNEL,
        {
            "events": [
                "not an object",
                {"instance_id": 7, "members": ["bob"], "frame": "{}"},
                {"instance_id": tenant.instance_id, "members": ["bob"], "frame": json.dumps(good)},
            ]
        },
    )
    assert await bob.wait(lambda e: e.get("identity") == "carol") == good
    await node.bus.publish(CHANNEL, {"events": "nope"})
    await node.bus.publish(CHANNEL, {"instance_id": tenant.instance_id, "members": ["bob"], "event": good})
    await bob.wait(lambda e: len([x for x in bob.events if x.get("identity") == "carol"]) == 2)


async def test_a_large_frame_reaches_a_plain_websocket_client(client: TestClient, tenant: Tenant, connect):
    cid = await conversation_of(client, tenant, "alice", "bob")
    alice, bob = await connect(tenant, "alice"), await connect(tenant, "bob")
    content = "ü" * 8000  # 16,000 bytes: a 16-bit length frame
    ack = await alice.request(
        {"type": "chat_send", "conversation_id": cid, "content": content, "idempotency_key": "big"}
    )
    assert ack["type"] == "chat_ack"
    message = (await bob.wait(lambda e: e["type"] == "chat_message"))["message"]
    assert message["content"] == content


async def test_rest_sends_are_batched_too(client: TestClient, node: Node, tenant: Tenant):
    cid = await conversation_of(client, tenant, "alice", "bob")
    headers = bearer(token(tenant, "alice"))
    responses = await asyncio.gather(
        *(
            client.post(
                f"/api/v1/conversations/{cid}/messages",
                headers=headers,
                json={"content": f"r{n}", "idempotency_key": f"r{n}"},
            )
            for n in range(12)
        )
    )
    assert [r.status for r in responses] == [201] * 12
    seqs = sorted([(await r.json())["seq"] for r in responses])
    assert seqs == list(range(1, 13))


async def test_a_session_on_a_closed_socket_drops_frames(client: TestClient, tenant: Tenant, connect, node: Node):
    cid = await conversation_of(client, tenant, "alice", "bob")
    alice = await connect(tenant, "alice")
    ws = await client.ws_connect("/rtc")
    try:
        await ws.send_json({"type": "auth", "token": token(tenant, "bob"), "id": "a"})
        assert (await ws.receive_json())["type"] == "authenticated"
    finally:
        await ws.close()
    ack = await alice.request(
        {"type": "chat_send", "conversation_id": cid, "content": "bob left", "idempotency_key": "gone"}
    )
    assert ack["type"] == "chat_ack"  # nothing to write to bob's closed socket, nothing breaks


async def test_a_message_too_large_for_the_event_stream_is_refused(node: Node, client: TestClient, tenant: Tenant):
    cid = await group(client, tenant, "alice", "bob")
    with pytest.raises(ApiError) as refused:
        await node.chat.messages.send(caller(tenant, "alice"), cid, "x", "huge", metadata={"blob": "y" * (512 * 1024)})
    assert (refused.value.status, refused.value.code) == (413, "message_too_large")


@contextlib.asynccontextmanager
async def writing_and_queued(
    node: Node, tenant: Tenant, cid: uuid.UUID, keys: tuple[str, str]
) -> AsyncIterator[tuple[asyncio.Future[SendResult], asyncio.Future[SendResult]]]:
    """Two sends of alice's: the first being written (its statement waits for the conversation's lock,
    held until the block ends), the second queued behind it."""
    messages = node.chat.messages
    await warm(messages, tenant, cid)
    pool = node.db.pool
    async with conversation_locked(pool, cid):
        first = asyncio.ensure_future(messages.send(caller(tenant, "alice"), cid, "first", keys[0]))
        await wait_for_lock_waiter(pool, 1)
        queued = asyncio.ensure_future(messages.send(caller(tenant, "alice"), cid, "queued", keys[1]))
        await asyncio.sleep(0)
        yield first, queued


async def test_the_writer_stopping_fails_what_it_was_writing(node: Node, client: TestClient, tenant: Tenant):
    cid = await group(client, tenant, "alice", "bob")
    messages = node.chat.messages
    pool = node.db.pool
    async with writing_and_queued(node, tenant, cid, ("w1", "w2")) as (first, queued):
        lane = messages.batcher.lane_of(cid)
        assert lane.task is not None
        lane.task.cancel()  # what a node's shutdown does to its tasks
        for pending in (first, queued):
            with pytest.raises(RuntimeError, match="chat writer stopped"):
                await pending
    # The cancelled statement was rolled back; the next send starts a new writer.
    result = await messages.send(caller(tenant, "alice"), cid, "after", "w3")
    assert result.created and await stored_seqs(pool, cid) == list(range(1, result.message.seq + 1))


async def test_coalesced_frames_are_separate_messages_in_seq_order(client: TestClient, tenant: Tenant, connect):
    """Several events coalesced into one write are still separate WebSocket messages at the client."""
    cid = await conversation_of(client, tenant, "alice", "bob")
    alice = await connect(tenant, "alice")
    bob = await connect(tenant, "bob")
    acks = await asyncio.gather(
        *(
            alice.request({"type": "chat_send", "conversation_id": cid, "content": f"c{n}", "idempotency_key": f"c{n}"})
            for n in range(20)
        )
    )
    assert sorted(a["seq"] for a in acks) == list(range(1, 21))
    await bob.wait(lambda e: len(bob.messages(cid)) == 20)
    assert [m["seq"] for m in bob.messages(cid)] == list(range(1, 21))  # in seq order


__all__ = ["connect"]  # the socket fixture, shared with test_chat_socket.py


async def test_group_commit_and_fan_out_figures_are_exported(client: TestClient, tenant: Tenant, connect):
    cid = await conversation_of(client, tenant, "alice", "bob")
    alice, bob = await connect(tenant, "alice"), await connect(tenant, "bob")
    acks = await asyncio.gather(
        *(
            alice.request({"type": "chat_send", "conversation_id": cid, "content": f"f{n}", "idempotency_key": f"f{n}"})
            for n in range(6)
        )
    )
    assert sorted(a["seq"] for a in acks) == list(range(1, 7))
    await bob.wait(lambda e: len(bob.messages(cid)) == 6)
    figures = {}
    for line in (await (await client.get("/metrics")).text()).splitlines():
        if line.startswith("gbmedia_chat_"):
            name, _, value = line.rpartition(" ")
            figures[name.split("{")[0]] = float(value)
    assert figures["gbmedia_chat_sends_batched_total"] == 6
    assert 1 <= figures["gbmedia_chat_send_batches_total"] <= 6
    assert figures["gbmedia_chat_send_batch_largest"] >= 1
    assert 0 < figures["gbmedia_chat_send_batch_seconds_total"] < 60
    assert figures["gbmedia_chat_sends_queued"] == 0
    assert figures["gbmedia_chat_send_batch_fallbacks_total"] == 0
    assert figures["gbmedia_chat_events_delivered_total"] >= 12  # to bob and to alice's own socket
    assert figures["gbmedia_chat_sessions"] == 2
    assert figures["gbmedia_chat_bus_messages_total"] == 0  # one node, no Redis: nobody else to tell


async def test_a_client_that_stops_reading_is_cut_off(
    client: TestClient, node: Node, tenant: Tenant, connect, monkeypatch: pytest.MonkeyPatch
):
    """Frames go straight to the transport; once a socket's unsent output passes the limit (limit and
    kernel buffers made small here, so that happens quickly) the session stops writing and the
    connection ends: a close handshake cannot get past the unread data, so it is aborted."""
    import socket

    cid = await conversation_of(client, tenant, "alice", "bob")
    alice = await connect(tenant, "alice")
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect((client.host, client.port))
    raw.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=raw)
    writer.write(
        f"GET /rtc HTTP/1.1\r\nHost: {client.host}:{client.port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    auth = json.dumps({"type": "auth", "token": token(tenant, "bob"), "id": "a"}).encode()
    writer.write(bytes((0x81, 0xFE)) + len(auth).to_bytes(2, "big") + b"\0\0\0\0" + auth)  # zero mask key
    for _ in range(300):
        if node.chat_hub.online_here(tenant.instance_id, "bob"):
            break
        await asyncio.sleep(0.01)
    assert node.chat_hub.online_here(tenant.instance_id, "bob")
    (session,) = node.chat_hub._sessions[(tenant.instance_id, "bob")]
    monkeypatch.setattr(session.output, "limit", 32 * 1024)  # GBMEDIA_SOCKET_MAX_BUFFERED_BYTES, for this socket
    server_side = session.output.transport.get_extra_info("socket")
    server_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = "y" * 15_000
    for n in range(400):  # bob never reads a byte from here on
        await alice.request({"type": "chat_send", "conversation_id": cid, "content": big, "idempotency_key": f"big{n}"})
        if session.cut_off:
            break
    assert session.cut_off, (n, session.output.buffered())
    for _ in range(3000):  # the connection is aborted, the session ends
        if not node.chat_hub.online_here(tenant.instance_id, "bob"):
            break
        await asyncio.sleep(0.01)
    assert not node.chat_hub.online_here(tenant.instance_id, "bob")
    writer.close()


async def cancel_lock_waiters(pool: asyncpg.Pool, cancelled: set[tuple[int, object]]) -> None:
    """Cancel the statements waiting for a lock, once at least one that is not in ``cancelled`` waits.

    A cancelled statement can still show as waiting for a moment (the backend acts on the cancel
    request asynchronously): counting it as the next waiter cancelled nothing, and the statement that
    then came to wait did so until its timeout. So each statement is known by its backend and its start.
    """
    query = (
        "SELECT pid, query_start FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    for _ in range(3000):
        waiting = {(row["pid"], row["query_start"]) for row in await pool.fetch(query)} - cancelled
        if waiting:
            for pid, _started in waiting:
                await pool.execute("SELECT pg_cancel_backend($1)", pid)
            cancelled |= waiting
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no new statement waiting for a lock within 30 s")


async def test_a_failed_batch_is_written_send_by_send_and_only_the_failing_send_fails(
    client: TestClient, node: Node, tenant: Tenant
):
    """A real statement failure (the backend's query cancelled while it waits for a conversation's
    lock): the batch is retried one send at a time; the send that fails again gets the error, the
    send of the other conversation commits; a send whose sender gave up while queued is not written."""
    messages = node.chat.messages
    blocked = await group(client, tenant, "alice", "bob")
    free = await group_in_lane_of(client, tenant, messages, blocked)  # so both are in one batch
    await warm(messages, tenant, blocked)
    await warm(messages, tenant, free)
    pool = node.db.pool
    fallbacks = messages.batcher.fallbacks
    async with conversation_locked(pool, blocked):
        stuck = asyncio.ensure_future(messages.send(caller(tenant, "alice"), blocked, "stuck", "s1"))
        fine = asyncio.ensure_future(messages.send(caller(tenant, "bob"), free, "fine", "f1"))
        cancelled: set[tuple[int, object]] = set()
        await cancel_lock_waiters(pool, cancelled)  # the batch of both fails
        await cancel_lock_waiters(pool, cancelled)  # "stuck" on its own fails again; "fine" on its own commits
        with pytest.raises(asyncpg.QueryCanceledError):
            await stuck
        assert (await fine).created
        # Queued behind a batch that waits, then abandoned by its sender: never written.
        waiting = asyncio.ensure_future(messages.send(caller(tenant, "alice"), blocked, "waits", "w1"))
        await wait_for_lock_waiter(pool, 1)
        abandoned = asyncio.ensure_future(messages.send(caller(tenant, "alice"), blocked, "abandoned", "x1"))
        await asyncio.sleep(0)
        abandoned.cancel()
    assert (await waiting).created
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    assert messages.batcher.fallbacks == fallbacks + 1
    keys = {r["idempotency_key"] for r in await pool.fetch("SELECT idempotency_key FROM messages")}
    assert {"f1", "w1"} <= keys and not keys & {"s1", "x1"}
    assert await stored_seqs(pool, blocked) == [1, 2]


async def test_a_lone_send_raced_by_another_writer_is_retried_and_finds_the_stored_message(
    client: TestClient, node: Node, tenant: Tenant
):
    cid = await group(client, tenant, "alice", "bob")
    messages = node.chat.messages
    await warm(messages, tenant, cid)
    pool = node.db.pool
    async with another_node_storing(pool, cid, "alice", "alone") as seq:
        send = asyncio.ensure_future(messages.send(caller(tenant, "alice"), cid, "raced", "alone"))
        await wait_for_lock_waiter(pool, 1)
    result = await send
    assert not result.created and result.message.seq == seq
    assert await stored_seqs(pool, cid) == [1, 2]


async def test_a_rooms_participant_joins_its_chat_on_the_first_send_and_the_operator_sends_as_a_bot(
    client: TestClient, node: Node, tenant: Tenant
):
    resp = await client.post("/api/v1/rooms", json={"name": "standup"}, headers=tenant.admin)
    assert resp.status == 201, await resp.text()
    room = await resp.json()
    conversation = await node.chat.conversations.for_room(
        uuid.UUID(tenant.instance_id), uuid.UUID(room["id"]), "standup"
    )
    messages = node.chat.messages
    participant = ChatCaller(uuid.UUID(tenant.instance_id), "zed", room="standup")
    first = await messages.send(participant, conversation.id, "hi room", "z1")  # not a member before it
    assert first.created and first.message.seq == 1
    assert "zed" in await node.chat.conversations.member_identities(conversation.id)
    elsewhere = ChatCaller(uuid.UUID(tenant.instance_id), "yan", room="another-room")
    with pytest.raises(ApiError) as refused:
        await messages.send(elsewhere, conversation.id, "let me in", "y1")
    assert refused.value.code == "not_a_member"
    operator = ChatCaller(None, None, admin=True)
    bot = await messages.send(operator, conversation.id, "beep", "b1", sender="bot")
    assert (bot.created, bot.message.sender, bot.message.seq) == (True, "bot", 2)
    with pytest.raises(ApiError) as missing:
        await messages.send(operator, uuid.uuid4(), "beep", "b2", sender="bot")
    assert missing.value.code == "conversation_not_found"


async def test_a_conversation_waiting_for_its_lock_holds_up_no_other_lane(
    client: TestClient, node: Node, tenant: Tenant
):
    """Writers run in lanes: while one conversation's statement waits (here for a row lock another
    transaction holds), sends to a conversation of another lane are committed and acknowledged."""
    messages = node.chat.messages
    assert len(messages.batcher.lanes) > 1
    blocked = await group(client, tenant, "alice", "bob")
    free = await group_in_lane_of(client, tenant, messages, blocked, same=False)
    await warm(messages, tenant, blocked)
    await warm(messages, tenant, free)
    pool = node.db.pool
    async with conversation_locked(pool, blocked):
        stuck = asyncio.ensure_future(messages.send(caller(tenant, "alice"), blocked, "waits", "l1"))
        await wait_for_lock_waiter(pool, 1)
        passed = [await messages.send(caller(tenant, "bob"), free, f"meanwhile {n}", f"l2-{n}") for n in range(3)]
        assert [r.message.seq for r in passed] == [2, 3, 4] and not stuck.done()
    assert (await stuck).message.seq == 2


async def in_flight(lane, count: int) -> int:  # type: ignore[no-untyped-def]
    """Sends the lane is writing or has queued, once there are ``count`` (or after 10 s, however many)."""
    for _ in range(1000):
        if len(lane.writing) + len(lane.queue) >= count:
            break
        await asyncio.sleep(0.01)
    return len(lane.writing) + len(lane.queue)


async def test_a_socket_does_not_wait_for_one_send_to_commit_before_the_next(
    node: Node, client: TestClient, tenant: Tenant, connect
):
    """Sends of one socket wait for their commits together (the chat session pipelines them), are
    numbered in the order the socket sent them, and each gets its own ack or error by request id."""
    cid = await conversation_of(client, tenant, "alice", "bob")
    other = await conversation_of(client, tenant, "carol", "dave")  # alice is not a member
    alice = await connect(tenant, "alice")
    await alice.request({"type": "chat_send", "conversation_id": cid, "content": "warm", "idempotency_key": "p0"})
    lane = node.chat.messages.batcher.lane_of(uuid.UUID(cid))
    pool = node.db.pool
    async with conversation_locked(pool, cid):
        for n in range(1, 6):
            await alice.ws.send_json(
                {
                    "type": "chat_send",
                    "conversation_id": cid,
                    "content": f"p{n}",
                    "idempotency_key": f"p{n}",
                    "id": f"s{n}",
                }
            )
        await alice.ws.send_json(
            {"type": "chat_send", "conversation_id": other, "content": "not mine", "idempotency_key": "px", "id": "sx"}
        )
        await wait_for_lock_waiter(pool, 1)  # a statement waits for the lock, with all five in it or queued
        assert await in_flight(lane, 5) >= 5  # (six when the refused send is in this lane too)
        assert not [e for e in alice.events if str(e.get("id", "")).startswith("s")]
    acks = [await alice.wait(lambda e, n=n: e.get("id") == f"s{n}") for n in range(1, 6)]
    assert [a["seq"] for a in acks] == [2, 3, 4, 5, 6]  # the socket's order
    refused = await alice.wait(lambda e: e.get("id") == "sx")
    assert (refused["type"], refused["code"]) == ("error", "not_a_member")
    after = await alice.request({"type": "chat_send", "conversation_id": cid, "content": "p7", "idempotency_key": "p7"})
    assert after["seq"] == 7


async def test_a_socket_stops_reading_when_too_many_of_its_sends_wait(
    node: Node, client: TestClient, tenant: Tenant, connect, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(chat_socket, "MAX_SENDS_IN_FLIGHT", 2)
    cid = await conversation_of(client, tenant, "alice", "bob")
    alice = await connect(tenant, "alice")
    await alice.request({"type": "chat_send", "conversation_id": cid, "content": "warm", "idempotency_key": "b0"})
    lane = node.chat.messages.batcher.lane_of(uuid.UUID(cid))
    pool = node.db.pool
    async with conversation_locked(pool, cid):
        for n in range(1, 5):
            await alice.ws.send_json(
                {
                    "type": "chat_send",
                    "conversation_id": cid,
                    "content": f"b{n}",
                    "idempotency_key": f"b{n}",
                    "id": f"b{n}",
                }
            )
        await wait_for_lock_waiter(pool, 1)
        assert await in_flight(lane, 2) == 2
        await asyncio.sleep(0.3)  # time for the socket to read on, if it did
        assert await in_flight(lane, 2) == 2  # b1 and b2 wait for the commit; b3 and b4 are not read yet
    acks = [await alice.wait(lambda e, n=n: e.get("id") == f"b{n}") for n in range(1, 5)]
    assert [a["seq"] for a in acks] == [2, 3, 4, 5]


async def test_a_pipelined_send_that_fails_inside_the_server_gets_internal_error_and_the_socket_lives_on(
    node: Node, client: TestClient, tenant: Tenant, connect
):
    cid = await conversation_of(client, tenant, "alice", "bob")
    alice = await connect(tenant, "alice")
    gone = await connect(tenant, "alice")  # a second device of alice's that leaves before its answer
    await alice.request({"type": "chat_send", "conversation_id": cid, "content": "warm", "idempotency_key": "i0"})
    lane = node.chat.messages.batcher.lane_of(uuid.UUID(cid))
    pool = node.db.pool
    async with conversation_locked(pool, cid):
        await alice.ws.send_json(
            {"type": "chat_send", "conversation_id": cid, "content": "doomed", "idempotency_key": "i1", "id": "doomed"}
        )
        await gone.ws.send_json(
            {
                "type": "chat_send",
                "conversation_id": cid,
                "content": "unanswered",
                "idempotency_key": "i2",
                "id": "unanswered",
            }
        )
        await wait_for_lock_waiter(pool, 1)
        assert await in_flight(lane, 2) == 2
        await gone.close()
        await asyncio.sleep(0.2)  # the server notices the closed socket
        assert lane.task is not None
        lane.task.cancel()  # the writer stops under both sends: an error nobody expected
        refused = await alice.wait(lambda e: e.get("id") == "doomed")
        assert (refused["type"], refused["code"]) == ("error", "internal_error")
    after = await alice.request(
        {"type": "chat_send", "conversation_id": cid, "content": "again", "idempotency_key": "i1"}
    )
    assert (after["type"], after["seq"], after["duplicate"]) == ("chat_ack", 2, False)  # the retry is stored once


async def test_a_rooms_participant_joins_its_chat_on_the_first_send_over_the_socket(
    client: TestClient, node: Node, tenant: Tenant, connect
):
    """The pipelined path's one coroutine: the first send of a room's participant (authenticated with
    `auth`, so not a member yet) joins the room's chat, is written again and acknowledged."""
    resp = await client.post("/api/v1/rooms", json={"name": "retro"}, headers=tenant.admin)
    assert resp.status == 201, await resp.text()
    room = await resp.json()
    conversation = await node.chat.conversations.for_room(uuid.UUID(tenant.instance_id), uuid.UUID(room["id"]), "retro")
    zed = await connect()
    authed = await zed.request({"type": "auth", "token": token(tenant, "zed", room_join=True, room="retro")})
    assert authed["type"] == "authenticated", authed
    ack = await zed.request(
        {"type": "chat_send", "conversation_id": str(conversation.id), "content": "hi", "idempotency_key": "z1"}
    )
    assert (ack["type"], ack["seq"]) == ("chat_ack", 1)
    assert "zed" in await node.chat.conversations.member_identities(conversation.id)
    outsider = await connect()
    await outsider.request({"type": "auth", "token": token(tenant, "yan", room_join=True, room="other")})
    refused = await outsider.request(
        {"type": "chat_send", "conversation_id": str(conversation.id), "content": "let me in", "idempotency_key": "y1"}
    )
    assert (refused["type"], refused["code"]) == ("error", "not_a_member")
