"""The bot benchmark's users: each in a ``bot`` conversation with the bot, talking over its ``/rtc`` socket.

A user sends a chat message (``chat_send``, with an idempotency key) and waits for the
bot's next chat message in that conversation: the time between the two is one reply's
latency. Every reply is checked against what the dialog must answer, and a reply that
comes when none is awaited is counted as an extra (a doubled reply): the benchmark
measures a bot that answers correctly, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.lib.errors import BenchError
from bench.lib.websocket import RawWebSocket

BOT = "gb"  # the bot's identity: a member of every user's conversation with the role ``bot``
GREETING = "Hello! Send me a number."
DIALOG = f"""TALK "{GREETING}"
DO
  HEAR n AS INTEGER
  TALK "Twice ${{n}} is ${{n * 2}}."
LOOP
"""


def answer_to(n: int) -> str:
    """What the dialog says to the number ``n``."""
    return f"Twice {n} is {n * 2}."


@dataclass
class Latencies:
    """Send-to-reply times in µs: the first message (it starts the dialog, which runs to its HEAR) and the
    answers to that HEAR (the run is restored from PostgreSQL, resumed, and saved at the next HEAR)."""

    start_us: list[int] = field(default_factory=list)
    hear_us: list[int] = field(default_factory=list)


class BotUser:
    """One person, one socket, one conversation with the bot; one message in flight at a time."""

    def __init__(self, identity: str, token: str, conversation: str) -> None:
        self.identity = identity
        self.token = token
        self.conversation = conversation
        self.raw: RawWebSocket | None = None
        self.extra_replies = 0  # bot messages that came while none was awaited
        self.closed = False
        self._authenticated: asyncio.Future[dict[str, Any]] | None = None
        self._reply: asyncio.Future[tuple[str, float]] | None = None
        self._sent = 0

    async def connect(self, url: str) -> None:
        self._authenticated = asyncio.get_running_loop().create_future()
        self.raw = await RawWebSocket.connect(url, self._on_text, self._on_closed)
        self.raw.send_text(json.dumps({"type": "auth", "token": self.token, "id": "auth"}))
        reply = await asyncio.wait_for(self._authenticated, 30)
        if reply.get("type") != "authenticated":
            raise BenchError(f"auth as {self.identity} refused: {reply}")

    def _on_closed(self) -> None:
        self.closed = True
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(BenchError(f"{self.identity}'s socket closed while waiting for the bot"))

    def _on_text(self, data: bytes | str) -> None:
        now = time.monotonic()
        event = orjson.loads(data)
        kind = event.get("type")
        if kind == "chat_message":
            message = event["message"]
            if message["conversation_id"] != self.conversation or message["sender"] != BOT:
                return  # the user's own message, echoed for their other devices
            if self._reply is None or self._reply.done():
                self.extra_replies += 1
            else:
                self._reply.set_result((message["content"], now))
        elif kind in ("authenticated", "error") and self._authenticated and not self._authenticated.done():
            self._authenticated.set_result(event)
        elif kind == "error" and self._reply is not None and not self._reply.done():
            self._reply.set_exception(BenchError(f"{self.identity}'s message was refused: {event}"))

    async def exchange(self, text: str, expected: str, patience: float) -> int:
        """Send ``text``, wait for the bot's reply and check it is ``expected``: the latency in µs."""
        assert self.raw is not None
        self._sent += 1
        key = f"{self.identity}-{self._sent}"
        self._reply = asyncio.get_running_loop().create_future()
        frame = {
            "type": "chat_send",
            "id": key,
            "conversation_id": self.conversation,
            "content": text,
            "idempotency_key": key,
        }
        sent_at = time.monotonic()
        self.raw.send_text(json.dumps(frame))
        try:
            content, at = await asyncio.wait_for(self._reply, patience)
        except TimeoutError:
            raise BenchError(f"{self.identity} waited {patience:.0f} s for the bot's answer to {text!r}") from None
        if content != expected:
            raise BenchError(f"{self.identity} said {text!r}; the bot answered {content!r}, not {expected!r}")
        return round((at - sent_at) * 1e6)

    async def converse(
        self, index: int, rounds: int, patience: float, into: Latencies, delay: float = 0.0, think: float = 0.0
    ) -> None:
        """The whole conversation, after ``delay`` s: hello (the start dialog), then ``rounds`` numbers answered
        at the HEAR, each ``think`` s after the bot's last reply (a person reading and typing)."""
        await asyncio.sleep(delay)
        into.start_us.append(await self.exchange("hello", GREETING, patience))
        for k in range(1, rounds + 1):
            await asyncio.sleep(think)
            n = index * 100 + k
            into.hear_us.append(await self.exchange(str(n), answer_to(n), patience))

    async def close(self) -> None:
        if self.raw is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.raw.close(), 5)
