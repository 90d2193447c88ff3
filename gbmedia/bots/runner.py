"""What the dialog engine and the scheduler share: an instance's run context, built one way.

A run's :class:`~gbmedia.bots.context.Context` gets the instance's tables, files and
guarded HTTP, its config and locale, and the node's limits; nothing in it can name
another instance.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from gbmedia.bots.browser import Browsers, WebRun
from gbmedia.bots.context import Context
from gbmedia.bots.dialogs import Dialogs
from gbmedia.bots.errors import Fault
from gbmedia.bots.fetch import GuardedFetcher, allowed_networks
from gbmedia.bots.files import InstanceFiles
from gbmedia.bots.host import ConversationPort
from gbmedia.bots.limits import Limits
from gbmedia.bots.media.dialog import MediaPort
from gbmedia.bots.tables import PgTables
from gbmedia.tenancy.instances import Instances
from gbmedia.tenancy.models import Instance

if TYPE_CHECKING:
    from gbmedia.bots.media.service import MediaBots
    from gbmedia.rooms.placement import Placer
    from gbmedia.rooms.store import Rooms


@dataclass
class Runner:
    pool: asyncpg.Pool
    instances: Instances
    dialogs: Dialogs
    data_dir: Path
    limits: Limits
    browsers: Browsers | None = None  # the node's browser (web automation)
    media_bots: MediaBots | None = None  # the node's media bots (JOIN ROOM...)
    rooms: Rooms | None = None
    placement: Placer | None = None

    async def instance(self, instance_id: uuid.UUID) -> Instance:
        return await self.instances.get(instance_id)

    def context(self, instance: Instance, dialog: str, port: ConversationPort) -> Context:
        try:
            allow = allowed_networks(instance.config)
            http: GuardedFetcher | None = GuardedFetcher(allow)
        except Fault:
            allow, http = [], None  # a malformed bots.http_allow: the dialog's GET says HTTP is not available
        web = WebRun(self.browsers, str(instance.id), allow) if self.browsers is not None and http else None
        media = None
        if self.media_bots is not None and self.rooms is not None:
            media = MediaPort(self.media_bots, self.rooms, instance.id, self.placement)
        return Context(
            instance_id=str(instance.id),
            dialog=dialog,
            port=port,
            tables=PgTables(self.pool, str(instance.id)),
            files=InstanceFiles(self.data_dir, str(instance.id)),
            http=http,
            config=instance.config,
            locale=instance.locale or "en",
            limits=self.limits,
            web=web,
            media=media,
        )
