"""The keyword API (issue 18): every keyword over HTTP, the same as in BASIC, with its argument errors.

One node per test, many keywords per test: the table below runs each keyword through
``POST /api/v1/keywords/{group}/{name}`` and through a dialog on the same instance
(the same registry entry, the same context builder), and compares the two answers.
"""

from __future__ import annotations

import base64
import io
import json
import re
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gbmedia.app import NODE
from gbmedia.bots import keywords
from gbmedia.bots.compiler import load
from gbmedia.bots.host import MemoryPort, UserInfo
from gbmedia.bots.library import REGISTRY
from gbmedia.bots.machine import converse
from tests.bots.chat import BOT, as_user, bot_conversation, upload
from tests.helpers import OPERATOR, Tenant, bearer, create_tenant

Check = Any  # the expected answer, or a predicate over it (random ids, today's date)
CASES: list[tuple[str, str, dict[str, Any], Check]] = [
    ("system", "append", {"list": [1], "items": [2, [3]]}, [1, 2, 3]),
    ("system", "sortBy", {"list": [{"n": "b"}, {"n": "A"}], "member": "n"}, [{"n": "A"}, {"n": "b"}]),
    ("system", "JSONAsGBTable", {"data": [{"a": 1}, {"a": 2, "b": 3}]}, [["a", "b"], [1, None], [2, 3]]),
    (
        "system",
        "executeSQL",
        {
            "data": [{"name": "Ana", "age": 31}, {"name": "Bo", "age": 20}],
            "sql": "SELECT name FROM data WHERE age > 30",
        },
        [{"name": "Ana"}],
    ),
    ("system", "executeSQL", {"data": [{"n": 2}, {"n": 3}], "sql": "SELECT sum(n) AS total FROM ?"}, [{"total": 5}]),
    ("system", "executeSQL", {"data": {"n": 1}, "sql": "SELECT n * 2 AS twice FROM data"}, [{"twice": 2}]),
    ("system", "getRandomId", {"length": 6}, lambda v: re.fullmatch(r"[A-HJ-NP-Z2-9]{6}", v)),
    ("system", "generatePassword", {"length": 16}, lambda v: isinstance(v, str) and len(v) == 16),
    ("system", "isValidDate", {"text": "2026-02-30"}, False),
    ("system", "isValidNumber", {"value": "12.5"}, True),
    ("system", "isValidHour", {"text": "23:59"}, True),
    ("system", "isValidHour", {"text": "24:10"}, False),
    ("system", "getFilter", {"filter": "age>=18"}, {"field": "age", "op": ">=", "value": "18"}),
    (
        "system",
        "find",
        {"table": [{"city": "São Paulo"}, {"city": "Rio"}], "filters": ["city=SAO PAULO"]},
        {"city": "São Paulo"},
    ),
    ("system", "getDateFromLocaleString", {"text": "12/31/2026"}, "2026-12-31"),
    ("system", "flattenJSON", {"object": {"a": {"b": 1}, "c": [5]}}, {"a_b": 1, "c_0": 5}),
    ("system", "numberOnly", {"text": "(11) 98-7"}, "11987"),
    ("system", "numberToLetters", {"number": 26}, "AA"),
    ("system", "numberToLetters", {"number": 0}, "A"),
    ("system", "getExtensionInfo", {"name": "report.PDF"}, {"extension": "pdf", "type": "application/pdf"}),
    ("system", "mid", {"text": "abcdef", "start": 2, "length": 2}, "bc"),
    ("system", "getUser", {"name": "nobody"}, None),
    ("dialog", "getToday", {}, lambda v: re.fullmatch(r"\d\d/\d\d/\d{4}", v)),
    ("dialog", "getNow", {}, lambda v: re.fullmatch(r"\d\d:\d\d", v)),
    ("dialog", "getContentLocaleWithCulture", {"locale": "pt"}, "pt-BR"),
    ("dialog", "getContentLocaleWithCulture", {"locale": "en_gb"}, "en-GB"),
    ("dialog", "getCoded", {"text": "hi"}, "aGk="),
    ("dialog", "getWeekFromDate", {"date": "2026-12-06"}, "Sunday"),
    ("dialog", "getDateDiff", {"date1": "2026-01-01", "date2": "2026-01-31", "unit": "day"}, lambda v: abs(v) == 30),
    ("dialog", "format", {"value": "2026-12-06", "pattern": "dd/MM/yyyy"}, "06/12/2026"),
    ("dialog", "dateAdd", {"date": "2026-01-31", "unit": "month", "amount": 1}, "2026-02-28"),
    ("dialog", "getHourFromDate", {"date": "2026-12-06T10:30:00"}, 10),
    ("dialog", "getToLst", {"list": [{"n": "a"}, {"n": "b"}], "member": "n"}, "a, b"),
    ("dialog", "getConfig", {"name": "color"}, None),
    # callVM: the dialogs TAX (below) stores before the table runs.
    ("system", "callVM", {"dialog": "tax", "function": "due", "args": [10, 50]}, 15),
    ("system", "callVM", {"dialog": "tax"}, {"rate": 0.1, "label": "tax"}),
    ("system", "createDocument", {"content": [{"a": 1}], "target": "letters/hi"}, "letters/hi.docx"),
    ("system", "internalCreateDocument", {"content": "Dear Ana", "target": "letters/ana.docx"}, "letters/ana.docx"),
    (
        "system",
        "internalGetDocument",
        {"name": "letters/hi.docx"},
        lambda v: (
            (v["name"], v["type"], base64.b64decode(v["data"])[:2], v["size"] > 0) == ("hi.docx", DOCX, b"PK", True)
        ),
    ),
    (
        "system",
        "autoSave",
        {"file": {"name": "note.txt", "data": "aGk="}},
        lambda v: re.fullmatch(r"autosave/\d{4}-\d\d-\d\d/note(-\d)?\.txt", v),
    ),
    ("system", "internalAutoSave", {"file": {"name": "a/b.txt", "data": ""}}, lambda v: re.search(r"/b(-2)?\.txt$", v)),
]
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
TAX = 'rate = 0.1\nlabel = "tax"\nFUNCTION due(a, b)\n  RETURN a + b * 0.1\nEND FUNCTION\n'


