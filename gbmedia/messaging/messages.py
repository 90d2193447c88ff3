"""Messages: send (acknowledged only after the commit, idempotent), history, edits,
tombstones, receipts and search.

A send takes the conversation's next sequence number under the conversation row's
lock, inserts the message and its outbox event in the same transaction, and only
then answers: a message the client saw acknowledged survives any crash after that.
Sends are group-committed (:mod:`gbmedia.messaging.group_commit`): those waiting at
one moment, from any socket and conversation, share one statement and one commit.
The client's idempotency key makes a retry return the stored message instead of a
second copy, whether the first attempt's answer was lost or is still in flight.
Listeners (the real-time delivery) hear of a change after its commit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from gbmedia import outbox
from gbmedia.errors import ApiError, bad_request, forbidden, not_found
from gbmedia.messaging.conversations import Conversations
from gbmedia.messaging.group_commit import DEFAULT_LANES, SendBatcher, SendOutcome, SendRequest
from gbmedia.messaging.models import (
    MESSAGE_KINDS,
    ChatCaller,
    Conversation,
    Message,
    Receipt,
    SendResult,
    check_metadata,
)
from gbmedia.tenancy.sharding import shard_key_for

log = logging.getLogger(__name__)

_MESSAGE_COLUMNS = (
    "id, conversation_id, seq, sender_id AS sender, kind, content, metadata, idempotency_key, "
    "created_at, edited_at, deleted_at"
)
IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
DEFAULT_MAX_CONTENT_BYTES = 16 * 1024
# Instance locales whose language has a PostgreSQL text search configuration.
_TS_CONFIGS = {
    "en": "english",
    "pt": "portuguese",
    "es": "spanish",
    "fr": "french",
    "de": "german",
    "it": "italian",
    "nl": "dutch",
    "ru": "russian",
    "sv": "swedish",
    "da": "danish",
    "fi": "finnish",
    "no": "norwegian",
    "nb": "norwegian",
    "hu": "hungarian",
    "ro": "romanian",
    "tr": "turkish",
}

ChangeListener = Callable[[str, dict[str, Any], Conversation, list[str] | None], Awaitable[None]]
SendAnswer = Callable[[SendResult | BaseException], None]  # a send's result, or the error it is for its sender
TS_CONFIG_CACHE_SECONDS = 30.0


def _cancel_with(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    """Once ``source`` is cancelled, cancel ``target`` too (nothing when it is done already)."""
    source.add_done_callback(lambda done: target.cancel() if done.cancelled() else None)


def ts_config_for(locale: str | None) -> str:
    """Text search configuration for an instance locale (``pt-BR`` → portuguese)."""
    if not locale:
        return "simple"
    return _TS_CONFIGS.get(locale.split("-")[0].split("_")[0].lower(), "simple")


def message_from(row: asyncpg.Record) -> Message:
    return Message(**dict(row))


def message_event(message: Message) -> dict[str, Any]:
    return {
        "id": str(message.id),
        "conversation_id": str(message.conversation_id),
        "seq": message.seq,
        "sender": message.sender,
        "kind": message.kind,
        "content": message.content,
        "metadata": message.metadata,
        "idempotency_key": message.idempotency_key,
        "created_at": message.created_at.isoformat(),
        "edited_at": message.edited_at.isoformat() if message.edited_at else None,
        "deleted_at": message.deleted_at.isoformat() if message.deleted_at else None,
    }


class Messages:
    def __init__(
        self,
        pool: asyncpg.Pool,
        conversations: Conversations,
        *,
        max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
        batch_pool: asyncpg.Pool | None = None,
        writers: int = DEFAULT_LANES,
    ) -> None:
        self.pool = pool
        self.conversations = conversations
        self.max_content_bytes = max_content_bytes
        self._listeners: list[ChangeListener] = []
        self._sent_listeners: list[Callable[[Conversation], None]] = []
        self._ts_configs: dict[uuid.UUID, tuple[str, float]] = {}
        self.batcher = SendBatcher(batch_pool or pool, self._committed, lanes=writers)  # Database.batch_pool: see there
        self._joining: set[asyncio.Task[None]] = set()  # first sends of room participants, joining the chat

    def on_sent(self, listener: Callable[[Conversation], None]) -> None:
        """``listener(conversation)``, synchronously, for each new message committed (usage metering)."""
        self._sent_listeners.append(listener)

    def on_change(self, listener: ChangeListener) -> None:
        """``listener(kind, event, conversation, members)`` after each committed change (``message`` or
        ``receipt``); ``members`` is the member list when the change already read it, else None."""
        self._listeners.append(listener)

    async def _changed(
        self, kind: str, event: dict[str, Any], conversation: Conversation, members: list[str] | None = None
    ) -> None:
        for listener in self._listeners:
            try:
                await listener(kind, event, conversation, members)
            except Exception:  # delivery is best effort; the stored message is what counts
                log.exception("chat change listener failed", extra={"kind": kind})

    # --- send ----------------------------------------------------------------------

    def _check_content(self, content: str) -> None:
        size = len(content.encode("utf-8"))
        if size > self.max_content_bytes:
            raise ApiError(
                413,
                "message_too_large",
                f"messages are at most {self.max_content_bytes} bytes of UTF-8 ({size} given)",
                {"max_bytes": self.max_content_bytes},
            )
        if not content.strip():
            raise bad_request("empty_message", "a message needs some content")
        if "\x00" in content:  # PostgreSQL text cannot hold it
            raise bad_request("invalid_content", "a message cannot contain the NUL character (U+0000)")

    async def send(
        self,
        caller: ChatCaller,
        conversation_id: uuid.UUID,
        content: str,
        idempotency_key: str,
        *,
        kind: str = "text",
        metadata: dict[str, Any] | None = None,
        sender: str | None = None,
    ) -> SendResult:
        request = await self.prepare(
            caller, conversation_id, content, idempotency_key, kind=kind, metadata=metadata, sender=sender
        )
        return await self.commit(caller, request)

    async def prepare(
        self,
        caller: ChatCaller,
        conversation_id: uuid.UUID,
        content: str,
        idempotency_key: str,
        *,
        kind: str = "text",
        metadata: dict[str, Any] | None = None,
        sender: str | None = None,
    ) -> SendRequest:
        """A send checked for everything but the conversation (size, kind, key, who may send as whom).

        Split from :meth:`commit` so a socket can check its sends one by one, in the
        order they came, and let them wait for their commits together.
        """
        if not isinstance(idempotency_key, str) or not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            raise bad_request(
                "invalid_idempotency_key", "idempotency_key is 1-128 letters, digits, '.', '_', ':' or '-'"
            )
        if kind not in MESSAGE_KINDS:
            raise bad_request("invalid_kind", f"kind is one of {MESSAGE_KINDS}")
        self._check_content(content)
        if sender is not None and not caller.admin:
            raise forbidden(
                "grant_missing", "only an administrator may send as another identity", grant="instance_admin"
            )
        author = sender or caller.identity
        if author is None:
            raise bad_request("sender_required", "the operator names the sender")
        check_metadata(metadata)
        encoded_metadata = json.dumps(metadata) if metadata else "{}"
        if "\\u0000" in encoded_metadata:  # nor can jsonb
            raise bad_request("invalid_content", "metadata cannot contain the NUL character (U+0000)")
        size = len(content.encode("utf-8")) + len(encoded_metadata)
        if size > outbox.MAX_PAYLOAD_BYTES - 4096:  # the outbox event must stay under the broker's limit
            raise ApiError(
                413,
                "message_too_large",
                "the message with its metadata is too large for the event stream",
                {"max_bytes": outbox.MAX_PAYLOAD_BYTES - 4096},
            )
        instance_id = caller.instance_id
        if instance_id is None:  # the operator: the conversation names the instance (and its language)
            instance_id = (await self.conversations.access(caller, conversation_id)).instance_id
        return SendRequest(
            conversation_id,
            caller.instance_id,
            caller.identity,
            caller.admin,
            author,
            kind,
            content,
            metadata or {},
            idempotency_key,
            await self._ts_config(instance_id),
        )

    async def commit(self, caller: ChatCaller, request: SendRequest) -> SendResult:
        """Write a prepared send (:meth:`submit`) and answer once it is committed.

        The send joins its batch's queue before this coroutine first waits, so sends
        whose commits start in some order are numbered in that order.
        """
        answers: list[SendResult | BaseException] = []
        await self.submit(caller, request, answers.append)
        if isinstance(answers[0], BaseException):
            raise answers[0]
        return answers[0]

    def submit(self, caller: ChatCaller, request: SendRequest, answer: SendAnswer) -> asyncio.Future[None]:
        """The one way a prepared send is written (REST through :meth:`commit`, the socket directly).

        The send is queued for its batch now (so one sender's sends are numbered in the
        order it submits them); ``answer`` gets the :class:`SendResult`, or the error
        for the sender, once the batch is committed. A caller that is not a member yet
        but joins by sending (a room's participant in its room's chat, see
        :meth:`_may_join`) hears ``not_member`` from the batch: it joins and the send is
        submitted once more, the only retry; whatever that batch says is the answer.

        No task per send: the batch's outcome becomes the answer in a callback, in the
        turn the batch's waiters wake, so a socket's ack leaves in the same write as
        the batch's events (:meth:`ChatSession.push`). Only the join takes a coroutine.
        The returned future is done once ``answer`` was called; cancelling it (the
        sender gave up) drops the send if it is still queued.
        """
        queued = self.batcher.enqueue(request)
        answered: asyncio.Future[None] = queued.get_loop().create_future()

        def settle(result: SendResult | BaseException) -> None:
            if not answered.done():  # else cancelled: nobody waits for the answer any more
                answered.set_result(None)
                answer(result)

        def committed(outcome: asyncio.Future[SendOutcome]) -> None:
            if outcome.cancelled():
                return  # the sender gave up (``answered`` was cancelled)
            error = outcome.exception()
            if error is not None:
                settle(error)
            elif self._needs_join(caller, outcome.result()):
                joining = asyncio.ensure_future(self._join_and_resubmit(caller, request, settle))
                self._joining.add(joining)
                joining.add_done_callback(self._joining.discard)
                _cancel_with(joining, answered)  # the node stops: nobody waits forever
                _cancel_with(answered, joining)
            else:
                settle(self._result_or_error(request, outcome.result()))

        queued.add_done_callback(committed)
        _cancel_with(answered, queued)  # a queued send nobody waits for is never written
        return answered

    async def _join_and_resubmit(self, caller: ChatCaller, request: SendRequest, settle: SendAnswer) -> None:
        """A room's participant's first send: join the room's chat, then the send's one retry."""
        try:
            await self.conversations.access(caller, request.conversation_id)  # makes the participant a member
            outcome = await self.batcher.submit(request)
        except Exception as exc:
            settle(exc)
            return
        settle(self._result_or_error(request, outcome))

    def _needs_join(self, caller: ChatCaller, outcome: SendOutcome) -> bool:
        """The caller is not a member yet but joins by sending: a room's participant in its room's chat."""
        return outcome.status == "not_member" and self._may_join(caller, outcome.conversation)

    def _result_or_error(self, request: SendRequest, outcome: SendOutcome) -> SendResult | Exception:
        """What a committed batch did with the send, or the error it is for its sender."""
        conversation_id = request.conversation_id
        if outcome.status == "not_found":
            return not_found("conversation", conversation_id)
        if outcome.status == "not_member":
            return forbidden("not_a_member", "you are not a member of this conversation")
        assert outcome.message is not None
        if outcome.status == "stored":
            return self._replayed(outcome.message, request.content)
        return SendResult(outcome.message, True)

    @staticmethod
    def _may_join(caller: ChatCaller, conversation: Conversation | None) -> bool:
        """Whether :meth:`Conversations.access` would make the caller a member (a room's participant)."""
        return (
            conversation is not None
            and conversation.kind == "room"
            and caller.identity is not None
            and caller.room is not None
            and conversation.title == caller.room
        )

    async def _committed(self, outcomes: list[SendOutcome]) -> None:
        """After a batch's commit, before its acks: the new messages to the listeners, in seq order."""
        for outcome in outcomes:
            if outcome.status == "created" and outcome.conversation is not None:
                for sent in self._sent_listeners:
                    sent(outcome.conversation)
        for outcome in outcomes:
            if outcome.status == "created":
                assert outcome.message is not None and outcome.conversation is not None
                await self._changed("message", message_event(outcome.message), outcome.conversation, outcome.members)

    async def _ts_config(self, instance_id: uuid.UUID) -> str:
        """The instance's text search configuration, cached briefly (locales rarely change)."""
        now = time.monotonic()
        cached = self._ts_configs.get(instance_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        instance = await self.conversations.instances.get(instance_id)
        config = ts_config_for(instance.locale)
        self._ts_configs[instance_id] = (config, now + TS_CONFIG_CACHE_SECONDS)
        return config

    @staticmethod
    def _replayed(existing: Message, content: str) -> SendResult | ApiError:
        if existing.content != content and existing.deleted_at is None and existing.edited_at is None:
            return ApiError(
                409,
                "idempotency_key_reused",
                "this idempotency key was used for a different message",
                {"seq": existing.seq},
            )
        return SendResult(existing, False)

    # --- read ----------------------------------------------------------------------

    async def history(
        self,
        caller: ChatCaller,
        conversation_id: uuid.UUID,
        *,
        after_seq: int | None = None,
        before_seq: int | None = None,
        limit: int = 50,
    ) -> tuple[list[Message], bool]:
        """A page in seq order and whether more lie beyond it.

        ``after_seq`` pages forwards (catching up from a cursor: gaps are filled,
        never skipped); ``before_seq`` pages backwards; neither gives the newest.
        """
        conversation = await self.conversations.access(caller, conversation_id)
        if after_seq is not None:
            rows = await self.pool.fetch(
                f"""SELECT {_MESSAGE_COLUMNS} FROM messages
                     WHERE shard_key = $1 AND conversation_id = $2 AND seq > $3 ORDER BY seq LIMIT $4""",
                conversation.shard_key,
                conversation.id,
                after_seq,
                limit + 1,
            )
            page = [message_from(r) for r in rows]
            return page[:limit], len(page) > limit
        rows = await self.pool.fetch(
            f"""SELECT {_MESSAGE_COLUMNS} FROM messages
                 WHERE shard_key = $1 AND conversation_id = $2 AND ($3::bigint IS NULL OR seq < $3)
                 ORDER BY seq DESC LIMIT $4""",
            conversation.shard_key,
            conversation.id,
            before_seq,
            limit + 1,
        )
        page = [message_from(r) for r in rows]
        return list(reversed(page[:limit])), len(page) > limit

    async def get(self, caller: ChatCaller, conversation_id: uuid.UUID, seq: int) -> Message:
        conversation = await self.conversations.access(caller, conversation_id)
        return await self._get(conversation, seq)

    async def _get(
        self, conversation: Conversation, seq: int, conn: asyncpg.Connection | None = None, *, for_update: bool = False
    ) -> Message:
        row = await (conn or self.pool).fetchrow(
            f"""SELECT {_MESSAGE_COLUMNS} FROM messages WHERE shard_key = $1 AND conversation_id = $2 AND seq = $3
                {"FOR UPDATE" if for_update else ""}""",
            conversation.shard_key,
            conversation.id,
            seq,
        )
        if row is None:
            raise not_found("message", seq)
        return message_from(row)

    # --- edit and delete -------------------------------------------------------------

    async def edit(self, caller: ChatCaller, conversation_id: uuid.UUID, seq: int, content: str) -> Message:
        self._check_content(content)
        return await self._change(caller, conversation_id, seq, "message.edited", content=content)

    async def delete(self, caller: ChatCaller, conversation_id: uuid.UUID, seq: int) -> Message:
        """A tombstone: content and metadata go, the seq stays (clients see a gap-free history)."""
        return await self._change(caller, conversation_id, seq, "message.deleted")

    async def _change(
        self, caller: ChatCaller, conversation_id: uuid.UUID, seq: int, kind: str, content: str | None = None
    ) -> Message:
        conversation = await self.conversations.access(caller, conversation_id)
        async with self.pool.acquire() as conn, conn.transaction():
            # The conversation's lock, as a send takes it: its events reach the outbox in commit order.
            await conn.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", conversation.id)
            current = await self._get(conversation, seq, conn, for_update=True)
            if current.sender != caller.identity and not await _may_change_others(conn, caller, conversation, kind):
                raise forbidden("not_the_sender", "only the sender (or an administrator) may change a message")
            if current.deleted_at is not None:
                raise ApiError(409, "message_deleted", "the message was deleted")
            if content is not None:
                row = await conn.fetchrow(
                    f"""UPDATE messages SET content = $4, edited_at = now()
                         WHERE shard_key = $1 AND conversation_id = $2 AND seq = $3 RETURNING {_MESSAGE_COLUMNS}""",
                    conversation.shard_key,
                    conversation.id,
                    seq,
                    content,
                )
            else:
                row = await conn.fetchrow(
                    f"""UPDATE messages SET content = '', metadata = '{{}}', deleted_at = now()
                         WHERE shard_key = $1 AND conversation_id = $2 AND seq = $3 RETURNING {_MESSAGE_COLUMNS}""",
                    conversation.shard_key,
                    conversation.id,
                    seq,
                )
            message = message_from(row)
            event = message_event(message)
            await outbox.enqueue(conn, "chat.messages", str(conversation.id), {"type": kind, "message": event})
        await self._changed("message", event, conversation)
        return message

    # --- receipts --------------------------------------------------------------------

    async def receipt(
        self,
        caller: ChatCaller,
        conversation_id: uuid.UUID,
        *,
        delivered_seq: int | None = None,
        read_seq: int | None = None,
    ) -> Receipt:
        """Move the caller's cursors forward (never back; read implies delivered).

        Values beyond the conversation's last message are clamped to it.
        """
        if caller.identity is None:
            raise bad_request("identity_required", "receipts belong to an identity; use an access token")
        if delivered_seq is None and read_seq is None:
            raise bad_request("receipt_empty", "give delivered_seq, read_seq or both")
        if any(v is not None and v < 0 for v in (delivered_seq, read_seq)):
            raise bad_request("invalid_seq", "sequence numbers are >= 0")
        conversation = await self.conversations.access(caller, conversation_id)
        delivered = max(delivered_seq or 0, read_seq or 0)
        async with self.pool.acquire() as conn, conn.transaction():
            current = await conn.fetchrow(
                """SELECT m.delivered_seq, m.read_seq, c.last_seq
                     FROM conversation_members m JOIN conversations c ON c.id = m.conversation_id
                    WHERE m.conversation_id = $1 AND m.identity = $2 FOR UPDATE OF m""",
                conversation.id,
                caller.identity,
            )
            if current is None:  # an administrator that is not a member has no cursors
                raise forbidden("not_a_member", "you are not a member of this conversation")
            last = current["last_seq"]
            new_delivered = max(current["delivered_seq"], min(delivered, last))
            new_read = max(current["read_seq"], min(read_seq or 0, last))
            receipt = Receipt(conversation.id, caller.identity, new_delivered, new_read)
            moved = (new_delivered, new_read) != (current["delivered_seq"], current["read_seq"])
            event = {
                "conversation_id": str(conversation.id),
                "identity": caller.identity,
                "delivered_seq": new_delivered,
                "read_seq": new_read,
            }
            if moved:
                await conn.execute(
                    """UPDATE conversation_members
                          SET delivered_seq = $3, read_seq = $4,
                              delivered_at = CASE WHEN $3 > delivered_seq THEN now() ELSE delivered_at END,
                              read_at = CASE WHEN $4 > read_seq THEN now() ELSE read_at END
                        WHERE conversation_id = $1 AND identity = $2""",
                    conversation.id,
                    caller.identity,
                    new_delivered,
                    new_read,
                )
                await outbox.enqueue(conn, "chat.receipts", str(conversation.id), {"type": "receipt", **event})
        if moved:
            await self._changed("receipt", event, conversation)
        return receipt

    # --- search ----------------------------------------------------------------------

    async def search(
        self,
        caller: ChatCaller,
        query: str,
        *,
        conversation_id: uuid.UUID | None = None,
        sender: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 50,
    ) -> list[Message]:
        """Full-text search over what the caller may read, newest first.

        The query is web-search syntax (``"exact phrase"``, ``-not``, ``or``) in the
        instance's language; an administrator searches the whole instance.
        """
        if not query.strip():
            raise bad_request("query_required", "q must not be empty")
        if caller.instance_id is None:
            raise bad_request("instance_id_required", "the operator must name the instance_id to search")
        if conversation_id is not None:
            await self.conversations.access(caller, conversation_id)
        instance = await self.conversations.instances.get(caller.instance_id)
        config = ts_config_for(instance.locale)
        rows = await self.pool.fetch(
            f"""SELECT {", ".join("m." + c.strip() for c in _MESSAGE_COLUMNS.split(","))}
                  FROM messages m
                 WHERE m.instance_id = $1 AND m.shard_key = $2 AND m.deleted_at IS NULL
                   AND m.search @@ websearch_to_tsquery($3::regconfig, $4)
                   AND ($5::uuid IS NULL OR m.conversation_id = $5)
                   AND ($6::text IS NULL OR m.sender_id = $6)
                   AND ($7::timestamptz IS NULL OR m.created_at >= $7)
                   AND ($8::timestamptz IS NULL OR m.created_at < $8)
                   AND ($9::text IS NULL OR EXISTS (
                        SELECT 1 FROM conversation_members cm
                         WHERE cm.conversation_id = m.conversation_id AND cm.identity = $9))
                 ORDER BY m.created_at DESC, m.seq DESC LIMIT $10""",
            caller.instance_id,
            shard_key_for(instance.customer_id),
            config,
            query,
            conversation_id,
            sender,
            since,
            until,
            None if caller.admin else caller.identity,
            limit,
        )
        return [message_from(r) for r in rows]


async def _may_change_others(
    conn: asyncpg.Connection, caller: ChatCaller, conversation: Conversation, kind: str
) -> bool:
    """An administrator edits and deletes anyone's message; a room's moderator deletes them in its room's chat.

    Its room: the open room its token names, found by the conversation's room id, so a
    moderator of a later meeting of the same name has no say over an earlier one's chat.
    """
    if caller.admin:
        return True
    if not (caller.moderator and kind == "message.deleted" and conversation.kind == "room"):
        return False
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM rooms WHERE id = $1 AND status = 'open' AND name = $2)",
            conversation.room_id,
            caller.room,
        )
    )
