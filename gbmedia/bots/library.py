"""Every GB BASIC built-in, registered: import this module to get the full registry."""

from __future__ import annotations

from gbmedia.bots import lib_conversation, lib_data, lib_dates, lib_files, lib_http, lib_media, lib_text, lib_web
from gbmedia.bots.registry import REGISTRY

MODULES = (lib_text, lib_dates, lib_conversation, lib_data, lib_files, lib_http, lib_web, lib_media)

__all__ = ["MODULES", "REGISTRY"]