def basic_literal(value: Any) -> str:
    """A BASIC expression that gives ``value``: parseJSON of its JSON text."""
    return 'parseJSON("' + json.dumps(value).replace('"', '""') + '")'


def basic_call(name: str, body: dict[str, Any]) -> str:
    entry = REGISTRY.get(name)
    assert entry is not None, name
    args: list[str] = []
    for param in entry.params:
        if param.name in body:
            values = body[param.name] if param.variadic else [body[param.name]]
            args += [basic_literal(v) for v in values]
    if entry.bare:  # x = FIND t, "a=1": the form BASIC writes without parentheses
        return f"{name} {', '.join(args)}"
    return f"{name}({', '.join(args)})"


async def run_basic(client: TestClient, tenant: Tenant, source: str) -> MemoryPort:
    """Run a dialog on the tenant's instance, in the context a node gives its runs."""
    runner = client.app[NODE].bots.engine.runner
    instance = await runner.instance(uuid.UUID(tenant.instance_id))
    port = MemoryPort(user=UserInfo("alice"))
    outcome = await converse(load(source, "t"), runner.context(instance, "t", port), [])
    assert outcome.status == "done", outcome.error
    return port


async def keyword(
    client: TestClient, group: str, name: str, body: Any, headers: dict[str, str], status: int = 200
) -> dict[str, Any]:
    resp = await client.post(f"/api/v1/keywords/{group}/{name}", json=body, headers=headers)
    answer = await resp.json()
    assert resp.status == status, answer
    return answer


def check(expected: Check, value: Any) -> bool:
    return bool(expected(value)) if callable(expected) else value == expected


