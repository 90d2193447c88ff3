"""REST routes of the dialog debugger under ``/api/v1/debugger`` (instance administrators only).

``POST /api/v1/debugger/runs`` starts a debug run of a stored dialog or of a source
given in the body (start); ``GET /api/v1/debugger/runs/{id}`` is getContext,
``DELETE`` the same path is stop; ``.../breakpoints`` sets or clears a breakpoint
(setBreakpoint), ``.../step`` and ``.../resume`` go on from a pause, ``.../messages``
answers the HEAR the run waits at (sendMessage); ``POST /api/v1/debugger/refactor``
renames a variable or FUNCTION, or reformats, and returns the new source.

The older platform's names answer too: ``POST /debuggerService/{name}`` with its body
shapes (``botId`` is the debug run's id, which start returns as ``botId``).
The operator names the instance with ``instance_id``; a run of another instance is 404
like a missing one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gbmedia.bots.debug.refactor import RefactorError, reformat, rename
from gbmedia.bots.debug.service import Debugger, TooManyDebugRuns
from gbmedia.bots.debug.session import DebugRun, DebugStateError
from gbmedia.bots.dialogs import MAX_SOURCE_BYTES, dialog_name
from gbmedia.bots.errors import BasicSyntaxError
from gbmedia.errors import ApiError, bad_request, conflict, not_found
from gbmedia.http.responses import json_response, query_uuid, read_model
from gbmedia.tenancy.auth import principal_of
from gbmedia.tenancy.gates import require_feature
from gbmedia.tenancy.models import Instance

DEBUGGER: web.AppKey[Debugger] = web.AppKey("debugger", Debugger)
MAX_LINE = 1_000_000


class DebugStart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    dialog: str | None = Field(default=None, min_length=1, max_length=100)
    source: str | None = Field(default=None, max_length=MAX_SOURCE_BYTES)
    breakpoints: list[int] = Field(default_factory=list, max_length=1000)
    stop_on_entry: bool = False
    engine: Literal["interp", "wasm"] | None = None  # None: the node's GBMEDIA_BOT_ENGINE


class BreakpointSet(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    line: int = Field(ge=1, le=MAX_LINE)
    enabled: bool = True


class DebugMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    text: str = Field(max_length=4096)


class Refactor(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    action: Literal["rename", "reformat"]
    source: str | None = Field(default=None, max_length=MAX_SOURCE_BYTES)
    dialog: str | None = Field(default=None, min_length=1, max_length=100)
    old: str | None = Field(default=None, min_length=1, max_length=100)
    new: str | None = Field(default=None, min_length=1, max_length=100)


class LegacyCall(BaseModel):
    """The older platform's debuggerService body: ``botId`` names the debug run; ``botApiKey`` is not used."""

    model_config = ConfigDict(extra="forbid", strict=True)

    botId: str | None = Field(default=None, max_length=100)  # the old names
    botApiKey: str | None = Field(default=None, max_length=1000)
    scriptName: str | None = Field(default=None, min_length=1, max_length=100)
    line: int | None = Field(default=None, ge=1, le=MAX_LINE)
    text: str | None = Field(default=None, max_length=4096)
    code: str | None = Field(default=None, max_length=MAX_SOURCE_BYTES)
    change: str | None = Field(default=None, max_length=200)


async def _instance(request: web.Request) -> Instance:
    """The instance the caller administers: its own, or the one the operator names."""
    principal = principal_of(request)
    principal.require_any("instance_admin")
    requested = query_uuid(request, "instance_id")
    instances = request.app[DEBUGGER].instances
    if principal.is_operator:
        if requested is None:
            raise bad_request("instance_id_required", "the operator must name the instance_id")
        return await instances.get(requested)  # 404 for none
    if requested is not None and requested != principal.instance_id:
        raise ApiError(404, "instance_not_found", "no such instance")
    assert principal.instance_id is not None
    return await instances.get(principal.instance_id)


