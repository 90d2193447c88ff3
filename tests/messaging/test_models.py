"""Chat's own check of metadata, for callers that build it in code rather than parse it from JSON."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from gbmedia.errors import ApiError
from gbmedia.messaging.models import ChatCaller, check_metadata
from tests.helpers import Tenant


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def test_metadata_past_the_depth_limit_is_refused():
    check_metadata(None)
    check_metadata(deep(32))
    with pytest.raises(ApiError) as refused:
        check_metadata(deep(33))
    error = refused.value
    assert (error.status, error.code, error.details) == (400, "json_too_deep", {"max_depth": 32})


async def test_sends_and_conversations_built_in_code_are_checked(node, tenant: Tenant):
    """A bot hands chat a dict: 600 levels went to json.dumps, which recursed (RecursionError)."""
    caller = ChatCaller(uuid.UUID(tenant.instance_id), "bot")
    with pytest.raises(ApiError) as refused:
        await node.chat.messages.prepare(caller, uuid.uuid4(), "hi", "k1", metadata=deep(600))
    assert refused.value.code == "json_too_deep"
    with pytest.raises(ApiError) as refused:
        await node.chat.conversations.create(caller, "group", ["alice"], metadata=deep(600))
    assert refused.value.code == "json_too_deep"