async def test_each_keyword_answers_over_http_as_it_does_in_basic(client: TestClient, tenant: Tenant):
    await upload(client, tenant, "tax", TAX)
    for group, name, body, expected in CASES:
        answer = await keyword(client, group, name, body, tenant.admin)
        assert (answer["group"], answer["keyword"]) == (group, name)
        assert check(expected, answer["result"]), (name, body, answer)
        said = (await run_basic(client, tenant, f"x = {basic_call(name, body)}\nTALK json(x)")).said
        through_basic = json.loads(said[0])
        assert check(expected, through_basic), (name, body, through_basic)
        if not callable(expected):
            assert through_basic == answer["result"], name
    # The old platform's paths answer the same, and ignore its dialog id (pid).
    resp = await client.post("/systemKeywords/numberOnly", json={"text": "a1b2", "pid": 7}, headers=tenant.admin)
    assert (resp.status, (await resp.json())["result"]) == (200, "12")
    resp = await client.post("/dialogKeywords/getCoded", json={"text": "hi"}, headers=tenant.admin)
    assert (await resp.json())["result"] == "aGk="


async def test_every_keyword_names_its_missing_or_unknown_argument(client: TestClient, tenant: Tenant):
    served = [(g, n) for g in keywords.GROUPS for n in keywords.names(g)]
    checked = 0
    for group, name in served:
        found = keywords.resolve(group, name)
        if found is None or found[1] is None or name in keywords.DIALOG_ONLY:
            continue
        entry = found[1]
        if name in keywords.NEEDS_RUN:
            continue
        required = [p.name for p in entry.params if not p.optional and not p.variadic]
        if required:
            answer = await keyword(client, group, name, {}, tenant.admin, 400)
            assert answer["error"]["code"] == "keyword_argument_missing", (name, answer)
            assert answer["error"]["details"]["argument"] == required[0], name
        answer = await keyword(client, group, name, {"bogus": 1}, tenant.admin, 400)
        assert answer["error"]["details"]["argument"] == "bogus", name
        checked += 1
    assert checked > 60
    # A variadic argument is a list; an optional one cannot be skipped when a later one is given.
    answer = await keyword(client, "system", "append", {"list": [], "items": 3}, tenant.admin, 400)
    assert (answer["error"]["code"], answer["error"]["details"]["argument"]) == ("keyword_argument_invalid", "items")
    answer = await keyword(client, "system", "mid", {"text": "abc", "length": 1}, tenant.admin, 400)
    assert answer["error"]["details"]["argument"] == "start"
    answer = await keyword(client, "system", "getRandomId", {}, tenant.admin)
    assert len(answer["result"]) == 8  # an optional argument left out: its default
    body = {"text": "abc", "start": 1, "length": 1}
    assert (await keyword(client, "system", "mid", body, tenant.admin))["result"] == "a"
    # A keyword that refuses its input says why, naming its argument when it has one.
    answer = await keyword(client, "system", "numberToLetters", {"number": "ten"}, tenant.admin, 400)
    assert answer["error"]["code"] == "keyword_failed"
    assert answer["error"]["details"]["argument"] == "number"
    answer = await keyword(client, "system", "executeSQL", {"data": [], "sql": "DELETE FROM data"}, tenant.admin, 400)
    assert answer["error"]["code"] == "keyword_failed" and "not authorized" in answer["error"]["message"]
    for sql in ("ATTACH DATABASE '/tmp/x.db' AS x", "SELECT 1; SELECT 2", "PRAGMA writable_schema = 1"):
        answer = await keyword(client, "system", "executeSQL", {"data": [{"a": 1}], "sql": sql}, tenant.admin, 400)
        assert answer["error"]["code"] == "keyword_failed", sql
    # Bodies and names that are not keywords.
    assert (await keyword(client, "system", "nope", {}, tenant.admin, 404))["error"]["code"] == "keyword_not_found"
    assert (await keyword(client, "image", "numberOnly", {}, tenant.admin, 404))["error"]["code"] == (
        "keyword_not_found"
    )
    assert (await keyword(client, "nogroup", "x", {}, tenant.admin, 404))["error"]["code"] == "keyword_not_found"
    resp = await client.post("/api/v1/keywords/system/numberOnly", data=b"[1]", headers=tenant.admin)
    assert (resp.status, (await resp.json())["error"]["code"]) == (400, "body_not_object")
    resp = await client.post("/api/v1/keywords/dialog/getNow", headers=tenant.admin)  # no body: no arguments
    assert resp.status == 200


