"""The keyword API: ``POST /api/v1/keywords/{group}/{name}`` calls a GB BASIC built-in over HTTP.

The body is a JSON object of the keyword's named arguments (``{"text": "a1b2"}``; a
variadic argument takes a list), the answer ``{"group", "keyword", "result"}``. The
built-in is the very one dialogs call (gbmedia/bots/registry.py), so both agree.

Who may call: the instance's administrators (``instance_admin``; the operator names the
``instance_id``), and a dialog run's token (``getCustomToken``), whose calls act on that
run's instance, conversation and user. The context a keyword runs in is built from the
credential's instance only: no argument can name another tenant's data.

Errors: 404 ``keyword_not_found``; 400 ``keyword_argument_missing`` /
``keyword_argument_unknown`` / ``keyword_argument_invalid`` naming the argument, 400
``keyword_failed`` when the keyword refuses its input (its message says why), 400
``keyword_limit_exceeded`` past a sandbox limit; 409 ``keyword_dialog_only`` for what only
a running dialog can do (HEAR, SET...), 409 ``keyword_run_required`` for what needs a run's
token (TALK...), 409 ``provider_not_configured`` naming the instance setting an outside
service needs.

The old platform's paths answer too: ``POST /systemKeywords/<name>``,
``/dialogKeywords/<name>``, ``/imageProcessing/<name>``, ``/webAutomation/<name>``, with
the same bearer credentials (their ``pid`` argument, the old dialog id, is ignored).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gbmedia.bots.chat_port import ChatPort, InstancePeople, LogPort, write_log
from gbmedia.bots.context import Context
from gbmedia.bots.errors import Fault
from gbmedia.bots.host import UserInfo
from gbmedia.bots.keywords import DIALOG_ONLY, NEEDS_RUN, OLD_PREFIXES, resolve
from gbmedia.bots.library import REGISTRY
from gbmedia.bots.limits import OverLimit
from gbmedia.bots.providers import ProviderNotConfigured
from gbmedia.bots.registry import Builtin
from gbmedia.bots.service import Bots
from gbmedia.errors import ApiError, bad_request, conflict
from gbmedia.http.responses import json_response, parse_json_body, query_uuid
from gbmedia.tenancy.auth import principal_of
from gbmedia.tenancy.gates import require_feature
from gbmedia.tenancy.models import Principal

OLD_ONLY_ARGUMENTS = {"pid"}  # the old platform's dialog id: every old call carried it


class RunRequired(Exception):
    """A keyword needs a conversation and its user: a dialog run's token, not an instance's."""


@dataclass
class InstancePort:
    """The conversation port of a keyword called with an instance's token: there is no conversation."""

    pool: Any
    instance_id: uuid.UUID
    user: UserInfo | None = None
    said: list[str] = field(default_factory=list)

    async def talk(self, text: str) -> None:
        raise RunRequired("talk")

    async def send(self, channel: str, to: str, payload: dict[str, Any]) -> None:
        raise RunRequired(channel)

    async def transfer(self, to: str | None) -> None:
        raise RunRequired("transferTo")

    async def log(self, level: str, text: str) -> None:
        await write_log(self.pool, self.instance_id, level, text, {"keyword_api": True})

    async def user_of(self, name: str) -> dict[str, Any] | None:
        return await InstancePeople(self.pool, self.instance_id).user_of(name)

    async def set_param(self, name: str, value: Any) -> None:
        raise RunRequired("setUserParam")


def arguments(entry: Builtin, body: dict[str, Any], old_path: bool) -> list[Any]:
    """The body's named arguments as the built-in's positional ones, or 400 naming the argument at fault."""
    known = {p.name for p in entry.params}
    for key in body:
        if key not in known and not (old_path and key in OLD_ONLY_ARGUMENTS):
            raise bad_request(
                "keyword_argument_unknown",
                f"{entry.name} has no argument {key!r} (it takes {entry.arity_text()})",
                argument=key,
            )
    args: list[Any] = []
    skipped: str | None = None
    for param in entry.params:
        if param.variadic:
            value = body.get(param.name, [])
            if not isinstance(value, list):
                raise bad_request(
                    "keyword_argument_invalid", f"{param.name} of {entry.name} is a list", argument=param.name
                )
            if value and skipped:
                raise bad_request("keyword_argument_missing", f"{entry.name} needs {skipped}", argument=skipped)
            args.extend(value)
        elif param.name in body:
            if skipped:
                raise bad_request(
                    "keyword_argument_missing", f"{entry.name} needs {skipped} before {param.name}", argument=skipped
                )
            args.append(body[param.name])
        elif param.optional:
            skipped = skipped or param.name
        else:
            raise bad_request("keyword_argument_missing", f"{entry.name} needs {param.name}", argument=param.name)
    return args


