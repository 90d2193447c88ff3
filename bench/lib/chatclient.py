"""The chat benchmark's clients: sockets that authenticate, send open-loop and count every ack and delivery.

They run in worker processes (``python -m bench.chat --worker N``); each holds some of the
run's sockets. Send times travel in the message content (CLOCK_MONOTONIC, shared by the
processes of one machine), so any member's process can time a delivery. Every event is
counted and checked, none kept: the count check at the end compares them with the database.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson  # the clients' parser: 2 us an event instead of json.loads' 7

from bench.lib.errors import BenchError
from bench.lib.proc import cpu_seconds
from bench.lib.websocket import RawWebSocket
from bench.lib.workers import commands, reply

TICK = 0.002  # the senders' pacing tick (s)


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
        frame = (
            f'{{"type":"chat_send","id":"{key}","conversation_id":"{self.conversation}",'
            f'"content":"{content}","idempotency_key":"{key}"}}'
        )
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
    """One worker process's clients and its tallies: what it sent, what was acked, per step and in all."""

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
        return {
            "sent": self.sent_total,
            "acked": self.acked_total,
            "errors": self.errors_total,
            "pending": len(self.pending),
            "received": sum(c.received for c in self.clients),
            "sending": self.sender is not None and not self.sender.done(),
            "closed_sockets": self.closed_sockets,
            "acked_by_conversation": dict(self.acked_by_conversation),
        }

    def report(self) -> dict[str, Any]:
        step = self.step
        assert step is not None
        return {
            "sent": step.sent,
            "sent_window": step.sent_window,
            "acked": step.acked,
            "acked_window": step.acked_window,
            "errors": dict(step.errors),
            "deliveries_window": step.deliveries_window,
            "own_window": step.own_window,
            "ack_us": step.ack_us,
            "delivery_us": step.delivery_us,
            "own_us": step.own_us,
            "lag_max": step.lag_max,
            "send_behind_max": step.send_behind_max,
            "slot_max_us": step.slot_max_us,
            "cpu": cpu_seconds(os.getpid()),
            "t": time.monotonic(),
        }

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
        return {
            "clients": len(self.clients),
            "complete": complete,
            "missing": missing,
            "extra": extra,
            "duplicates": duplicates,
            "foreign": foreign,
            "examples": examples,
            "received": sum(c.received for c in self.clients),
            "own_received": sum(c.own_received for c in self.clients),
            "sent": self.sent_total,
            "acked": self.acked_total,
            "errors": self.errors_total,
            "duplicate_acks": self.duplicate_acks,
            "pending": len(self.pending),
            "acked_by_conversation": dict(self.acked_by_conversation),
            "other_events": dict(sum((c.other_events for c in self.clients), collections.Counter())),
        }


# --- the orchestrator's side: who is in which conversation -------------------------------


@dataclass
class Plan:
    """Who is in which conversation and which worker holds whose socket."""

    conversations: dict[str, list[str]]  # conversation id -> member identities
    clients: list[dict[str, str]]  # identity, token, conversation


async def create_conversations(
    session: aiohttp.ClientSession, url: str, key: str, secret: str, clients: int, members: int
) -> Plan:
    """One ``group`` conversation per ``members`` clients over REST, created by its first member: the plan."""
    from gbmedia.tenancy.tokens import Grants, mint_token

    groups = [
        [f"c{g:03d}-m{i:02d}" for i in range(g * members, min(clients, (g + 1) * members))]
        for g in range(math.ceil(clients / members))
    ]
    tokens = {
        identity: mint_token(key, secret, identity, Grants(), name=identity) for group in groups for identity in group
    }
    gate = asyncio.Semaphore(8)
    conversations: dict[str, list[str]] = {}

    async def create(group: list[str]) -> None:
        async with (
            gate,
            session.post(
                f"{url}/api/v1/conversations",
                json={"kind": "group", "members": group[1:], "title": group[0]},
                headers={"Authorization": f"Bearer {tokens[group[0]]}"},
            ) as resp,
        ):
            if resp.status != 201:
                raise BenchError(f"creating a conversation: HTTP {resp.status}: {await resp.text()}")
            body = await resp.json()
        got = sorted(m["identity"] for m in body["members"])
        if got != sorted(group):
            raise BenchError(f"conversation {body['id']} has members {got}, expected {sorted(group)}")
        conversations[body["id"]] = group

    await asyncio.gather(*(create(g) for g in groups))
    plan_clients = [
        {"identity": identity, "token": tokens[identity], "conversation": cid}
        for cid, group in conversations.items()
        for identity in group
    ]
    plan_clients.sort(key=lambda c: c["identity"])
    return Plan(conversations, plan_clients)


# --- the worker process -------------------------------------------------------------------


async def serve_clients(index: int) -> None:
    """A client worker process: JSON commands on stdin, one JSON reply line each on stdout.

    ``connect`` opens and authenticates its sockets; ``run`` starts one rate step's sends; ``progress``,
    ``report`` and ``verify`` answer what the orchestrator needs to drain, measure and count; ``close``."""
    state = WorkerState(index)
    watcher = asyncio.ensure_future(state.watch_lag())
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            async for command in commands(limit=1 << 24):
                cmd = command["cmd"]
                if cmd == "connect":
                    state.clients = [
                        ChatClient(state, c["identity"], c["token"], c["conversation"], command.get("client", "raw"))
                        for c in command["clients"]
                    ]
                    gate = asyncio.Semaphore(16)

                    async def connect(
                        client: ChatClient, url: str = command["url"], gate: asyncio.Semaphore = gate
                    ) -> None:
                        async with gate:
                            await client.connect(session, url)

                    results = await asyncio.gather(*(connect(c) for c in state.clients), return_exceptions=True)
                    # What the worker holds from now on is long-lived: keep it out of the collector's full
                    # passes, whose pauses would otherwise show up as delivery latency (as the server does).
                    gc.collect()
                    gc.freeze()
                    reply(
                        {
                            "connected": sum(r is None for r in results),
                            "errors": [repr(r) for r in results if r is not None][:5],
                        }
                    )
                elif cmd == "run":
                    step = StepStats(command["window_start"], command["window_end"])
                    state.step = step
                    state.sender = asyncio.ensure_future(
                        state.run(command["rate"], command["start_at"], step, command["step"])
                    )
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