async def test_call_vm_auto_save_and_documents_say_what_is_wrong(client: TestClient, tenant: Tenant):
    await upload(client, tenant, "tax", TAX)
    await upload(client, tenant, "asks", 'HEAR x\nFUNCTION f()\n  TALK "from f"\n  RETURN 2\nEND FUNCTION')
    await upload(client, tenant, "loop", 'x = callVM("loop")')
    await upload(client, tenant, "moves", 'GO TO "tax"')

    async def failed(name: str, body: dict[str, Any]) -> str:
        answer = await keyword(client, "system", name, body, tenant.admin, 400)
        assert answer["error"]["code"] == "keyword_failed", answer
        return str(answer["error"]["message"])

    assert "no dialog nowhere" in await failed("callVM", {"dialog": "nowhere"})
    assert "no FUNCTION nope" in await failed("callVM", {"dialog": "tax", "function": "nope"})
    assert "takes 2 arguments, not 1" in await failed("callVM", {"dialog": "tax", "function": "due", "args": [1]})
    assert "name one" in await failed("callVM", {"dialog": "tax", "function": "", "args": [1]})
    assert "cannot HEAR" in await failed("callVM", {"dialog": "asks"})
    assert "went to tax: a dialog callVM runs cannot GO TO" in await failed("callVM", {"dialog": "moves"})
    assert "nested more than 4 deep" in await failed("callVM", {"dialog": "loop"})
    await upload(client, tenant, "part", "FUNCTION one()\n  RETURN 1\nEND FUNCTION")
    await upload(client, tenant, "whole", "INCLUDE part\nx = one()")
    assert (await client.delete("/api/v1/bots/dialogs/part", headers=tenant.admin)).status in (200, 204)
    assert "dialog whole does not compile" in await failed("callVM", {"dialog": "whole"})  # its INCLUDE went away
    # In a dialog, the called FUNCTION talks in the caller's conversation, and its value comes back.
    port = await run_basic(client, tenant, 'n = callVM("asks", "f")\nTALK "got " + n')
    assert port.said == ["from f", "got 2"]

    assert "not number" in await failed("autoSave", {"file": 3})
    assert "not Base64" in await failed("autoSave", {"file": {"name": "a.txt", "data": "%%"}})
    assert "not a file name" in await failed("autoSave", {"file": {"name": "x/..", "data": ""}})
    sent = {"name": "photo.png", "data": base64.b64encode(b"png bytes").decode()}
    first = (await keyword(client, "system", "autoSave", {"file": sent}, tenant.admin))["result"]
    second = (await keyword(client, "system", "autoSave", {"file": sent}, tenant.admin))["result"]
    assert second == first.replace("photo.png", "photo-2.png")  # never over the first
    back = await keyword(client, "system", "internalGetDocument", {"name": second}, tenant.admin)
    assert (back["result"]["type"], base64.b64decode(back["result"]["data"])) == ("image/png", b"png bytes")
    assert "no file" in await failed("internalGetDocument", {"name": "nothing.pdf"})
    assert "not .pdf" in await failed("createDocument", {"content": "x", "target": "a.pdf"})
    # The document is a real Word file: its table holds the data.
    from docx import Document

    rows = [{"item": "tea", "qty": 3}, {"item": "coffee"}]
    name = (await keyword(client, "system", "createDocument", {"content": rows}, tenant.admin))["result"]
    assert re.fullmatch(r"documents/[0-9a-f]{12}\.docx", name)
    data = (await keyword(client, "system", "internalGetDocument", {"name": name}, tenant.admin))["result"]["data"]
    (table,) = Document(io.BytesIO(base64.b64decode(data))).tables
    assert [[c.text for c in row.cells] for row in table.rows] == [["item", "qty"], ["tea", "3"], ["coffee", ""]]