@dataclass
class KeywordsApi:
    bots: Bots
    authenticate: Callable[[web.Request], Awaitable[str]]  # the API middleware's, for the old paths outside /api/

    async def instance_of(self, request: web.Request, principal: Principal) -> uuid.UUID:
        """The instance the keyword runs in: the run token's, the token's instance, or the one the operator names."""
        requested = query_uuid(request, "instance_id")
        if principal.run is None:
            principal.require_any("instance_admin")
        if principal.is_operator:
            if requested is None:
                raise bad_request("instance_id_required", "the operator must name the instance_id")
            return (await self.bots.engine.runner.instances.get(requested)).id  # 404 for none
        if requested is not None and requested != principal.instance_id:
            raise ApiError(404, "instance_not_found", "no such instance")
        assert principal.instance_id is not None
        return principal.instance_id

    async def port(self, principal: Principal, instance_id: uuid.UUID) -> Any:
        pool = self.bots.engine.pool
        run = principal.run
        if run is None:
            return InstancePort(pool, instance_id)
        if run.conversation_id is None:
            return LogPort(pool, instance_id, run.dialog, UserInfo(run.user) if run.user else None)
        bot = await pool.fetchval(
            """SELECT m.identity FROM conversation_members m JOIN conversations c ON c.id = m.conversation_id
                WHERE c.id = $1 AND c.instance_id = $2 AND m.role = 'bot' ORDER BY m.joined_at LIMIT 1""",
            run.conversation_id,
            instance_id,
        )
        if bot is None:
            raise conflict("keyword_run_required", "the run's conversation has no bot any more")
        user = UserInfo(run.user) if run.user else None
        port = ChatPort(pool, self.bots.engine.chat.messages, instance_id, run.conversation_id, bot, user, answering=0)
        port.key = f"kw.{uuid.uuid4().hex}"
        port.dialog = run.dialog
        return port

    async def call(self, request: web.Request, group: str, name: str, old_path: bool = False) -> web.Response:
        found = resolve(group, name)
        if found is None:
            raise ApiError(404, "keyword_not_found", f"the {group} keywords have no {name}")
        canonical, entry = found
        principal = principal_of(request)
        instance_id = await self.instance_of(request, principal)
        await require_feature(self.bots.engine.pool, instance_id, "bots")
        body = parse_json_body(await request.read()) if request.can_read_body else {}
        if canonical in DIALOG_ONLY or (entry is None and canonical != "exit"):
            raise conflict("keyword_dialog_only", f"{canonical} changes a running dialog; only the dialog can run it")
        if canonical in NEEDS_RUN and principal.run is None:
            raise conflict("keyword_run_required", f"{canonical} acts on a conversation: call it with a run's token")
        if entry is None:  # exit, with a run's token: the run ends
            return json_response({"group": group, "keyword": canonical, "result": await self.exit_run(principal)})
        args = arguments(entry, body, old_path)
        engine = self.bots.engine
        instance = await engine.runner.instance(instance_id)
        dialog = principal.run.dialog if principal.run else "keywords"
        ctx: Context = engine.runner.context(instance, dialog, await self.port(principal, instance_id))
        ctx.over_http = True
        if ctx.web is not None:  # web automation: the caller's pages last across its calls, until closeHandles
            run = principal.run
            ctx.web.keep_for(f"{principal.actor.kind}:{principal.actor.name}:{run.dialog if run else ''}")
        if principal.run is None:
            ctx.run_token = None
        try:
            result = await REGISTRY.call(entry.name, ctx, args)
        except OverLimit as exc:
            raise bad_request("keyword_limit_exceeded", str(exc), limit=exc.limit) from None
        except ProviderNotConfigured as exc:
            raise conflict("provider_not_configured", str(exc)) from None
        except RunRequired:
            raise conflict("keyword_run_required", f"{canonical} acts on a conversation: use a run's token") from None
        except Fault as exc:
            details = {"argument": entry.params[0].name} if len(entry.params) == 1 else {}
            raise bad_request("keyword_failed", f"{canonical}: {exc}", **details) from None
        if ctx.goto is not None and principal.run is not None:  # gotoDialog: the run's user is in that dialog now
            result = await self.goto(principal, ctx.goto)
        transferred = getattr(ctx.port, "transferred", None)
        if transferred is not None and principal.run is not None and principal.run.conversation_id is not None:
            assert principal.run.user is not None
            await engine.transfer(instance_id, principal.run.conversation_id, principal.run.user, transferred[0])
        return json_response({"group": group, "keyword": canonical, "result": result})

    async def exit_run(self, principal: Principal) -> Any:
        run = principal.run
        assert run is not None
        engine = self.bots.engine
        if run.conversation_id is None or run.user is None:
            return None
        found = await engine.run_of(run.instance_id, run.conversation_id, run.user)
        if found is None:
            return None
        stopped = await engine.stop_run(run.instance_id, found["id"])
        return stopped

    async def goto(self, principal: Principal, dialog: str) -> Any:
        run = principal.run
        assert run is not None
        if run.conversation_id is None or run.user is None:
            raise conflict("keyword_run_required", "gotoDialog needs a run with a conversation")
        await self.bots.dialogs.get(run.instance_id, dialog)  # 404 dialog_not_found
        return await self.bots.engine.start_run(run.conversation_id, run.user, dialog)

    async def handle(self, request: web.Request) -> web.Response:
        return await self.call(request, request.match_info["group"], request.match_info["name"])

    async def handle_old(self, request: web.Request) -> web.Response:
        """The old platform's paths: authenticated here (the middleware authenticates /api/ only)."""
        await self.authenticate(request)
        prefix = request.path.strip("/").split("/", 1)[0]
        return await self.call(request, OLD_PREFIXES[prefix], request.match_info["name"], old_path=True)


KEYWORDS: web.AppKey[KeywordsApi] = web.AppKey("keywords", KeywordsApi)


def register(app: web.Application, api: KeywordsApi) -> None:
    app[KEYWORDS] = api
    app.router.add_post("/api/v1/keywords/{group}/{name}", api.handle)
    for prefix in OLD_PREFIXES:
        app.router.add_post(f"/{prefix}/{{name}}", api.handle_old)