def _run(request: web.Request, instance: Instance, raw: str | None) -> DebugRun:
    try:
        run_id = uuid.UUID(str(raw))
    except ValueError:
        raise not_found("debug_run", raw) from None
    run = request.app[DEBUGGER].get(instance.id, run_id)
    if run is None:
        raise not_found("debug_run", run_id)
    return run


async def _named_run(request: web.Request) -> DebugRun:
    """The debug run the path names, of the caller's instance (404 otherwise)."""
    return _run(request, await _instance(request), request.match_info["run_id"])


async def _acted(run: DebugRun, action: Awaitable[None]) -> web.Response:
    """The run's context after ``action`` (step, resume, a message); 409 when its state does not allow it."""
    try:
        await action
    except DebugStateError as exc:
        raise _state_error(exc) from None
    return json_response(_context(run))


def _state_error(exc: DebugStateError) -> ApiError:
    """409 with the run's reason (each code spelled out: the API's documentation is checked against them)."""
    if exc.code == "debug_run_waiting":
        return conflict("debug_run_waiting", str(exc))
    if exc.code == "debug_run_not_waiting":
        return conflict("debug_run_not_waiting", str(exc))
    if exc.code == "debug_run_not_paused":
        return conflict("debug_run_not_paused", str(exc))
    return conflict("debug_run_stopped", str(exc))


async def _source_of(request: web.Request, instance: Instance, dialog: str | None, source: str | None) -> str:
    if source is not None:
        if "\x00" in source:
            raise bad_request("invalid_content", "a dialog cannot contain the NUL character (U+0000)")
        return source
    if dialog is None:
        raise bad_request("debug_source_required", "name a stored dialog or give its source")
    return (await request.app[DEBUGGER].dialogs.get(instance.id, dialog)).source  # 404 dialog_not_found


async def _start(request: web.Request, instance: Instance, body: DebugStart) -> DebugRun:
    debugger = request.app[DEBUGGER]
    await require_feature(debugger.dialogs.pool, instance.id, "bots")
    source = await _source_of(request, instance, body.dialog, body.source)
    name = dialog_name(body.dialog or "debug")
    try:
        compiled = await debugger.compile(instance.id, name, source)
    except BasicSyntaxError as exc:
        raise ApiError(400, "bot_syntax_error", str(exc), exc.to_json()) from None
    try:
        return await debugger.start(instance, compiled, source, body.breakpoints, body.stop_on_entry, body.engine)
    except TooManyDebugRuns:
        raise ApiError(
            429,
            "debug_run_limit",
            f"this instance already holds {debugger.per_instance} debug runs; stop one first",
            {"limit": debugger.per_instance},
        ) from None


def _context(run: DebugRun) -> dict[str, Any]:
    body = run.context()
    body["source"] = run.source
    return body


async def start_run(request: web.Request) -> web.Response:
    instance = await _instance(request)
    run = await _start(request, instance, await read_model(request, DebugStart))
    return json_response(_context(run), status=201)


async def get_context(request: web.Request) -> web.Response:
    return json_response(_context(await _named_run(request)))


async def stop_run(request: web.Request) -> web.Response:
    run = await _named_run(request)
    await request.app[DEBUGGER].end(run)
    return json_response(_context(run))


async def set_breakpoint(request: web.Request) -> web.Response:
    run = await _named_run(request)
    body = await read_model(request, BreakpointSet)
    run.set_breakpoint(body.line, body.enabled)
    return json_response(_context(run))


async def step(request: web.Request) -> web.Response:
    run = await _named_run(request)
    return await _acted(run, run.step())


async def resume(request: web.Request) -> web.Response:
    run = await _named_run(request)
    return await _acted(run, run.resume())


async def send_message(request: web.Request) -> web.Response:
    run = await _named_run(request)
    body = await read_model(request, DebugMessage)
    return await _acted(run, run.send_message(body.text))


