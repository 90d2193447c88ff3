"""The chat domain as the node holds it: conversations, messages and the send rate limit."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from gbmedia.errors import ApiError
from gbmedia.messaging.conversations import Conversations
from gbmedia.messaging.group_commit import DEFAULT_LANES
from gbmedia.messaging.messages import Messages
from gbmedia.messaging.models import ChatCaller
from gbmedia.ratelimit import RateLimiter
from gbmedia.tenancy.instances import Instances


@dataclass
class Chat:
    conversations: Conversations
    messages: Messages
    send_limiter: RateLimiter

    @classmethod
    def create(
        cls,
        pool: asyncpg.Pool,
        instances: Instances,
        send_limiter: RateLimiter,
        *,
        max_content_bytes: int,
        batch_pool: asyncpg.Pool | None = None,
        writers: int = DEFAULT_LANES,
    ) -> Chat:
        conversations = Conversations(pool, instances)
        messages = Messages(
            pool, conversations, max_content_bytes=max_content_bytes, batch_pool=batch_pool, writers=writers
        )
        return cls(conversations, messages, send_limiter)

    async def check_rate(self, caller: ChatCaller, sender: str | None = None) -> None:
        """429 ``chat_rate_limited`` past the per-sender token bucket (shared through Redis)."""
        who = sender or caller.identity or "operator"
        decision = await self.send_limiter.take(f"chat:{caller.instance_id}:{who}")
        if not decision.allowed:
            retry = max(1, round(decision.retry_after + 0.5))
            raise ApiError(
                429,
                "chat_rate_limited",
                f"too many messages; retry in {retry} s",
                {"retry_after": round(decision.retry_after, 3)},
            )
