"""What a built-in sees of its run: the instance, the conversation, the stores, the budget.

One :class:`Context` per run. ``settings`` holds what the dialog changed with ``SET``
(language, HTTP headers, ...): plain JSON values, saved with a suspended run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gbmedia.bots.errors import Fault
from gbmedia.bots.host import ConversationPort, FileStore, HttpFetcher, MemoryPort, TableStore
from gbmedia.bots.limits import Budget, Limits
from gbmedia.bots.sharing import ShareLinks

if TYPE_CHECKING:
    from gbmedia.bots.browser import WebRun
    from gbmedia.bots.media.dialog import MediaPort


@dataclass
class Context:
    instance_id: str = "local"
    dialog: str = "dialog"
    port: ConversationPort = field(default_factory=MemoryPort)
    tables: TableStore | None = None
    files: FileStore | None = None
    http: HttpFetcher | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the instance's config (GET CONFIG)
    locale: str = "en"
    limits: Limits = field(default_factory=Limits)
    budget: Budget = field(init=False)
    settings: dict[str, Any] = field(default_factory=dict)
    goto: str | None = None  # GO TO dialog: the run ends and the engine starts this one
    web: WebRun | None = None  # the node's browser, for OPEN, CLICK... (gbmedia/bots/browser.py)
    media: MediaPort | None = None  # the node's rooms, for JOIN ROOM, SHOW... (gbmedia/bots/media/dialog.py)
    run_token: Callable[[], str] | None = None  # getCustomToken: a token scoped to this run (tenancy/run_tokens.py)
    providers: Any = None  # the instance's outside services (gbmedia/bots/providers.py), None: none configured
    over_http: bool = False  # called through the keyword API, not by a dialog (keywords that need a dialog refuse)
    office_binary: str = "soffice"  # CONVERT's LibreOffice (GBMEDIA_BOT_OFFICE_BINARY)
    links: ShareLinks | None = None  # SHARE FOLDER's signer: the node's, None where no node serves links
    # callVM: the instance's stored dialog of a name, compiled (a compiler.Compiled: not imported, the
    # compiler imports the library, whose built-ins import this module)
    dialogs: Callable[[str], Awaitable[Any]] | None = None
    call_depth: int = 0  # callVM calls running inside this run now

    def __post_init__(self) -> None:
        self.budget = Budget(self.limits)
        if self.port.user is not None and self.port.user.locale:
            self.locale = self.port.user.locale

    @property
    def language(self) -> str:
        """The run's language: SET LANGUAGE, else the user's or instance's locale (its first part)."""
        return str(self.settings.get("LANGUAGE") or self.locale).split("-")[0].lower()

    def need_tables(self) -> TableStore:
        if self.tables is None:
            raise Fault("tables are not available to this run")
        return self.tables

    def need_files(self) -> FileStore:
        if self.files is None:
            raise Fault("files are not available to this run")
        return self.files

    def need_links(self) -> ShareLinks:
        if self.links is None:
            raise Fault("shared links are not available to this run (no node serves them)")
        return self.links

    def need_http(self) -> HttpFetcher:
        if self.http is None:
            raise Fault("HTTP is not available to this run")
        return self.http

    def need_web(self) -> WebRun:
        if self.web is None:
            raise Fault("web automation is not available to this run")
        return self.web

    def need_media(self) -> MediaPort:
        if self.media is None:
            raise Fault("media bots are not available to this run")
        return self.media

    async def release(self) -> None:
        """The run ended or stopped at a HEAR: close what it holds open (browser contexts)."""
        if self.web is not None:
            await self.web.release()
