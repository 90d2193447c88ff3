"""The promise chat makes: a message a user saw acknowledged is never lost, and a retry never duplicates.

A real ``gbmedia serve`` process on the test PostgreSQL (not the embedded database:
the database must outlive the server) takes a pipelined burst of sends from alice
and is SIGKILLed mid-burst. After a restart on the same database: every message
alice saw acknowledged is stored with the seq of its ack, seqs have no gaps,
retrying everything unacknowledged with the same idempotency keys stores each
message exactly once, and bob catches up on all of it with ``chat_history``.
A few acks are treated as lost on the way (the server stored and answered them,
alice never saw them), so a retry of a stored-but-unacknowledged message, which
must come back ``duplicate`` with its original seq, happens on every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from gbmedia.tenancy.tokens import Grants, mint_token
from tests import processes
from tests.helpers import OPERATOR, bearer
from tests.processes import ServerProcess

TOTAL = 300  # messages alice means to send
KILL_AFTER = 100  # acks received when the server is killed
# Acks alice "never gets" (as if lost on the way): the server stored and answered them, she retries them.
LOST_IN_TRANSIT = (40, 77)
WINDOW = 20  # sends in flight at once
REPLY_TIMEOUT = 60.0
TEST_TIMEOUT = 300.0  # the whole test; it normally takes a few seconds


def key(n: int) -> str:
    return f"k{n}"


def content(n: int) -> str:
    return f"message {n} from alice"


class Socket:
    """A /rtc socket: replies matched to requests by id (futures), pushed chat messages recorded."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.pushed: list[dict[str, Any]] = []
        self.closed = asyncio.Event()
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._next = 0
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, base_url: str, token: str) -> Socket:
        sock = cls(await http.ws_connect(base_url + "/rtc", autoping=True))
        reply = await sock.request({"type": "auth", "token": token})
        assert reply["type"] == "authenticated", reply
        return sock

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                future = self._waiting.pop(str(data.get("id")), None) if "id" in data else None
                if future is not None:
                    if not future.done():
                        future.set_result(data)
                elif data.get("type") == "chat_message":
                    self.pushed.append(data["message"])
        finally:
            self.closed.set()
            waiting, self._waiting = self._waiting, {}
            for future in waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError("the socket closed before the reply"))

    async def send(self, message: dict[str, Any], rid: str | None = None) -> asyncio.Future[dict[str, Any]]:
        """Send without waiting; the future gets the reply, or ConnectionError when the socket drops."""
        if rid is None:
            self._next += 1
            rid = f"q{self._next}"
        if self.closed.is_set():
            raise ConnectionError("the socket is closed")
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        try:
            await self.ws.send_json({**message, "id": rid})
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            self._waiting.pop(rid, None)
            raise ConnectionError(f"send failed: {exc!r}") from exc
        return future

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        async with asyncio.timeout(REPLY_TIMEOUT):
            return await (await self.send(message))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


async def send_burst(
    sock: Socket, cid: str, numbers: list[int], *, tag: str, on_ack: Callable[[int], None] | None = None
) -> tuple[dict[int, dict[str, Any]], list[tuple[int, dict[str, Any]]], int]:
    """Send ``numbers`` pipelined (up to WINDOW unanswered) until done or the socket drops.

    Returns the acks that arrived (by message number), any error replies, and how
    many sends went out. ``on_ack(count)`` runs as each ack arrives.
    """
    acks: dict[int, dict[str, Any]] = {}
    errors: list[tuple[int, dict[str, Any]]] = []
    window = asyncio.Semaphore(WINDOW)
    futures: list[asyncio.Future[dict[str, Any]]] = []

    def answered(n: int, future: asyncio.Future[dict[str, Any]]) -> None:
        window.release()
        if future.cancelled() or future.exception() is not None:
            return  # no answer: the socket dropped with this one in flight
        reply = future.result()
        if reply.get("type") == "chat_ack":
            acks[n] = reply
            if on_ack is not None:
                on_ack(len(acks))
        else:
            errors.append((n, reply))

    for n in numbers:
        async with asyncio.timeout(REPLY_TIMEOUT):
            await window.acquire()
        if sock.closed.is_set():
            break
        message = {"type": "chat_send", "conversation_id": cid, "content": content(n), "idempotency_key": key(n)}
        try:
            future = await sock.send(message, rid=f"{tag}-{n}")
        except ConnectionError:
            break
        future.add_done_callback(partial(answered, n))
        futures.append(future)
    if futures:
        _, pending = await asyncio.wait(futures, timeout=REPLY_TIMEOUT)
        assert not pending, f"{len(pending)} sends neither answered nor failed within {REPLY_TIMEOUT}s"
    await asyncio.sleep(0)  # let the last done-callbacks run
    return acks, errors, len(futures)


