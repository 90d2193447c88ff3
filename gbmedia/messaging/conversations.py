"""Conversations and their members: create, find, list, join, leave.

Direct conversations are unique per pair of identities (asking again returns the
existing one); a room has exactly one room conversation, opened on first use.
Every membership check for reads and writes goes through :meth:`Conversations.access`.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from gbmedia import outbox
from gbmedia.errors import ApiError, bad_request, forbidden, not_found
from gbmedia.messaging.models import CONVERSATION_KINDS, MEMBER_ROLES, ChatCaller, Conversation, Member, check_metadata
from gbmedia.tenancy.instances import Instances
from gbmedia.tenancy.sharding import shard_key_for

CONVERSATION_COLUMNS = (
    "id, customer_id, instance_id, kind, title, room_id, created_by, metadata, last_seq, created_at, shard_key"
)
_MEMBER_COLUMNS = "identity, role, joined_at, delivered_seq, delivered_at, read_seq, read_at"
MAX_MEMBERS = 1000
IDENTITY_MAX_LENGTH = 256


def conversation_from(row: asyncpg.Record | dict[str, Any]) -> Conversation:
    return Conversation(**dict(row))


def _member(row: asyncpg.Record) -> Member:
    return Member(**dict(row))


def _check_identities(identities: list[str]) -> list[str]:
    cleaned = list(dict.fromkeys(identities))  # order kept, duplicates dropped
    bad = [i for i in cleaned if not isinstance(i, str) or not 1 <= len(i) <= IDENTITY_MAX_LENGTH]
    if bad:
        raise bad_request("invalid_member", f"identities are 1-{IDENTITY_MAX_LENGTH} characters")
    if len(cleaned) > MAX_MEMBERS:
        raise bad_request("too_many_members", f"a conversation has at most {MAX_MEMBERS} members")
    return cleaned


class Conversations:
    def __init__(self, pool: asyncpg.Pool, instances: Instances) -> None:
        self.pool = pool
        self.instances = instances

    async def create(
        self,
        caller: ChatCaller,
        kind: str,
        members: list[str],
        *,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> tuple[Conversation, bool]:
        """A new direct, group or bot conversation; (conversation, created).

        The caller (when it is an identity) is a member, as owner. A direct
        conversation between the same two identities is returned, not duplicated.
        """
        if kind not in CONVERSATION_KINDS or kind == "room":
            raise bad_request("invalid_kind", "kind is direct, group or bot (room conversations open with rooms)")
        members = _check_identities(([caller.identity] if caller.identity else []) + members)
        if kind == "direct" and len(members) != 2:
            raise bad_request("direct_needs_two", "a direct conversation has exactly two members")
        if not members:
            raise bad_request("members_required", "name at least one member")
        check_metadata(metadata)
        if caller.instance_id is None:
            raise bad_request("instance_id_required", "the operator must name the conversation's instance_id")
        instance = await self.instances.get(caller.instance_id)
        if instance.status != "active":
            raise ApiError(409, "instance_not_active", f"instance {instance.id} is {instance.status}")
        async with self.pool.acquire() as conn, conn.transaction():
            if kind == "direct":
                # One direct conversation per pair: serialise creations of the same pair.
                pair = sorted(members)
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1))", f"direct:{instance.id}:{pair[0]}:{pair[1]}"
                )
                existing = await conn.fetchrow(
                    f"""SELECT {CONVERSATION_COLUMNS} FROM conversations c
                         WHERE instance_id = $1 AND kind = 'direct'
                           AND (SELECT array_agg(identity ORDER BY identity) FROM conversation_members m
                                 WHERE m.conversation_id = c.id) = $2::text[]""",
                    instance.id,
                    pair,
                )
                if existing is not None:
                    return conversation_from(existing), False
            row = await conn.fetchrow(
                f"""INSERT INTO conversations (customer_id, instance_id, kind, title, metadata, shard_key, created_by)
                    VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {CONVERSATION_COLUMNS}""",
                instance.customer_id,
                instance.id,
                kind,
                title,
                metadata or {},
                shard_key_for(instance.customer_id),
                caller.identity,
            )
            conversation = conversation_from(row)
            roles = [
                "owner" if m == caller.identity else ("bot" if kind == "bot" and m != members[0] else "member")
                for m in members
            ]
            await conn.executemany(
                "INSERT INTO conversation_members (conversation_id, identity, role) VALUES ($1, $2, $3)",
                [(conversation.id, m, r) for m, r in zip(members, roles, strict=True)],
            )
            await outbox.enqueue(
                conn,
                "chat.conversations",
                str(conversation.id),
                {
                    "type": "conversation.created",
                    "conversation_id": str(conversation.id),
                    "instance_id": str(instance.id),
                    "kind": kind,
                    "members": members,
                },
            )
        return conversation, True

    async def for_room(self, instance_id: uuid.UUID, room_id: uuid.UUID, room_name: str) -> Conversation:
        """The room's conversation, opened on first use (race-free: one per room)."""
        row = await self.pool.fetchrow(
            f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE room_id = $1 AND kind = 'room'", room_id
        )
        if row is not None:
            return conversation_from(row)
        instance = await self.instances.get(instance_id)
        row = await self.pool.fetchrow(
            f"""INSERT INTO conversations (customer_id, instance_id, kind, title, room_id, shard_key)
                VALUES ($1, $2, 'room', $3, $4, $5)
                ON CONFLICT (room_id) WHERE kind = 'room' AND room_id IS NOT NULL DO NOTHING
                RETURNING {CONVERSATION_COLUMNS}""",
            instance.customer_id,
            instance.id,
            room_name,
            room_id,
            shard_key_for(instance.customer_id),
        )
        if row is None:  # another node or task opened it first
            row = await self.pool.fetchrow(
                f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE room_id = $1 AND kind = 'room'", room_id
            )
        return conversation_from(row)

    async def get(
        self, instance_id: uuid.UUID | None, conversation_id: uuid.UUID, conn: asyncpg.Connection | None = None
    ) -> Conversation:
        """By id, within ``instance_id`` (None: any instance, for the operator)."""
        row = await (conn or self.pool).fetchrow(
            f"""SELECT {CONVERSATION_COLUMNS} FROM conversations
                 WHERE id = $1 AND ($2::uuid IS NULL OR instance_id = $2)""",
            conversation_id,
            instance_id,
        )
        if row is None:
            raise not_found("conversation", conversation_id)
        return conversation_from(row)

    async def access(
        self, caller: ChatCaller, conversation_id: uuid.UUID, conn: asyncpg.Connection | None = None
    ) -> Conversation:
        """The conversation if the caller may read and write it, else 404/403.

        Another instance's conversation is 404 like a missing one; a conversation
        of the caller's instance it is not a member of is 403 ``not_a_member``. A
        participant of a room becomes a member of the room's conversation here.
        """
        row = await (conn or self.pool).fetchrow(
            f"""SELECT {CONVERSATION_COLUMNS},
                       EXISTS (SELECT 1 FROM conversation_members m
                                WHERE m.conversation_id = c.id AND m.identity = $3) AS is_member,
                       EXISTS (SELECT 1 FROM rooms r WHERE r.id = c.room_id AND r.status = 'open'
                                  AND r.name = $4) AS in_room
                  FROM conversations c WHERE id = $1 AND ($2::uuid IS NULL OR instance_id = $2)""",
            conversation_id,
            caller.instance_id,
            caller.identity,
            caller.room,
        )  # one round trip: sends are hot
        if row is None:
            raise not_found("conversation", conversation_id)
        conversation = conversation_from({k: v for k, v in row.items() if k not in ("is_member", "in_room")})
        if caller.admin or row["is_member"]:
            return conversation
        if caller.identity is None:  # pragma: no cover - callers without identity are admins
            raise forbidden("not_a_member", "you are not a member of this conversation")
        if conversation.kind == "room" and row["in_room"]:  # the open room the token names: by id, not by name
            await self.add_member(conversation, caller.identity, conn=conn)
            return conversation
        raise forbidden("not_a_member", "you are not a member of this conversation")

    async def list_for(
        self, caller: ChatCaller, identity: str | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[tuple[Conversation, Member | None]]:
        """Conversations of ``identity`` (the caller's own unless an admin names one or none)."""
        who = caller.identity if not caller.admin else identity
        if who is None:
            rows = await self.pool.fetch(
                f"""SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE ($1::uuid IS NULL OR instance_id = $1)
                     ORDER BY created_at DESC, id LIMIT $2 OFFSET $3""",
                caller.instance_id,
                limit,
                offset,
            )
            return [(conversation_from(r), None) for r in rows]
        rows = await self.pool.fetch(
            f"""SELECT {", ".join("c." + c.strip() for c in CONVERSATION_COLUMNS.split(","))},
                       {", ".join("m." + c.strip() for c in _MEMBER_COLUMNS.split(","))}
                  FROM conversation_members m JOIN conversations c ON c.id = m.conversation_id
                 WHERE m.identity = $1 AND ($2::uuid IS NULL OR c.instance_id = $2)
                 ORDER BY c.created_at DESC, c.id LIMIT $3 OFFSET $4""",
            who,
            caller.instance_id,
            limit,
            offset,
        )
        conversation_fields = [c.strip() for c in CONVERSATION_COLUMNS.split(",")]
        member_fields = [c.strip() for c in _MEMBER_COLUMNS.split(",")]
        return [
            (Conversation(**{k: r[k] for k in conversation_fields}), Member(**{k: r[k] for k in member_fields}))
            for r in rows
        ]

    async def members(self, conversation: Conversation, conn: asyncpg.Connection | None = None) -> list[Member]:
        rows = await (conn or self.pool).fetch(
            f"SELECT {_MEMBER_COLUMNS} FROM conversation_members WHERE conversation_id = $1 ORDER BY joined_at, "
            "identity",
            conversation.id,
        )
        return [_member(r) for r in rows]

    async def member_identities(self, conversation_id: uuid.UUID) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT identity FROM conversation_members WHERE conversation_id = $1", conversation_id
        )
        return [r["identity"] for r in rows]

    async def add_member(
        self, conversation: Conversation, identity: str, role: str = "member", *, conn: asyncpg.Connection | None = None
    ) -> Member:
        _check_identities([identity])
        if role not in MEMBER_ROLES:
            raise bad_request("invalid_role", f"role is one of {MEMBER_ROLES}")
        if conversation.kind == "direct":
            raise bad_request("direct_is_fixed", "a direct conversation keeps its two members")
        db = conn or self.pool
        count = await db.fetchval(
            "SELECT count(*) FROM conversation_members WHERE conversation_id = $1", conversation.id
        )
        if count >= MAX_MEMBERS:
            raise bad_request("too_many_members", f"a conversation has at most {MAX_MEMBERS} members")
        # A newcomer's cursors start at 0: the history before it joined counts as unread until read.
        row = await db.fetchrow(
            f"""INSERT INTO conversation_members (conversation_id, identity, role, delivered_seq, read_seq)
                VALUES ($1, $2, $3, 0, 0)
                ON CONFLICT (conversation_id, identity) DO UPDATE SET role = conversation_members.role
                RETURNING {_MEMBER_COLUMNS}""",
            conversation.id,
            identity,
            role,
        )
        return _member(row)

    async def remove_member(self, conversation: Conversation, identity: str) -> None:
        if conversation.kind == "direct":
            raise bad_request("direct_is_fixed", "a direct conversation keeps its two members")
        result = await self.pool.execute(
            "DELETE FROM conversation_members WHERE conversation_id = $1 AND identity = $2", conversation.id, identity
        )
        if result == "DELETE 0":
            raise not_found("member", identity)
