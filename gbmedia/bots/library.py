"""Every GB BASIC built-in, registered: import this module to get the full registry."""

from __future__ import annotations

from gbmedia.bots import (
    keywords,
    lib_conversation,
    lib_data,
    lib_dates,
    lib_docs,
    lib_files,
    lib_http,
    lib_image,
    lib_keywords,
    lib_media,
    lib_providers,
    lib_storage,
    lib_system,
    lib_text,
    lib_web,
)
from gbmedia.bots.registry import REGISTRY

MODULES = (
    lib_text,
    lib_dates,
    lib_conversation,
    lib_data,
    lib_files,
    lib_docs,
    lib_image,
    lib_http,
    lib_keywords,
    lib_storage,
    lib_system,
    lib_providers,
    lib_web,
    lib_media,
)
keywords.register_aliases()

__all__ = ["MODULES", "REGISTRY"]