async def test_dialog_statements_and_run_keywords_refuse_an_instance_token(client: TestClient, tenant: Tenant):
    for group, name in [("dialog", n) for n in ("hear", "setLanguage", "allowRole", "showMenu")] + [
        ("system", "wait"),
        ("system", "set"),
    ]:
        answer = await keyword(client, group, name, {}, tenant.admin, 409)
        assert answer["error"]["code"] == "keyword_dialog_only", name
    for name in ("talk", "userName", "exit", "gotoDialog", "transferTo"):
        answer = await keyword(client, "dialog", name, {}, tenant.admin, 409)
        assert answer["error"]["code"] == "keyword_run_required", name
    answer = await keyword(client, "system", "getCustomToken", {}, tenant.admin, 409)
    assert answer["error"]["code"] == "keyword_run_required"


async def test_who_may_call_keywords(client: TestClient, tenant: Tenant):
    body = {"text": "a1"}
    participant = bearer(tenant.token("carol", room="standup", room_join=True))
    assert (await keyword(client, "system", "numberOnly", body, participant, 403))["error"]["code"] == "grant_missing"
    resp = await client.post("/api/v1/keywords/system/numberOnly", json=body)
    assert resp.status == 401
    resp = await client.post("/systemKeywords/numberOnly", json=body)
    assert (resp.status, (await resp.json())["error"]["code"]) == (401, "auth_required")
    answer = await keyword(client, "system", "numberOnly", body, OPERATOR, 400)
    assert answer["error"]["code"] == "instance_id_required"
    resp = await client.post(
        f"/api/v1/keywords/system/numberOnly?instance_id={tenant.instance_id}", json=body, headers=OPERATOR
    )
    assert (await resp.json())["result"] == "1"
    other = await create_tenant(client, "other")
    resp = await client.post(
        f"/api/v1/keywords/system/numberOnly?instance_id={tenant.instance_id}", json=body, headers=other.admin
    )
    assert (resp.status, (await resp.json())["error"]["code"]) == (404, "instance_not_found")


async def test_a_run_token_acts_on_its_own_conversation_and_user(client: TestClient, tenant: Tenant):
    await upload(client, tenant, "handoff", 'TALK getCustomToken()\nHEAR x\nTALK "got " + x')
    await upload(client, tenant, "other", 'TALK "in other"')
    conversation = await bot_conversation(client, tenant, "alice")
    resp = await client.post(
        "/api/v1/bots/conversations",
        json={"conversation_id": conversation, "dialog": "handoff", "user": "alice"},
        headers=tenant.admin,
    )
    assert resp.status == 201, await resp.text()

    async def bot_said() -> list[str]:
        resp = await client.get(f"/api/v1/conversations/{conversation}/messages", headers=as_user(tenant, "alice"))
        return [m["content"] for m in (await resp.json())["messages"] if m["sender"] == BOT]

    (token,) = await bot_said()
    assert token.startswith("gbrun.")
    run = bearer(token)
    await keyword(client, "dialog", "talk", {"text": ["hello", "from outside"]}, run)
    assert (await bot_said())[-1] == "hello from outside"
    assert (await keyword(client, "dialog", "userName", {}, run))["result"] == "alice"
    assert (await keyword(client, "system", "numberOnly", {"text": "x9"}, run))["result"] == "9"
    # It is scoped to its instance: another's id is not found, and it administers nothing.
    other = await create_tenant(client, "other")
    resp = await client.post(
        f"/api/v1/keywords/system/numberOnly?instance_id={other.instance_id}", json={"text": "1"}, headers=run
    )
    assert (resp.status, (await resp.json())["error"]["code"]) == (404, "instance_not_found")
    resp = await client.get("/api/v1/bots/dialogs", headers=run)
    assert resp.status == 403
    assert (await keyword(client, "dialog", "hear", {}, run, 409))["error"]["code"] == "keyword_dialog_only"
    # gotoDialog starts another dialog for the run's user; exit ends the run.
    moved = await keyword(client, "dialog", "gotoDialog", {"dialog": "other"}, run)
    assert moved["result"]["dialog"] == "other" and (await bot_said())[-1] == "in other"
    missing = await keyword(client, "dialog", "gotoDialog", {"dialog": "nowhere"}, run, 404)
    assert missing["error"]["code"] == "dialog_not_found"
    # transferTo hands the conversation to a person, as TRANSFER TO in the dialog does.
    assert (await keyword(client, "dialog", "transferTo", {"to": "agent"}, run))["result"] is None
    handed = await client.app[NODE].db.pool.fetchrow(
        "SELECT transferred_to, transferred_by FROM bot_conversations WHERE conversation_id = $1",
        uuid.UUID(conversation),
    )
    assert (handed["transferred_to"], handed["transferred_by"]) == ("agent", "alice")
    resp = await client.get(f"/api/v1/conversations/{conversation}", headers=tenant.admin)
    assert "agent" in [m["identity"] for m in (await resp.json())["members"]]
    ended = await keyword(client, "dialog", "exit", {}, run)
    assert ended["result"]["status"] == "stopped"
    # A forged or altered token is refused.
    resp = await client.post("/api/v1/keywords/dialog/userName", json={}, headers=bearer(token[:-4] + "AAAA"))
    assert (resp.status, (await resp.json())["error"]["code"]) == (401, "run_token_invalid")


