"""Typed keys for what every request carries, whatever module serves it."""

from __future__ import annotations

from aiohttp import web

REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")
