"""Socket frames and REST chat bodies built by hypothesis: the right fields with any JSON in them.

Mutated bytes (``test_fuzz.py``) rarely get past ``json.loads`` with a known ``type``;
these frames do, so the models' validation and chat's metadata handling see every
kind of value (huge integers, NaN, deep and wide nesting, control characters). The
property is the targets': a message, or the project's own error.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gbmedia.signaling.protocol import MESSAGE_TYPES
from tests.fuzz.targets import chat_body, socket_message

FIELDS = [
    "id",
    "token",
    "protocol",
    "auto_subscribe",
    "resume",
    "kind",
    "sdp",
    "tracks",
    "target",
    "candidate",
    "track_ids",
    "subscribe",
    "track_id",
    "muted",
    "paused",
    "quality",
    "width",
    "height",
    "conversation_id",
    "content",
    "idempotency_key",
    "metadata",
    "after_seq",
    "before_seq",
    "limit",
    "delivered_seq",
    "read_seq",
    "active",
    "status",
    "identities",
    "participant_id",
    "accept",
    "members",
    "title",
    "sender",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["0" * 36, "publisher", "camera", "high", "online", "TR_1", "v=0\r\n", "\x00", "\ud800"]),
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=40,
)
deep = st.integers(1, 60).map(lambda depth: json.loads("[" * depth + "]" * depth))


def frame(message: dict) -> bytes:
    return json.dumps(message, allow_nan=True).encode("utf-8", "surrogatepass")


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(
    kind=st.sampled_from([*MESSAGE_TYPES, "teleport"]),
    fields=st.dictionaries(st.sampled_from(FIELDS), values | deep, max_size=6),
)
def test_socket_frames_with_any_values(kind: str, fields: dict):
    socket_message(frame({**fields, "type": kind}))


@settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(fields=st.dictionaries(st.sampled_from(FIELDS), values | deep, max_size=6))
def test_chat_bodies_with_any_values(fields: dict):
    chat_body(frame(fields))
