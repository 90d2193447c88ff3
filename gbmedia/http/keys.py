"""Typed keys for what the application and each request carry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gbmedia.node import Node
    from gbmedia.tenancy.models import Principal

NODE: web.AppKey[Node] = web.AppKey("node")
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal")
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]