async def _refactored(request: web.Request, instance: Instance, body: Refactor) -> str:
    source = await _source_of(request, instance, body.dialog, body.source)
    name = dialog_name(body.dialog or "debug")
    sources = {d.name: d.source for d in await request.app[DEBUGGER].dialogs.list(instance.id)}

    def loader(included: str) -> str:
        return sources[dialog_name(included)]

    try:
        if body.action == "reformat":
            return reformat(source, name, loader)
        if body.old is None or body.new is None:
            raise bad_request("refactor_names_required", "a rename needs the old and the new name")
        return rename(source, body.old, body.new, name, loader)
    except BasicSyntaxError as exc:
        raise ApiError(400, "bot_syntax_error", str(exc), exc.to_json()) from None
    except RefactorError as exc:
        if exc.code == "refactor_name_taken":
            raise ApiError(409, "refactor_name_taken", str(exc)) from None
        if exc.code == "refactor_name_unknown":
            raise bad_request("refactor_name_unknown", str(exc)) from None
        if exc.code == "refactor_invalid_name":
            raise bad_request("refactor_invalid_name", str(exc)) from None
        raise ApiError(422, "refactor_unsafe", str(exc)) from None


async def refactor(request: web.Request) -> web.Response:
    instance = await _instance(request)
    body = await read_model(request, Refactor)
    return json_response({"source": await _refactored(request, instance, body)})


# --- the older platform's names ----------------------------------------------------------

RENAME = re.compile(r"^\s*rename\s+([A-Za-z_]\w*)\s+to\s+([A-Za-z_]\w*)\s*$", re.IGNORECASE)
LEGACY = ("start", "stop", "setBreakpoint", "step", "resume", "getContext", "sendMessage", "refactor")


async def legacy(request: web.Request) -> web.Response:
    """``/debuggerService/{name}``: the same actions with the old body shapes, ``botId`` for the run."""
    name = request.match_info["name"]
    if name not in LEGACY:
        raise ApiError(404, "not_found", f"no debuggerService/{name}; there are {', '.join(LEGACY)}")
    instance = await _instance(request)
    body = await read_model(request, LegacyCall)
    if name == "start":
        run = await _start(request, instance, DebugStart(dialog=body.scriptName, source=body.code))
        answer = _context(run)
        answer["botId"] = str(run.id)
        return json_response(answer, status=201)
    if name == "refactor":
        change = (body.change or "").strip()
        match = RENAME.fullmatch(change)
        if change.lower() == "reformat":
            call = Refactor(action="reformat", source=body.code, dialog=body.scriptName)
        elif match is not None:
            call = Refactor(action="rename", source=body.code, dialog=body.scriptName, old=match[1], new=match[2])
        else:
            raise bad_request("refactor_change_unknown", "change is 'reformat' or 'rename OLD to NEW'")
        return json_response({"source": await _refactored(request, instance, call)})
    run = _run(request, instance, body.botId)
    try:
        if name == "stop":
            await request.app[DEBUGGER].end(run)
        elif name == "setBreakpoint":
            if body.line is None:
                raise bad_request("debug_line_required", "setBreakpoint needs the line")
            run.set_breakpoint(body.line, True)
        elif name == "step":
            await run.step()
        elif name == "resume":
            await run.resume()
        elif name == "sendMessage":
            await run.send_message(body.text or "")
    except DebugStateError as exc:
        raise _state_error(exc) from None
    answer = _context(run)
    answer["botId"] = str(run.id)
    return json_response(answer)


def register(app: web.Application, debugger: Debugger) -> None:
    app[DEBUGGER] = debugger
    r = app.router
    r.add_post("/api/v1/debugger/runs", start_run)
    r.add_get("/api/v1/debugger/runs/{run_id}", get_context)
    r.add_delete("/api/v1/debugger/runs/{run_id}", stop_run)
    r.add_post("/api/v1/debugger/runs/{run_id}/breakpoints", set_breakpoint)
    r.add_post("/api/v1/debugger/runs/{run_id}/step", step)
    r.add_post("/api/v1/debugger/runs/{run_id}/resume", resume)
    r.add_post("/api/v1/debugger/runs/{run_id}/messages", send_message)
    r.add_post("/api/v1/debugger/refactor", refactor)
    r.add_post("/debuggerService/{name}", legacy)
