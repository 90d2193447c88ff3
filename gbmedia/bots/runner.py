"""What the dialog engine and the scheduler share: an instance's run context, built one way.

A run's :class:`~gbmedia.bots.context.Context` gets the instance's tables, files and
guarded HTTP, its config and locale, and the node's limits; nothing in it can name
another instance.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from gbmedia.bots.browser import Browsers, WebRun
from gbmedia.bots.compiler import Compiled
from gbmedia.bots.context import Context
from gbmedia.bots.dialogs import DialogMissing, Dialogs
from gbmedia.bots.errors import BasicError, Fault
from gbmedia.bots.fetch import GuardedFetcher, allowed_networks
from gbmedia.bots.files import InstanceFiles
from gbmedia.bots.host import ConversationPort, FileStore
from gbmedia.bots.limits import Limits
from gbmedia.bots.media.dialog import MediaPort
from gbmedia.bots.providers import InstanceProviders
from gbmedia.bots.sharing import ShareLinks
from gbmedia.bots.tables import PgTables
from gbmedia.tenancy.instances import Instances
from gbmedia.tenancy.models import Instance
from gbmedia.tenancy.run_tokens import RunScope, RunTokens

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
    run_tokens: RunTokens | None = None  # getCustomToken's tokens (None: a runner without the node's secret key)
    browsers: Browsers | None = None  # the node's browser (web automation)
    media_bots: MediaBots | None = None  # the node's media bots (JOIN ROOM...)
    rooms: Rooms | None = None
    placement: Placer | None = None
    links: ShareLinks | None = None  # SHARE FOLDER's signer
    office_binary: str = "soffice"  # CONVERT's LibreOffice

    file_store: Callable[[str], FileStore] | None = None  # an instance id -> its files; None: the data directory
    engine: str = "wasm"  # GBMEDIA_BOT_ENGINE: "wasm" (compiled, the default) or "interp"

    def files_for(self, instance_id: str) -> FileStore:
        """An instance's bot files: in the node's data directory, or in S3 (GBMEDIA_BOT_FILES_STORAGE)."""
        if self.file_store is not None:
            return self.file_store(instance_id)
        return InstanceFiles(self.data_dir, instance_id)

    async def instance(self, instance_id: uuid.UUID) -> Instance:
        return await self.instances.get(instance_id)

    def context(self, instance: Instance, dialog: str, port: ConversationPort) -> Context:
        tokens = self.run_tokens
        conversation = getattr(port, "conversation_id", None)
        user = port.user.id if port.user is not None else None

        def run_token() -> str:
            if tokens is None:
                raise Fault("this node gives dialogs no run tokens")
            return tokens.mint(RunScope(instance.id, conversation, user, dialog))

        try:
            allow = allowed_networks(instance.config)
            http: GuardedFetcher | None = GuardedFetcher(allow)
        except Fault:
            allow, http = [], None  # a malformed bots.http_allow: the dialog's GET says HTTP is not available
        web = WebRun(self.browsers, str(instance.id), allow) if self.browsers is not None and http else None

        async def stored_dialog(name: str) -> Compiled:
            try:
                return await self.dialogs.compiled(instance.id, name)
            except DialogMissing:
                raise Fault(f"the bot has no dialog {name}") from None
            except BasicError as exc:  # a stored dialog whose INCLUDE went away since it was saved
                raise Fault(f"dialog {name} does not compile: {exc}") from None

        media = None
        if self.media_bots is not None and self.rooms is not None:
            media = MediaPort(self.media_bots, self.rooms, instance.id, self.placement)
        return Context(
            instance_id=str(instance.id),
            dialog=dialog,
            port=port,
            tables=PgTables(self.pool, str(instance.id)),
            files=self.files_for(str(instance.id)),
            http=http,
            config=instance.config,
            locale=instance.locale or "en",
            limits=self.limits,
            web=web,
            media=media,
            run_token=run_token,
            providers=InstanceProviders(self.pool, self.instances.secrets, instance.id, http),
            office_binary=self.office_binary,
            links=self.links,
            dialogs=stored_dialog,
        )
