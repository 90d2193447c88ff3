"""``/api/v1/nodes``: the cluster's live nodes and their load, and draining one (operator only).

What the operator's dashboard and autoscaler scripts read; draining is how a node
leaves for an upgrade without ending the meetings on it (rooms/cluster.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web

from gbmedia.errors import ApiError, forbidden
from gbmedia.http.responses import json_response
from gbmedia.rooms.registry import NodeInfo, NodeRegistry
from gbmedia.tenancy import audit
from gbmedia.tenancy.auth import principal_of


@dataclass(frozen=True)
class NodesApi:
    registry: NodeRegistry
    pool: asyncpg.Pool  # the audit log
    clustered: bool  # with Redis: a drained node's rooms have somewhere to go


NODES_API: web.AppKey[NodesApi] = web.AppKey("nodes_api", NodesApi)


def node_json(node: NodeInfo) -> dict[str, Any]:
    return {**node.to_json(), "load_share": round(node.load_share, 4)}


def _operator(request: web.Request) -> None:
    if not principal_of(request).is_operator:
        raise forbidden("operator_required", "only the operator may do this")


async def list_nodes(request: web.Request) -> web.Response:
    _operator(request)
    nodes = await request.app[NODES_API].registry.live_nodes()
    return json_response({"nodes": [node_json(n) for n in nodes]})


async def drain_node(request: web.Request) -> web.Response:
    _operator(request)
    api = request.app[NODES_API]
    if not api.clustered:
        raise ApiError(
            409, "not_clustered", "a single node has nowhere to move its rooms; stop it with SIGTERM instead"
        )
    node_id = request.match_info["node_id"]
    node = await api.registry.get(node_id)
    if node is None:
        raise ApiError(404, "node_not_found", f"no live node {node_id[:128]!r}")
    await api.registry.request_drain(node_id)
    async with api.pool.acquire() as conn:
        await audit.record(conn, principal_of(request).actor, "node.drain", "node", node_id)
    return json_response({"node_id": node_id, "drain_requested": True}, status=202)


def register(app: web.Application, api: NodesApi) -> None:
    app[NODES_API] = api
    app.router.add_get("/api/v1/nodes", list_nodes)
    app.router.add_post("/api/v1/nodes/{node_id}/drain", drain_node)
