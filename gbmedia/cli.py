"""The ``gbmedia`` command: run a node, migrate, administer tenants, mint tokens.

Administrative commands talk to the database directly (the same embedded server a
running node uses, or ``GBMEDIA_DATABASE_URL``), so an operator on the machine
needs no token; they are audited as ``cli:<user>``. Output is JSON for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from gbmedia import __version__
from gbmedia.config import ConfigError, Settings, load_settings
from gbmedia.errors import ApiError
from gbmedia.http.responses import to_json
from gbmedia.tenancy.links import join_link
from gbmedia.tenancy.models import Actor
from gbmedia.tenancy.tokens import Grants


def _print(value: Any) -> None:
    print(json.dumps(to_json(value), indent=2))


def _uuid(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {raw!r}") from None


def _cli_actor() -> Actor:
    return Actor(f"cli:{getpass.getuser()}", "cli")


async def _with_tenancy(settings: Settings, work: Callable[[Any], Awaitable[Any]]) -> Any:
    from gbmedia.db.pool import Database
    from gbmedia.node import operator_token_for
    from gbmedia.tenancy.secrets import SecretBox
    from gbmedia.tenancy.service import Tenancy

    db = Database(settings)
    await db.open()
    try:
        tenancy = Tenancy.create(
            db.pool, settings, SecretBox.for_node(settings.secret_key, settings.data_dir), operator_token_for(settings)
        )
        return await work(tenancy)
    finally:
        await db.close()


# --- commands ---------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """One node in this process, or (several workers) a supervisor of worker processes."""
    from gbmedia import workers
    from gbmedia.logs import configure_logging
    from gbmedia.server import install_event_loop_policy, serve

    index = workers.worker_index()
    count = workers.worker_count(settings) if index is None else 1
    configure_logging(settings.log_level, settings.log_format)
    if count > 1:
        return workers.supervise(settings, count)
    if index is not None:
        workers.die_with_supervisor()
    install_event_loop_policy()
    # A worker shares the HTTP port with its siblings; a lone node binds it alone.
    asyncio.run(serve(settings, reuse_port=index is not None, dashboard_link=index is None))
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from gbmedia.db.pool import Database

    async def run() -> list[str]:
        db = Database(settings)
        await db.open(run_migrations=False)
        try:
            return [f"{m.version:04d}_{m.name}" for m in await db.migrate()]
        finally:
            await db.close()

    _print({"applied": asyncio.run(run())})
    return 0


def cmd_secret_key(args: argparse.Namespace, settings: Settings) -> int:
    from cryptography.fernet import Fernet

    print(Fernet.generate_key().decode())
    return 0


def cmd_customer_create(args: argparse.Namespace, settings: Settings) -> int:
    metadata = json.loads(args.metadata) if args.metadata else {}
    customer = asyncio.run(
        _with_tenancy(
            settings,
            lambda t: t.customers.create(
                _cli_actor(), args.name, args.tier, metadata=metadata, max_instances=args.max_instances
            ),
        )
    )
    _print(customer)
    return 0


def cmd_customer_list(args: argparse.Namespace, settings: Settings) -> int:
    _print(asyncio.run(_with_tenancy(settings, lambda t: t.customers.list(limit=args.limit))))
    return 0


def cmd_instance_create(args: argparse.Namespace, settings: Settings) -> int:
    instance, credentials = asyncio.run(
        _with_tenancy(
            settings,
            lambda t: t.instances.create(
                _cli_actor(), args.customer_id, args.name, region=args.region, locale=args.locale
            ),
        )
    )
    _print({"instance": instance, "credentials": credentials})
    return 0


def cmd_instance_list(args: argparse.Namespace, settings: Settings) -> int:
    _print(asyncio.run(_with_tenancy(settings, lambda t: t.instances.list(args.customer_id))))
    return 0


def cmd_instance_credentials(args: argparse.Namespace, settings: Settings) -> int:
    """Print the newest active key and its secret (the CLI runs with the node's key)."""

    async def work(tenancy: Any) -> dict[str, str]:
        signing = await tenancy.instances.newest_signing_key(args.instance_id)
        return {"instance_id": str(signing.instance.id), "key": signing.key, "secret": signing.secret}

    _print(asyncio.run(_with_tenancy(settings, work)))
    return 0


def cmd_instance_new_key(args: argparse.Namespace, settings: Settings) -> int:
    _print(
        asyncio.run(
            _with_tenancy(settings, lambda t: t.instances.create_key(_cli_actor(), args.instance_id, args.description))
        )
    )
    return 0


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    unknown = set(args.grant or []) - set(Grants.names())
    if unknown:
        raise ApiError(400, "unknown_grant", f"unknown grants {sorted(unknown)}; choose from {Grants.names()}")
    if args.grant:
        grants = Grants(room=args.room, **{g: True for g in args.grant})
    elif args.room:
        grants = Grants.participant(args.room)
    else:
        raise ApiError(400, "grants_required", "give --room (participant grants) or --grant")
    if args.url and (refusal := grants.link_refusal()) is not None:
        raise ApiError(400, "grant_not_linkable", refusal)
    ttl = args.ttl or settings.token_ttl_seconds
    token = asyncio.run(
        _with_tenancy(
            settings,
            lambda t: t.instances.mint(args.instance_id, args.identity, grants, name=args.name, ttl_seconds=ttl),
        )
    )
    if args.url:
        if not (grants.room and grants.room_join):
            raise ApiError(400, "url_needs_room", "a join link needs --room (or --grant room_join with --room)")
        print(join_link(settings.base_url(), token))
    else:
        print(token)
    return 0


def cmd_dashboard(args: argparse.Namespace, settings: Settings) -> int:
    """A new one-time login link to the dashboard of the node with these settings (the earlier one stops working)."""
    from gbmedia.tenancy.dashboard_login import LOGIN_TTL_SECONDS, issue_code, login_link

    print(login_link(settings.base_url(), issue_code(settings.data_dir)))
    print(f"(works once, for {LOGIN_TTL_SECONDS // 60} minutes)", file=sys.stderr)
    return 0


def cmd_drain(args: argparse.Namespace, settings: Settings) -> int:
    """Ask a node (and its workers) to drain through Redis; ``--wait`` until they have left."""
    if not settings.redis_url:
        raise ApiError(
            400, "not_clustered", "drain needs a cluster (GBMEDIA_REDIS_URL); a single node just stops on SIGTERM"
        )
    import itertools
    import time

    from gbmedia.node import redis_client_for
    from gbmedia.rooms.registry import NodeInfo, RedisRegistry

    target = args.node or settings.node_id

    async def run() -> list[str]:
        client = redis_client_for(settings)
        try:
            me = NodeInfo("cli", settings.region, "", "", "", settings.udp_ports, 1.0, 1.0)
            registry = RedisRegistry(client, me, ttl=settings.node_ttl_seconds)

            def matching(nodes: list[NodeInfo]) -> list[str]:
                return [n.node_id for n in nodes if n.node_id == target or n.node_id.startswith(f"{target}-w")]

            chosen = matching(await registry.live_nodes())
            if not chosen:
                raise ApiError(404, "node_not_found", f"no live node {target!r} (or its workers) in the registry")
            for node_id in chosen:
                await registry.request_drain(node_id)
            if not args.wait:
                return chosen
            deadline = time.monotonic() + (args.timeout or settings.drain_timeout + settings.node_ttl_seconds + 10)
            for _poll in itertools.count():
                left = matching(await registry.live_nodes())
                if not left:
                    return chosen
                if time.monotonic() > deadline:
                    raise ApiError(504, "drain_timeout", f"nodes still live: {left}")
                await asyncio.sleep(0.5)
            raise AssertionError("unreachable")
        finally:
            await client.aclose()

    _print({"drained" if args.wait else "drain_requested": asyncio.run(run())})
    return 0


# --- parser -----------------------------------------------------------------------


def cmd_bot_run(args: argparse.Namespace, settings: Settings) -> int:
    """A dialog in the terminal for its author; no server, no database (see gbmedia.bots.terminal)."""
    from pathlib import Path

    from gbmedia.bots.limits import Limits
    from gbmedia.bots.terminal import TerminalOptions
    from gbmedia.bots.terminal import main as run_in_terminal

    return run_in_terminal(
        TerminalOptions(
            file=Path(args.file),
            user=args.user,
            locale=args.locale,
            tables=Path(args.tables) if args.tables else None,
            files=Path(args.files) if args.files else None,
            allow=args.allow or [],
            limits=Limits.from_settings(settings),
            engine=args.engine,
        )
    )


def cmd_bot_compile(args: argparse.Namespace, settings: Settings) -> int:
    """A dialog compiled to a WebAssembly module (see gbmedia.bots.wasm_compiler)."""
    import sys
    from pathlib import Path

    from gbmedia.bots.terminal import compile_to_file

    return compile_to_file(Path(args.file), Path(args.output) if args.output else None, args.debug, sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gbmedia",
        description="gbmedia: self-hosted conferencing server. "
        "Settings come from GBMEDIA_* environment variables (see README).",
    )
    parser.add_argument("--version", action="version", version=f"gbmedia {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run a node (embedded PostgreSQL when no database URL is set)")
    serve.add_argument("--host", help="bind address (GBMEDIA_HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="HTTP port (GBMEDIA_PORT, default 7880; 0 picks a free one)")
    serve.add_argument(
        "--workers",
        type=int,
        help="node processes sharing the HTTP port (GBMEDIA_WORKERS; default: one per core with "
        "GBMEDIA_REDIS_URL, else 1; more than 1 needs GBMEDIA_REDIS_URL)",
    )
    serve.set_defaults(func=cmd_serve)

    drain = sub.add_parser(
        "drain", help="move a node's rooms to other nodes and let it exit (rolling upgrades; needs Redis)"
    )
    drain.add_argument("--node", help="node id (default GBMEDIA_NODE_ID); its workers <id>-wN drain too")
    drain.add_argument("--wait", action="store_true", help="wait until the node has left the registry")
    drain.add_argument("--timeout", type=float, help="seconds --wait waits (default: drain timeout + margin)")
    drain.set_defaults(func=cmd_drain)

    migrate = sub.add_parser("migrate", help="apply pending database migrations and exit")
    migrate.set_defaults(func=cmd_migrate)

    secret_key = sub.add_parser("secret-key", help="print a new value for GBMEDIA_SECRET_KEY")
    secret_key.set_defaults(func=cmd_secret_key)

    tenant = sub.add_parser("tenant", help="administer customers, instances and API keys")
    tsub = tenant.add_subparsers(dest="tenant_command", required=True, metavar="SUBCOMMAND")

    customer = tsub.add_parser("customer", help="create or list customers")
    csub = customer.add_subparsers(dest="customer_command", required=True, metavar="ACTION")
    c_create = csub.add_parser("create", help="create a customer with a subscription tier")
    c_create.add_argument("name")
    c_create.add_argument("--tier", default="free", help="free, starter, pro or enterprise (default free)")
    c_create.add_argument("--max-instances", type=int, help="override the tier's instance quota")
    c_create.add_argument("--metadata", help="JSON object stored with the customer")
    c_create.set_defaults(func=cmd_customer_create)
    c_list = csub.add_parser("list", help="list customers")
    c_list.add_argument("--limit", type=int, default=100)
    c_list.set_defaults(func=cmd_customer_list)

    instance = tsub.add_parser("instance", help="create or list instances, show or add API keys")
    isub = instance.add_subparsers(dest="instance_command", required=True, metavar="ACTION")
    i_create = isub.add_parser("create", help="create an instance and print its first API key and secret")
    i_create.add_argument("customer_id", type=_uuid)
    i_create.add_argument("name")
    i_create.add_argument("--region", help="default: GBMEDIA_REGION")
    i_create.add_argument("--locale", default="en")
    i_create.set_defaults(func=cmd_instance_create)
    i_list = isub.add_parser("list", help="list a customer's instances")
    i_list.add_argument("customer_id", type=_uuid)
    i_list.set_defaults(func=cmd_instance_list)
    i_creds = isub.add_parser("credentials", help="print the instance's newest API key and its secret")
    i_creds.add_argument("instance_id", type=_uuid)
    i_creds.set_defaults(func=cmd_instance_credentials)
    i_key = isub.add_parser("new-key", help="add an API key to the instance and print it with its secret")
    i_key.add_argument("instance_id", type=_uuid)
    i_key.add_argument("--description", default="")
    i_key.set_defaults(func=cmd_instance_new_key)

    token = sub.add_parser("token", help="print a JWT access token for an instance")
    token.add_argument("--instance", dest="instance_id", type=_uuid, required=True)
    token.add_argument("--identity", required=True, help="participant identity (the token's sub)")
    token.add_argument("--name", help="display name (default: the identity)")
    token.add_argument("--room", help="room name; alone it grants join, publish, subscribe, data")
    token.add_argument(
        "--grant",
        action="append",
        choices=Grants.names(),
        help="a grant to include (repeatable); replaces the participant defaults",
    )
    token.add_argument("--ttl", type=int, help="lifetime in seconds (default GBMEDIA_TOKEN_TTL_SECONDS)")
    token.add_argument(
        "--url",
        action="store_true",
        help="print a join link to the room page (base: GBMEDIA_PUBLIC_URL) instead of the token",
    )
    token.set_defaults(func=cmd_token)

    dashboard = sub.add_parser(
        "dashboard", help="print a one-time login link to the operator dashboard (base: GBMEDIA_PUBLIC_URL)"
    )
    dashboard.set_defaults(func=cmd_dashboard)

    bot = sub.add_parser("bot", help="work on GB BASIC dialogs")
    bsub = bot.add_subparsers(dest="bot_command", required=True, metavar="ACTION")
    b_run = bsub.add_parser(
        "run", help="run a dialog in the terminal: TALK prints, HEAR reads a line of stdin (no server needed)"
    )
    b_run.add_argument("file", help="the dialog (.bas); INCLUDE and GO TO find NAME.bas beside it")
    b_run.add_argument("--user", default="author", help="the user's id and name the dialog sees (default author)")
    b_run.add_argument("--locale", default="en", help="the run's locale: HEAR's re-asks and formats (default en)")
    b_run.add_argument("--tables", help="a JSON scratch file keeping the tables between runs (default: memory)")
    b_run.add_argument("--files", help="the dialog's files directory (default: a temporary one, removed after)")
    b_run.add_argument("--allow", action="append", metavar="CIDR", help="a private network HTTP may reach (repeatable)")
    b_run.add_argument(
        "--engine",
        choices=["wasm", "interp"],
        default="wasm",
        help="wasm: compiled to WebAssembly and run in wasmtime (default); interp: the interpreter",
    )
    b_run.set_defaults(func=cmd_bot_run)
    b_compile = bsub.add_parser("compile", help="compile a dialog to a WebAssembly module (.wasm)")
    b_compile.add_argument("file", help="the dialog (.bas); INCLUDEs are read from NAME.bas beside it")
    b_compile.add_argument("-o", "--output", help="the module's path (default: FILE with .wasm)")
    b_compile.add_argument("--debug", action="store_true", help="call the line hook at every statement")
    b_compile.set_defaults(func=cmd_bot_compile)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(
            host=getattr(args, "host", None), port=getattr(args, "port", None), workers=getattr(args, "workers", None)
        )
        return int(args.func(args, settings))
    except ConfigError as exc:
        print(f"gbmedia: {exc}", file=sys.stderr)
        return 2
    except ApiError as exc:
        print(f"gbmedia: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except json.JSONDecodeError as exc:
        print(f"gbmedia: invalid JSON: {exc}", file=sys.stderr)
        return 2
