"""Run one node until SIGTERM or SIGINT, then drain and stop cleanly.

On a signal the listening socket closes first (a load balancer's health check now
fails and new connections go elsewhere), in-flight requests get up to
``GBMEDIA_SHUTDOWN_TIMEOUT`` seconds to finish, then the pool and the embedded
database stop. The process exits 0, so an orchestrator sees a clean stop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys

from aiohttp import web

from gbmedia.app import create_app
from gbmedia.config import Settings
from gbmedia.node import Node
from gbmedia.tenancy.dashboard_login import LOGIN_TTL_SECONDS, issue_code, login_link

log = logging.getLogger(__name__)


def public_url(settings: Settings, port: int) -> str:
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = settings.public_host or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def dashboard_line(settings: Settings, url: str) -> str:
    """The line that takes the operator into the dashboard, logged in: a fresh one-time link
    (``GBMEDIA_DASHBOARD_LOGIN_LINK``; off, only where the dashboard is and how to get a link)."""
    if not settings.dashboard_login_link:
        return f"dashboard at {url}/web/dashboard/ (`gbmedia dashboard` prints a one-time login link)"
    code = issue_code(settings.data_dir)
    return f"open the dashboard (one-time login link, {LOGIN_TTL_SECONDS // 60} minutes): {login_link(url, code)}"


async def serve(
    settings: Settings, *, ready_line: bool = True, reuse_port: bool = False, dashboard_link: bool = True
) -> None:
    """Run the node until SIGTERM or SIGINT.

    ``reuse_port``: this process is one of several workers (:mod:`gbmedia.workers`)
    listening on the same port with SO_REUSEPORT; the kernel spreads new
    connections over them. ``dashboard_link``: print a one-time dashboard login link; a
    worker does not (its supervisor prints one for all, and a worker's would replace it).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    node = await Node.start(settings)
    runner = web.AppRunner(
        create_app(node), access_log=None, shutdown_timeout=settings.shutdown_timeout, handle_signals=False
    )
    try:
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port or None)
        await site.start()
        port = runner.addresses[0][1] if runner.addresses else settings.port
        url = public_url(settings, port)
        log.info("listening", extra={"url": url, "host": settings.host, "port": port})
        await node.member.serve_at(url, await _internal_url(runner, node, settings))
        freeze_startup_heap()
        if ready_line:
            # The one line a person (or a test) waits for; stdout, not the log stream.
            print(f"gbmedia listening on {url}", flush=True)
            print(
                f"operator token in {settings.data_dir / 'operator.token'}"
                if not settings.operator_token
                else "operator token from GBMEDIA_OPERATOR_TOKEN",
                flush=True,
            )
            if dashboard_link:
                print(await asyncio.to_thread(dashboard_line, settings, url), flush=True)  # writes a file
        await _until_stopped(stop, node)
        if settings.clustered and not node.member.drained.is_set():
            # Rooms move to other nodes before this one goes: meetings continue (rolling upgrades).
            await node.member.start_drain(settings.drain_timeout)
        log.info("shutting down", extra={"drain_seconds": settings.shutdown_timeout})
    finally:
        await runner.cleanup()
        await node.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _internal_url(runner: web.AppRunner, node: Node, settings: Settings) -> str:
    """Open the cluster listener (a node with Redis) and return the URL other nodes relay to.

    It is a second site of the same application: each worker of a machine shares the
    public port, so relays need an address that reaches this very process.
    """
    if not settings.clustered:
        return ""
    site = web.TCPSite(runner, settings.cluster_host or settings.host, settings.cluster_port)
    await site.start()
    bound = runner.addresses[-1][1]  # the site just started (its port, when 0 was asked for)
    # A specific cluster bind address is what other nodes reach; else the node's media address.
    chosen = settings.cluster_host or settings.host
    host = chosen if chosen not in ("0.0.0.0", "::", "") else node.media_address.advertised
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{bound}"
    log.info("cluster listener", extra={"internal_url": url})
    return url


async def _until_stopped(stop: asyncio.Event, node: Node) -> None:
    """Until SIGTERM/SIGINT, or until an operator's drain (``gbmedia drain``) has finished."""
    signalled = asyncio.ensure_future(stop.wait())
    drained = asyncio.ensure_future(node.member.drained.wait())
    try:
        await asyncio.wait({signalled, drained}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        signalled.cancel()
        drained.cancel()


def freeze_startup_heap() -> None:
    """Leave what the node built at startup out of every later garbage collection.

    Everything imported and built before the node listens (modules, the app, pools,
    caches) lives as long as the process. Python's collector still walks all of it
    in each full collection, which it runs more often the more a busy node
    allocates: the chat benchmark saw those pauses as its slowest deliveries
    (2,000 messages/s: p99 263 ms with them, 118 ms with the startup heap frozen).
    Objects made later are collected as before.
    """
    gc.collect()
    gc.freeze()


def install_event_loop_policy() -> None:
    if sys.platform != "win32":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