async def catch_up(sock: Socket, cid: str, after_seq: int = 0, limit: int = 40) -> tuple[list[dict[str, Any]], int]:
    """Page forwards with chat_history from ``after_seq`` until has_more is false: (messages, pages)."""
    messages: list[dict[str, Any]] = []
    pages = 0
    while True:
        page = await sock.request(
            {"type": "chat_history", "conversation_id": cid, "after_seq": after_seq, "limit": limit}
        )
        assert page["type"] == "chat_history", page
        pages += 1
        messages += page["messages"]
        if page["messages"]:
            after_seq = page["messages"][-1]["seq"]
        if not page["has_more"]:
            return messages, pages
        assert page["messages"], f"has_more with an empty page: {page}"


async def stored_messages(database_url: str, cid: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(
            """SELECT id, seq, sender_id, content, idempotency_key FROM messages
                WHERE conversation_id = $1 ORDER BY seq, id""",
            uuid.UUID(cid),
        )
    finally:
        await conn.close()


async def last_seq(database_url: str, cid: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT last_seq FROM conversations WHERE id = $1", uuid.UUID(cid))
    finally:
        await conn.close()


def check_consistent(rows: list[asyncpg.Record], acks: dict[int, dict[str, Any]], when: str) -> dict[str, Any]:
    """Every ack is stored with its seq and id; seqs are 1..N; no key twice. Returns rows by key."""
    seqs = [r["seq"] for r in rows]
    assert seqs == list(range(1, len(rows) + 1)), f"{when}: seqs have gaps or duplicates: {seqs}"
    keys = [r["idempotency_key"] for r in rows]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    assert not twice, f"{when}: idempotency keys stored more than once: {twice}"
    by_key = {r["idempotency_key"]: r for r in rows}
    unknown = sorted(set(by_key) - {key(n) for n in range(TOTAL)})
    assert not unknown, f"{when}: keys that were never sent are stored: {unknown}"
    lost = {key(n): a["seq"] for n, a in acks.items() if key(n) not in by_key}
    assert not lost, f"{when}: ACKNOWLEDGED MESSAGES LOST (key: acked seq): {lost}; stored seqs 1..{len(rows)}"
    for n, ack in acks.items():
        row = by_key[key(n)]
        assert (row["seq"], str(row["id"])) == (ack["seq"], ack["message_id"]), (
            f"{when}: {key(n)} was acked as seq {ack['seq']} id {ack['message_id']}, "
            f"stored as seq {row['seq']} id {row['id']}"
        )
        assert (row["content"], row["sender_id"]) == (content(n), "alice"), (when, dict(row))
    return by_key


async def test_a_message_acknowledged_before_a_crash_is_never_lost_and_retries_never_duplicate(
    tmp_path: Path, database_url: str
):
    env = processes.node_env(tmp_path, database_url)
    first = ServerProcess(env, tmp_path, "first")
    second = ServerProcess(env, tmp_path, "second")  # the same environment: same database, same secret key
    sockets: list[Socket] = []
    figures: dict[str, Any] = {}
    try:
        async with asyncio.timeout(TEST_TIMEOUT), aiohttp.ClientSession() as http:
            url = await first.start()

            # A tenant and a group conversation of alice and bob, over REST.
            async with http.post(
                url + "/api/v1/customers", json={"name": "crash", "tier": "starter"}, headers=OPERATOR
            ) as resp:
                assert resp.status == 201, await resp.text()
                customer = await resp.json()
            async with http.post(
                url + f"/api/v1/customers/{customer['id']}/instances", json={"name": "crash-main"}, headers=OPERATOR
            ) as resp:
                assert resp.status == 201, await resp.text()
                credentials = (await resp.json())["credentials"]

            def token(identity: str) -> str:
                return mint_token(credentials["key"], credentials["secret"], identity, Grants())

            async with http.post(
                url + "/api/v1/conversations",
                json={"kind": "group", "members": ["bob"], "title": "crash test"},
                headers=bearer(token("alice")),
            ) as resp:
                assert resp.status == 201, await resp.text()
                cid = (await resp.json())["id"]

            # alice's burst; the server dies the moment KILL_AFTER acks have arrived.
            alice = await Socket.open(http, url, token("alice"))
            sockets.append(alice)
            killed: list[int] = []

            def kill_at(count: int) -> None:
                if count >= KILL_AFTER and not killed:
                    first.kill()
                    killed.append(count)

            answered, errors, sent = await send_burst(alice, cid, list(range(TOTAL)), tag="a", on_ack=kill_at)
            assert not errors, f"sends refused before the kill: {errors[:5]}\n{first.stderr_tail()}"
            assert killed, (
                f"the burst ended ({len(answered)} acks of {sent} sends) before the kill point\n{first.stderr_tail()}"
            )
            async with asyncio.timeout(REPLY_TIMEOUT):
                await alice.closed.wait()  # the socket dropped with the server
            assert await first.exited() == -signal.SIGKILL
            assert len(answered) < TOTAL, "every send was acked before the socket dropped: nothing was in flight"
            assert all(a["duplicate"] is False for a in answered.values()), answered
            assert len({a["seq"] for a in answered.values()}) == len(answered), "two acks carry the same seq"
            # What alice saw as sent: the acks up to the kill (in arrival order), less the ones "lost on the
            # way". Acks still arriving after the kill were sent too: the server must have stored those as
            # well, but alice treats them as unseen and retries them.
            arrival = list(answered)
            acked = {n: answered[n] for n in arrival[:KILL_AFTER] if n not in LOST_IN_TRANSIT}
            dropped = [n for n in LOST_IN_TRANSIT if n in answered]
            figures.update(
                sent_before_kill=sent,
                acks_received=len(answered),
                acked_seen=len(acked),
                acks_dropped=len(dropped),
                acks_after_kill=len(arrival) - KILL_AFTER,
            )

            # The database, with the server dead: every ack is there, with its seq.
            rows = await stored_messages(database_url, cid)
            by_key = check_consistent(rows, answered, "after the kill")
            assert await last_seq(database_url, cid) == len(rows)
            stored_unacked = sorted(n for n in range(TOTAL) if key(n) in by_key and n not in acked)
            assert set(dropped) <= set(stored_unacked)
            figures.update(stored_after_kill=len(rows), stored_but_unacked=len(stored_unacked))

            # Restart on the same database.
            url = await second.start()
            bob = await Socket.open(http, url, token("bob"))
            sockets.append(bob)
            seen_by_bob, pages = await catch_up(bob, cid)
            assert [m["seq"] for m in seen_by_bob] == list(range(1, len(rows) + 1))
            assert [m["idempotency_key"] for m in seen_by_bob] == [r["idempotency_key"] for r in rows]
            assert pages >= 2, "the catch-up should have needed several pages"
            for n, ack in answered.items():
                message = seen_by_bob[ack["seq"] - 1]
                assert (message["idempotency_key"], message["content"], message["id"]) == (
                    key(n),
                    content(n),
                    ack["message_id"],
                ), message

            # alice reconnects and retries everything she has no ack for, plus a few she has (a
            # client unsure whether its ack arrived): the same keys, the same content.
            alice = await Socket.open(http, url, token("alice"))
            sockets.append(alice)
            unacked = [n for n in range(TOTAL) if n not in acked]
            resent_acked = sorted(acked)[-3:] + sorted(acked)[:2]
            retried, errors, sent = await send_burst(alice, cid, unacked + resent_acked, tag="r")
            assert not errors, f"retries refused: {errors[:5]}\n{second.stderr_tail()}"
            missing = sorted(set(unacked + resent_acked) - set(retried))
            assert not missing and sent == len(unacked) + len(resent_acked), (
                f"retries without an ack: {missing[:10]} (sent {sent})\n{second.stderr_tail()}"
            )
            for n in stored_unacked:  # stored before the crash, its ack lost: the original comes back
                assert (retried[n]["duplicate"], retried[n]["seq"], retried[n]["message_id"]) == (
                    True,
                    by_key[key(n)]["seq"],
                    str(by_key[key(n)]["id"]),
                ), retried[n]
            for n in resent_acked:
                assert (retried[n]["duplicate"], retried[n]["seq"], retried[n]["message_id"]) == (
                    True,
                    acked[n]["seq"],
                    acked[n]["message_id"],
                ), retried[n]
            fresh = {n: a for n, a in retried.items() if key(n) not in by_key}
            assert all(a["duplicate"] is False for a in fresh.values()), {
                n: a for n, a in fresh.items() if a["duplicate"] is not False
            }
            assert sorted(a["seq"] for a in fresh.values()) == list(range(len(rows) + 1, TOTAL + 1))
            figures.update(
                retried=len(unacked) + len(resent_acked),
                duplicates=sum(a["duplicate"] for a in retried.values()),
                stored_by_retry=len(fresh),
            )

            # Exactly k0..k299, each once, each with the seq of its (first) ack.
            final = await stored_messages(database_url, cid)
            final_by_key = check_consistent(final, {**answered, **fresh}, "after the retries")
            assert set(final_by_key) == {key(n) for n in range(TOTAL)} and len(final) == TOTAL
            for n in stored_unacked:
                assert final_by_key[key(n)]["seq"] == by_key[key(n)]["seq"]
            assert await last_seq(database_url, cid) == TOTAL
            figures["stored_final"] = len(final)

            # bob catches up from where he was: all of it, in seq order, nothing twice.
            rest, _ = await catch_up(bob, cid, after_seq=seen_by_bob[-1]["seq"] if seen_by_bob else 0)
            everything = seen_by_bob + rest
            assert [m["seq"] for m in everything] == list(range(1, TOTAL + 1))
            assert [m["idempotency_key"] for m in everything] == [r["idempotency_key"] for r in final]
            assert all(m["content"] == content(int(m["idempotency_key"][1:])) for m in everything)
            pushed = [m["seq"] for m in bob.pushed]
            assert len(pushed) == len(set(pushed)), "a retry was delivered live a second time"

            await second.stop()
            print(f"crash test figures: {figures}")
    except BaseException:
        print(f"crash test figures so far: {figures}")
        print(
            f"--- first server stderr ---\n{first.stderr_tail()}\n--- second server stderr ---\n{second.stderr_tail()}"
        )
        raise
    finally:
        for sock in sockets:
            await sock.close()
        await first.ensure_dead()
        await second.ensure_dead()