async def test_every_name_of_the_note_is_served(client: TestClient, tenant: Tenant):
    assert keywords.missing() == []
    assert sum(len(names) for names in keywords.GROUPS.values()) == 63 + 41 + 16 + 3  # the note, name for name
    answered = 0
    for group, names in keywords.GROUPS.items():
        for name in names:
            resp = await client.post(f"/api/v1/keywords/{group}/{name}", json={}, headers=tenant.admin)
            assert resp.status in (200, 400, 409), (name, resp.status, await resp.text())
            answered += 1
    assert answered == 123


async def test_a_scheduled_runs_token_talks_to_the_instance_log(client: TestClient, tenant: Tenant):
    """A run with no conversation (SET SCHEDULE) says what it says in the instance's log, as the run itself does."""
    from gbmedia.tenancy.run_tokens import RunScope

    node = client.app[NODE]
    token = node.tenancy.auth.run_tokens.mint(RunScope(uuid.UUID(tenant.instance_id), None, None, "report"))
    await keyword(client, "dialog", "talk", {"text": ["nightly", "report"]}, bearer(token))
    logged = await node.db.pool.fetch(
        "SELECT message FROM instance_logs WHERE instance_id = $1", uuid.UUID(tenant.instance_id)
    )
    assert "TALK nightly report" in [r["message"] for r in logged]
    assert (await keyword(client, "dialog", "exit", {}, bearer(token)))["result"] is None  # nothing to stop
    answer = await keyword(client, "dialog", "userName", {}, bearer(token), 400)
    assert answer["error"]["code"] == "keyword_failed"  # nobody to name
    # A limit of the sandbox is its own error, naming the setting.
    answer = await keyword(client, "system", "append", {"list": list(range(10_000)), "items": [1]}, tenant.admin, 400)
    assert (answer["error"]["code"], answer["error"]["details"]["limit"]) == (
        "keyword_limit_exceeded",
        "GBMEDIA_BOT_MAX_LIST_ITEMS",
    )


async def test_an_instance_port_refuses_what_needs_a_conversation(pool):
    from gbmedia.bots.keywords_api import InstancePort, RunRequired

    port = InstancePort(pool, uuid.uuid4())
    for attempt in (port.talk("x"), port.send("sms", "1", {}), port.transfer(None), port.set_param("a", 1)):
        with pytest.raises(RunRequired):
            await attempt
    assert await port.user_of("nobody") is None
