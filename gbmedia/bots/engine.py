"""The dialog engine: bots that answer in chat conversations, one run per (conversation, user).

A bot is a member of a conversation with the role ``bot`` (a ``bot`` conversation, or
any group or room conversation it was added to). Every message in such a
conversation is handled once, in seq order, by whichever node gets to it:

- The node that committed a message hears of it from chat (``Messages.on_change``,
  after the commit) and wakes the conversation's worker; a sweep every few seconds,
  and one at start, wakes conversations whose messages no node handled (the node that
  committed them died first). That is how it works across nodes and restarts.
- A worker holds the conversation's PostgreSQL advisory lock while it works, so one
  node at a time handles a conversation; a dead node's lock goes with its connection.
- ``bot_conversations.handled_seq`` is the durable cursor. Handling a message runs
  the dialog up to its next HEAR (or its end) and then, in one transaction, saves the
  run (``bot_runs``: its state as JSON at the HEAR) and moves the cursor past it.
  A crash before that commit means the message is handled again from the saved state:
  the replies are sent again under the same idempotency keys (``chat_port``), so the
  user sees each once.

What a message does: while the user's run waits at a HEAR, it is the answer (the
interpreter validates it and re-asks); otherwise a message that names a dialog of
the instance (``menu`` or ``/menu``; ``/menu`` also while a HEAR waits) starts it,
and anything else starts the ``start`` dialog. ``GO TO`` starts the next dialog in
the same turn. ``TRANSFER TO`` hands the conversation to a person: the bot ignores the
conversation until that person (anyone but the transferred user, when no one was
named) writes ``/release``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from gbmedia.bots.chat_port import ChatPort
from gbmedia.bots.compiler import Compiled
from gbmedia.bots.dialogs import START_DIALOG, DialogMissing, dialog_name
from gbmedia.bots.engines import new_run, restore_run
from gbmedia.bots.errors import BasicRuntimeError
from gbmedia.bots.host import UserInfo
from gbmedia.bots.machine import Outcome, StateError
from gbmedia.bots.runner import Runner
from gbmedia.errors import ApiError
from gbmedia.messaging.service import Chat
from gbmedia.tenancy.gates import require_feature
from gbmedia.tenancy.models import Instance

log = logging.getLogger(__name__)

SWEEP_SECONDS = 5.0
WORKERS = 4  # conversations handled at once on a node (each holds a database connection)
PAGE = 50  # messages read at a time
MAX_GOTO = 10  # GO TO hops in one turn
RELEASE = "/release"
REMEMBER_SECONDS = 10.0  # how long "this conversation has (no) bot member" is trusted
MAX_REMEMBERED = 100_000
RUN_COLUMNS = "id, conversation_id, user_identity, dialog, status, last_error, started_at, updated_at"
MISSING = {
    "en": "Sorry, this conversation's dialog is not available.",
    "pt": "Desculpe, o diálogo desta conversa não está disponível.",
    "es": "Lo siento, el diálogo de esta conversación no está disponible.",
}


@dataclass(frozen=True)
class BotConversation:
    conversation_id: uuid.UUID
    instance_id: uuid.UUID
    shard_key: int
    bot: str
    handled_seq: int
    transferred_to: str | None
    transferred_by: str | None
    transferred: bool


class DialogEngine:
    def __init__(self, pool: asyncpg.Pool, chat: Chat, runner: Runner, *, sweep_seconds: float = SWEEP_SECONDS) -> None:
        self.pool = pool
        self.chat = chat
        self.runner = runner
        self.sweep_seconds = sweep_seconds
        self._running: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._again: set[uuid.UUID] = set()
        self._slots = asyncio.Semaphore(WORKERS)
        self._sweeper: asyncio.Task[None] | None = None
        self._bot_members: dict[uuid.UUID, tuple[bool, float]] = {}  # conversation -> (has a bot, until)
        self._stopping = False
        self.handled = 0  # messages handled by this node (a metric and a test's witness)

    # --- life ---------------------------------------------------------------------------

    def start(self) -> None:
        """Listen to chat and sweep (now, then every ``sweep_seconds``)."""
        self.chat.messages.on_change(self._on_change)
        self._sweeper = asyncio.ensure_future(self._sweep_loop())

    async def stop(self) -> None:
        self._stopping = True
        tasks = [t for t in (self._sweeper, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._running.clear()

    async def settled(self) -> None:
        """Wait until no conversation is being handled on this node (tests; a drain)."""
        while self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)

    # --- waking workers -----------------------------------------------------------------

    async def _on_change(self, kind: str, event: dict[str, Any], conversation: Any, members: Any) -> None:
        if kind == "message":
            self.wake(conversation.id)  # never waits: this runs before the sender's ack

    def wake(self, conversation_id: uuid.UUID, swept: bool = False) -> None:
        """Look at the conversation's unhandled messages (``swept``: the sweep knows it has a bot member)."""
        if self._stopping:
            return
        if conversation_id in self._running:
            self._again.add(conversation_id)  # its worker looks again when it is done
            return
        task = asyncio.ensure_future(self._work(conversation_id, swept))
        self._running[conversation_id] = task
        task.add_done_callback(lambda _t: self._finished(conversation_id))

    def _finished(self, conversation_id: uuid.UUID) -> None:
        self._running.pop(conversation_id, None)
        if conversation_id in self._again:
            self._again.discard(conversation_id)
            self.wake(conversation_id)

    async def _has_bot(self, conversation_id: uuid.UUID) -> bool:
        """Whether the conversation has a bot member, remembered a few seconds (every chat message asks).

        A bot added after a "no" is found by the next sweep at the latest.
        """
        now = time.monotonic()
        known = self._bot_members.get(conversation_id)
        if known is not None and known[1] > now:
            return known[0]
        found = bool(
            await self.pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM conversation_members WHERE conversation_id = $1 AND role = 'bot')",
                conversation_id,
            )
        )
        if len(self._bot_members) >= MAX_REMEMBERED:
            self._bot_members.clear()
        self._bot_members[conversation_id] = (found, now + REMEMBER_SECONDS)
        return found

    async def _work(self, conversation_id: uuid.UUID, swept: bool) -> None:
        try:
            if not swept and not await self._has_bot(conversation_id):
                return
            async with self._slots:
                await self.process(conversation_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("bot conversation could not be handled", extra={"conversation_id": str(conversation_id)})

    async def _sweep_loop(self) -> None:
        while True:
            try:
                for conversation_id in await self.unhandled():
                    self.wake(conversation_id, swept=True)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("bot sweep failed")
            await asyncio.sleep(self.sweep_seconds)

    async def unhandled(self) -> list[uuid.UUID]:
        """Conversations with a bot member and messages past the bot's cursor."""
        rows = await self.pool.fetch(
            """SELECT DISTINCT c.id FROM conversation_members m
                 JOIN conversations c ON c.id = m.conversation_id
                 LEFT JOIN bot_conversations b ON b.conversation_id = c.id
                WHERE m.role = 'bot' AND c.last_seq > coalesce(b.handled_seq, 0)
                LIMIT 1000"""
        )
        return [r["id"] for r in rows]

    async def runs(self, instance_id: uuid.UUID, limit: int = 100) -> list[dict[str, Any]]:
        """The instance's runs, latest first: dialog, status (``waiting`` at a HEAR), last error."""
        rows = await self.pool.fetch(
            f"SELECT {RUN_COLUMNS} FROM bot_runs WHERE instance_id = $1 ORDER BY updated_at DESC LIMIT $2",
            instance_id,
            limit,
        )
        return [dict(r) for r in rows]

    # --- one conversation ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _locked(self, conversation_id: uuid.UUID) -> AsyncIterator[None]:
        """The conversation's advisory lock: one node, one task at a time works on its runs."""
        async with self.pool.acquire() as lock:
            key = f"bot:{conversation_id}"
            await lock.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", key)
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    await lock.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", key)

    async def process(self, conversation_id: uuid.UUID) -> int:
        """Handle every message of the conversation past the bot's cursor; how many were handled."""
        async with self._locked(conversation_id):
            return await self._process_locked(conversation_id)

    # --- what the operator does (POST /api/v1/bots/conversations, DELETE /api/v1/bots/runs/{id}) ---

    def bot_joined(self, conversation_id: uuid.UUID) -> None:
        """Forget a remembered "no bot here": the next message is looked at at once on this node.

        Other nodes learn it from their next sweep at the latest (``_has_bot``).
        """
        self._bot_members.pop(conversation_id, None)

    async def start_run(self, conversation_id: uuid.UUID, user: str, dialog: str) -> dict[str, Any] | None:
        """Start ``dialog`` for ``user`` in a conversation the bot is a member of, as if the user had named it.

        The bot speaks first: it says what the dialog says up to its first HEAR, which
        then waits for that user's next message there. Under the conversation's lock, so
        it never interleaves with a message being handled; the replies' keys are unique to
        this start. The run (``runs()``'s shape), or None when the bot is not a member.
        """
        async with self._locked(conversation_id):
            conv = await self._conversation(conversation_id)
            if conv is None:
                return None
            instance = await self.runner.instance(conv.instance_id)
            port = ChatPort(
                self.pool,
                self.chat.messages,
                conv.instance_id,
                conv.conversation_id,
                conv.bot,
                UserInfo(user),
                answering=0,
                key=f"bot.start.{uuid.uuid4().hex}",
            )
            outcome, last, fresh = await self._turn(instance, port, None, "/" + dialog)
            if outcome is not None and last is not None:
                async with self.pool.acquire() as conn, conn.transaction():
                    await self._save_run(conn, conv, user, last, outcome, fresh=fresh)
        return await self.run_of(conv.instance_id, conversation_id, user)

    async def transfer(self, instance_id: uuid.UUID, conversation_id: uuid.UUID, user: str, to: str | None) -> None:
        """TRANSFER TO from outside the dialog (the keyword API with a run's token), as a turn would do it."""
        async with self._locked(conversation_id):
            if to:
                conversation = await self.chat.conversations.get(instance_id, conversation_id)
                with contextlib.suppress(Exception):  # a direct conversation keeps its two members
                    await self.chat.conversations.add_member(conversation, to)
            await self.pool.execute(
                """UPDATE bot_conversations SET transferred_to = $2, transferred_by = $3, transferred_at = now()
                    WHERE conversation_id = $1""",
                conversation_id,
                to or "",
                user,
            )

    async def run_of(self, instance_id: uuid.UUID, conversation_id: uuid.UUID, user: str) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(
            f"""SELECT {RUN_COLUMNS} FROM bot_runs
                 WHERE instance_id = $1 AND conversation_id = $2 AND user_identity = $3""",
            instance_id,
            conversation_id,
            user,
        )
        return dict(row) if row is not None else None

    async def stop_run(self, instance_id: uuid.UUID, run_id: uuid.UUID) -> dict[str, Any] | None:
        """End a run: ``stopped``, its saved state dropped, so the user's next message no longer answers its HEAR.

        Taken under the conversation's lock, so a message being handled at that moment
        finishes first and cannot put the run back to waiting. None: no such run in the instance.
        """
        conversation_id = await self.pool.fetchval(
            "SELECT conversation_id FROM bot_runs WHERE id = $1 AND instance_id = $2", run_id, instance_id
        )
        if conversation_id is None:
            return None
        async with self._locked(conversation_id):
            row = await self.pool.fetchrow(
                f"""UPDATE bot_runs SET status = 'stopped', state = NULL, updated_at = now()
                     WHERE id = $1 AND instance_id = $2 RETURNING {RUN_COLUMNS}""",
                run_id,
                instance_id,
            )
        return dict(row) if row is not None else None

    async def _process_locked(self, conversation_id: uuid.UUID) -> int:
        state = await self._conversation(conversation_id)
        if state is None:
            return 0
        count = 0
        while True:
            rows = await self.pool.fetch(
                """SELECT seq, sender_id, kind, content, deleted_at FROM messages
                    WHERE shard_key = $1 AND conversation_id = $2 AND seq > $3 ORDER BY seq LIMIT $4""",
                state.shard_key,
                conversation_id,
                state.handled_seq,
                PAGE,
            )
            if not rows:
                return count
            for row in rows:
                await self._handle(state, row)
                count += 1
                self.handled += 1
                state = await self._conversation(conversation_id)
                if state is None:
                    return count

    async def _conversation(self, conversation_id: uuid.UUID) -> BotConversation | None:
        """The conversation's bot and cursor (the cursor made on first sight: it starts where the bot joined)."""
        row = await self.pool.fetchrow(
            """SELECT c.instance_id, c.shard_key, m.identity, m.joined_at FROM conversations c
                 JOIN conversation_members m ON m.conversation_id = c.id AND m.role = 'bot'
                WHERE c.id = $1 ORDER BY m.joined_at, m.identity LIMIT 1""",
            conversation_id,
        )
        if row is None:
            return None
        await self.pool.execute(
            """INSERT INTO bot_conversations (conversation_id, instance_id, bot_identity, handled_seq)
               VALUES ($1, $2, $3, (SELECT coalesce(max(seq), 0) FROM messages
                                     WHERE shard_key = $4 AND conversation_id = $1 AND created_at < $5))
               ON CONFLICT (conversation_id) DO NOTHING""",
            conversation_id,
            row["instance_id"],
            row["identity"],
            row["shard_key"],
            row["joined_at"],
        )
        cursor = await self.pool.fetchrow(
            """SELECT handled_seq, transferred_to, transferred_by, transferred_at
                 FROM bot_conversations WHERE conversation_id = $1""",
            conversation_id,
        )
        return BotConversation(
            conversation_id,
            row["instance_id"],
            row["shard_key"],
            row["identity"],
            cursor["handled_seq"],
            cursor["transferred_to"],
            cursor["transferred_by"],
            cursor["transferred_at"] is not None,
        )

    async def _advance(self, conn: Any, conversation_id: uuid.UUID, seq: int) -> None:
        await conn.execute(
            """UPDATE bot_conversations SET handled_seq = $2, updated_at = now()
                WHERE conversation_id = $1 AND handled_seq < $2""",
            conversation_id,
            seq,
        )

    async def _bots_allowed(self, instance_id: uuid.UUID) -> bool:
        """Whether the tier and the instance let bots answer now (gbmedia/tenancy/gates.py)."""
        try:
            await require_feature(self.pool, instance_id, "bots")
        except ApiError:
            return False
        return True

    async def _handle(self, conv: BotConversation, message: asyncpg.Record) -> None:
        seq, sender, text = message["seq"], message["sender_id"], message["content"]
        if sender == conv.bot or message["kind"] == "system" or message["deleted_at"] is not None:
            await self._advance(self.pool, conv.conversation_id, seq)
            return
        if conv.transferred:
            await self._while_transferred(conv, sender, text, seq)
            return
        instance = await self.runner.instance(conv.instance_id)
        if instance.status != "active" or not await self._bots_allowed(instance.id):
            # A suspended or deleted instance's bots say nothing, nor do those whose tier or
            # instance turned the bots feature off (the message is passed, not kept for later).
            await self._advance(self.pool, conv.conversation_id, seq)
            return
        port = ChatPort(
            self.pool,
            self.chat.messages,
            conv.instance_id,
            conv.conversation_id,
            conv.bot,
            UserInfo(sender),
            answering=seq,
        )
        run_row = await self.pool.fetchrow(
            "SELECT dialog, status, state FROM bot_runs WHERE conversation_id = $1 AND user_identity = $2",
            conv.conversation_id,
            sender,
        )
        outcome, dialog, fresh = await self._turn(instance, port, run_row, text)
        if port.transferred is not None:
            to = port.transferred[0]
            if to:
                conversation = await self.chat.conversations.get(conv.instance_id, conv.conversation_id)
                with contextlib.suppress(Exception):  # a direct conversation keeps its two members
                    await self.chat.conversations.add_member(conversation, to)
        async with self.pool.acquire() as conn, conn.transaction():
            if outcome is not None and dialog is not None:
                await self._save_run(conn, conv, sender, dialog, outcome, fresh=fresh)
            if port.transferred is not None:
                await conn.execute(
                    """UPDATE bot_conversations SET transferred_to = $2, transferred_by = $3, transferred_at = now()
                        WHERE conversation_id = $1""",
                    conv.conversation_id,
                    port.transferred[0] or "",
                    sender,
                )
            await self._advance(conn, conv.conversation_id, seq)

    async def _while_transferred(self, conv: BotConversation, sender: str, text: str, seq: int) -> None:
        """A person has the conversation: the bot only listens for ``/release`` from that person."""
        human = sender == conv.transferred_to if conv.transferred_to else sender != conv.transferred_by
        async with self.pool.acquire() as conn, conn.transaction():
            if human and text.strip().lower() == RELEASE:
                await conn.execute(
                    """UPDATE bot_conversations SET transferred_to = NULL, transferred_by = NULL,
                              transferred_at = NULL WHERE conversation_id = $1""",
                    conv.conversation_id,
                )
            await self._advance(conn, conv.conversation_id, seq)

    async def _turn(
        self, instance: Instance, port: ChatPort, run_row: asyncpg.Record | None, text: str
    ) -> tuple[Outcome | None, str | None, bool]:
        """Run the dialog the message calls for: (outcome, the dialog last run, whether a run started afresh)."""
        names = await self.runner.dialogs.names(instance.id)
        asked = text.strip()
        named = dialog_name(asked[1:] if asked.startswith("/") else asked)
        waiting = run_row is not None and run_row["status"] == "waiting"
        target: str | None = None
        outcome: Outcome | None = None
        if named in names and (not waiting or asked.startswith("/")):
            target = named
        elif waiting:
            assert run_row is not None
            try:
                compiled = await self.runner.dialogs.compiled(instance.id, run_row["dialog"])
                port.dialog = compiled.dialog
                ctx = self.runner.context(instance, compiled.dialog, port)
                run = await restore_run(compiled, ctx, run_row["state"])
                outcome = await run.resume(text)
                target = None if outcome.status != "goto" else outcome.goto
                if target is None:
                    return outcome, run_row["dialog"], False
            except (DialogMissing, StateError) as exc:
                # The dialog was deleted or changed since the run stopped: it cannot go on where it was.
                log.warning("a suspended bot run cannot resume: %s", exc, extra={"dialog": run_row["dialog"]})
                await port.log(
                    "warning", f"{run_row['dialog']}: the waiting run could not resume ({exc}); starting over"
                )
                if START_DIALOG not in names:  # nothing to start over with: the stale run ends here
                    error = BasicRuntimeError(f"the waiting run could not resume ({exc})", 0, None, run_row["dialog"])
                    return Outcome("failed", error=error), run_row["dialog"], False
                target = START_DIALOG
        elif START_DIALOG in names:
            target = START_DIALOG
        hops = 0
        while target is not None:
            try:
                compiled = await self.runner.dialogs.compiled(instance.id, target)
            except DialogMissing:
                await port.log("error", f"GO TO {target}: the instance has no such dialog")
                await port.talk(MISSING.get(instance.locale.split("-")[0], MISSING["en"]))
                return outcome, None, True
            port.dialog = compiled.dialog
            outcome = await self._start(instance, port, compiled)
            if outcome.status != "goto" or hops >= MAX_GOTO:
                return outcome, compiled.dialog, True
            hops += 1
            target = outcome.goto
        return outcome, None, True

    async def _start(self, instance: Instance, port: ChatPort, compiled: Compiled) -> Outcome:
        ctx = self.runner.context(instance, compiled.dialog, port)
        return await (await new_run(compiled, ctx, self.runner.engine)).start()

    async def _save_run(
        self, conn: Any, conv: BotConversation, user: str, dialog: str, outcome: Outcome, *, fresh: bool
    ) -> None:
        status = outcome.status if outcome.status in ("waiting", "done", "stopped", "failed") else "done"
        error = str(outcome.error) if outcome.error is not None else None
        state = outcome.state if status == "waiting" else None  # the pool's codec encodes jsonb
        await conn.execute(
            """INSERT INTO bot_runs (instance_id, conversation_id, user_identity, dialog, status, state, last_error)
               VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)
               ON CONFLICT (conversation_id, user_identity) DO UPDATE
                  SET dialog = EXCLUDED.dialog, status = EXCLUDED.status, state = EXCLUDED.state,
                      last_error = EXCLUDED.last_error, updated_at = now(),
                      started_at = CASE WHEN $8 THEN now() ELSE bot_runs.started_at END""",
            conv.instance_id,
            conv.conversation_id,
            user,
            dialog,
            status,
            state,
            error,
            fresh,
        )
