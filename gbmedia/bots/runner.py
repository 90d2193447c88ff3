"""What the dialog engine and the scheduler share: an instance's run context, built one way.

A run's :class:`~gbmedia.bots.context.Context` gets the instance's tables, files and
guarded HTTP, its config and locale, and the node's limits; nothing in it can name
another instance.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from gbmedia.bots.context import Context
from gbmedia.bots.dialogs import Dialogs
from gbmedia.bots.errors import Fault
from gbmedia.bots.fetch import GuardedFetcher, allowed_networks
from gbmedia.bots.files import InstanceFiles
from gbmedia.bots.host import ConversationPort
from gbmedia.bots.limits import Limits
from gbmedia.bots.tables import PgTables
from gbmedia.tenancy.instances import Instances
from gbmedia.tenancy.models import Instance


@dataclass
class Runner:
    pool: asyncpg.Pool
    instances: Instances
    dialogs: Dialogs
    data_dir: Path
    limits: Limits
    engine: str = "wasm"  # GBMEDIA_BOT_ENGINE: "wasm" (compiled, the default) or "interp"

    async def instance(self, instance_id: uuid.UUID) -> Instance:
        return await self.instances.get(instance_id)

    def context(self, instance: Instance, dialog: str, port: ConversationPort) -> Context:
        try:
            http: GuardedFetcher | None = GuardedFetcher(allowed_networks(instance.config))
        except Fault:
            http = None  # a malformed bots.http_allow: the dialog's GET says HTTP is not available
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
        )
