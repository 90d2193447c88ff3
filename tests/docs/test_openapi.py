"""The OpenAPI document (gbmedia/http/openapi.json) against the running application.

It must name exactly the routes the app registers, be a well-formed OpenAPI 3.1
document, mirror the request models and response dataclasses, list every error
code the tenancy code can answer, and describe what real calls actually return.
A tiny JSON Schema validator below covers the keywords the document uses (and the
structural test refuses any other), so no extra dependency is needed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import BaseModel

import gbmedia
import gbmedia.http
from gbmedia.app import NODE
from gbmedia.bots import api as bots_api
from gbmedia.bots import providers_api
from gbmedia.bots.debug import api as debugger_api
from gbmedia.bots.files import InstanceFiles
from gbmedia.bots.login import PgLogins
from gbmedia.bots.media import api as media_bots_api
from gbmedia.messaging import api as messaging_api
from gbmedia.messaging import models as chat_models
from gbmedia.recording import api as recording_api
from gbmedia.recording import service as recording_service
from gbmedia.rooms import api as rooms_api
from gbmedia.rooms import store as rooms
from gbmedia.tenancy import api as tenancy_api
from gbmedia.tenancy import billing_api, dashboard_login, models, webhooks_api
from gbmedia.tenancy import webhooks as webhook_store
from gbmedia.tenancy.tokens import Grants, mint_token
from tests.helpers import OPERATOR, Tenant, bearer

DOC_PATH = Path(gbmedia.http.__file__).parent / "openapi.json"
DOC: dict[str, Any] = json.loads(DOC_PATH.read_text(encoding="utf-8"))
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
SCHEMA_KEYWORDS = {
    "$ref",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "format",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "propertyNames",
    "default",
    "description",
    "examples",
}
REQUEST_MODELS: dict[str, tuple[type[BaseModel], bool]] = {  # operationId: (model, is a PATCH)
    "createCustomer": (tenancy_api.CustomerCreate, False),
    "updateCustomer": (tenancy_api.CustomerUpdate, True),
    "createInstance": (tenancy_api.InstanceCreate, False),
    "updateInstance": (tenancy_api.InstanceUpdate, True),
    "createKey": (tenancy_api.KeyCreate, False),
    "createToken": (tenancy_api.TokenCreate, False),
    "createRoom": (rooms_api.RoomCreate, False),
    "muteTrack": (rooms_api.TrackMute, False),
    "createConversation": (messaging_api.ConversationCreate, False),
    "addMember": (messaging_api.MemberAdd, False),
    "sendMessage": (messaging_api.MessageSend, False),
    "editMessage": (messaging_api.MessageEdit, False),
    "postReceipt": (messaging_api.ReceiptUpdate, False),
    "putDialog": (bots_api.DialogPut, False),
    "joinBotConversation": (bots_api.BotJoin, False),
    "botSignIn": (bots_api.LoginPost, False),
    "putBotProvider": (providers_api.ProviderPut, False),
    "startDebugRun": (debugger_api.DebugStart, False),
    "setDebugBreakpoint": (debugger_api.BreakpointSet, False),
    "sendDebugMessage": (debugger_api.DebugMessage, False),
    "refactorDialog": (debugger_api.Refactor, False),
    "debuggerService": (debugger_api.LegacyCall, False),
    "startRecording": (recording_api.RecordingStart, False),
    "dashboardLogin": (dashboard_login.LoginRequest, False),
    "startMediaBot": (media_bots_api.MediaBotStart, False),
    "createWebhook": (webhooks_api.WebhookCreate, False),
    "updateWebhook": (webhooks_api.WebhookUpdate, True),
    "createInvoice": (billing_api.InvoiceCreate, False),
    "postPaymentEvent": (billing_api.PaymentEvent, False),
}
RESPONSE_DATACLASSES = {
    "Customer": models.Customer,
    "Instance": models.Instance,
    "ApiKey": models.ApiKey,
    "Credentials": models.Credentials,
    "Plan": models.Plan,
    "Quotas": models.Quotas,
    "AuditEntry": models.AuditEntry,
    "Grants": Grants,
    "Room": rooms.Room,
    "Message": chat_models.Message,
    "Member": chat_models.Member,
    "Receipt": chat_models.Receipt,
    "Recording": recording_service.Recording,
    "RecordingFile": recording_service.RecordingFile,
    "Webhook": webhook_store.WebhookEndpoint,
    "WebhookDelivery": webhook_store.WebhookDelivery,
    "WebhookAttempt": webhook_store.WebhookAttempt,
}
# Codes the tenancy services raise that REST callers cannot reach: the pydantic
# models refuse such input first (as validation_failed).
UNREACHABLE_CODES = {
    "unknown_field",
    "invalid_status",
    "invalid_features",
    "invalid_config",
    "invalid_room_settings",
    "invalid_kind",
    "invalid_role",
}
# Where REST error codes come from: whole folders, and the REST-facing modules of
# signaling (its WebSocket protocol's codes are documented in docs/protocol.md).
REST_SOURCES = (
    "tenancy/*.py",
    "http/*.py",
    "app.py",
    "rooms/*.py",
    "signaling/ws.py",
    "messaging/*.py",
    "recording/*.py",
    "streaming/*.py",
    "bots/api.py",
    "bots/debug/*.py",
    "bots/dialogs.py",
    "bots/shared_api.py",
    "bots/sharing.py",
    "bots/keywords_api.py",
    "bots/providers_api.py",
    "signaling/whip.py",
    "signaling/relay.py",
    "signaling/cascade.py",
    "bots/media/*.py",
)
# Bearer-authenticated paths outside /api/ (standard WHIP/WHEP URLs); their CORS preflights need no credentials.
TOKEN_PATHS = (
    "/whip/",
    "/whep/",
    "/systemKeywords/",
    "/dialogKeywords/",
    "/imageProcessing/",
    "/webAutomation/",
    "/debuggerService/",
)


# --- a tiny JSON Schema ------------------------------------------------------------


def pointer(ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = DOC
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def resolve(node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = pointer(node["$ref"])
    return node


def _type_ok(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, {"string": str, "boolean": bool, "object": dict, "array": list, "null": type(None)}[name])


def _format_ok(value: str, fmt: str) -> bool:
    try:
        if fmt == "uuid":
            uuid.UUID(value)
            return True
        if fmt == "date-time":
            return dt.datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False
    raise AssertionError(f"unknown format {fmt}")


def validate(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Problems of ``value`` against ``schema``; empty when it conforms."""
    schema = resolve(schema)
    unknown = set(schema) - SCHEMA_KEYWORDS
    assert not unknown, f"{where}: the validator does not know {unknown}"
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(value, t) for t in types):
            return [f"{where}: {value!r} is not {types}"]
    problems: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r} not in {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        problems.append(f"{where}: {value!r} != {schema['const']!r}")
    if isinstance(value, str):
        if "format" in schema and not _format_ok(value, schema["format"]):
            problems.append(f"{where}: {value!r} is not a {schema['format']}")
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            problems.append(f"{where}: length of {value!r} out of bounds")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if _type_ok(value, "number"):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            problems.append(f"{where}: {value} out of bounds")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problems += validate(item, schema["items"], f"{where}[{i}]")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        problems += [f"{where}: missing {k}" for k in schema.get("required", []) if k not in value]
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if "propertyNames" in schema:
                problems += validate(key, schema["propertyNames"], f"{where} key {key!r}")
            if key in properties:
                problems += validate(item, properties[key], f"{where}.{key}")
            elif extra is False:
                problems.append(f"{where}: unexpected property {key!r}")
            elif isinstance(extra, dict):
                problems += validate(item, extra, f"{where}.{key}")
    return problems


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, item[method]) for path, item in DOC["paths"].items() for method in item if method in METHODS]


def walk(node: Any) -> Any:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def schemas_in(node: Any) -> Any:
    """Every (sub)schema in a schema, following no references."""
    yield node
    for key in ("properties",):
        for sub in node.get(key, {}).values():
            yield from schemas_in(sub)
    for key in ("items", "additionalProperties", "propertyNames"):
        if isinstance(node.get(key), dict):
            yield from schemas_in(node[key])


def all_schemas() -> Any:
    roots = list(DOC["components"]["schemas"].values())
    roots += [p["schema"] for p in DOC["components"]["parameters"].values()]
    roots += [h["schema"] for h in DOC["components"]["headers"].values()]
    for node in walk(DOC["paths"]):
        if isinstance(node, dict) and isinstance(node.get("schema"), dict):
            roots.append(node["schema"])
    for root in roots:
        yield from schemas_in(root)


# --- the document against the router ---------------------------------------------


async def test_the_document_names_exactly_the_registered_routes(client: TestClient):
    registered = {
        (route.method.lower(), route.resource.canonical)
        for route in client.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {(method, path) for method, path, _ in operations()}
    assert documented - registered == set(), "documented but not served"
    assert registered - documented == set(), "served but not documented"


async def test_openapi_json_is_served_without_auth_and_is_the_file(client: TestClient):
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.read() == DOC_PATH.read_bytes()
    assert await resp.json() == DOC


# --- structure ---------------------------------------------------------------------


def test_the_document_is_well_formed_openapi_3_1():
    assert DOC["openapi"].startswith("3.1.")
    assert DOC["info"]["version"] == gbmedia.__version__ == "0.1.0" and DOC["info"]["title"]
    assert DOC["servers"] == [{"url": "http://127.0.0.1:7880", "description": DOC["servers"][0]["description"]}]
    schemes = DOC["components"]["securitySchemes"]
    assert {name: (s["type"], s["scheme"]) for name, s in schemes.items()} == {
        "operatorToken": ("http", "bearer"),
        "accessToken": ("http", "bearer"),
    }
    for claim in (
        "`iss`",
        "`sub`",
        "`name`",
        "`iat`",
        "`nbf`",
        "`exp`",
        "`jti`",
        "`grants`",
        "room_admin",
        "instance_admin",
    ):
        assert claim in schemes["accessToken"]["description"], claim

    for node in walk(DOC):
        if isinstance(node, dict) and "$ref" in node:
            assert resolve(node) is not None, node["$ref"]
    for schema in all_schemas():
        assert set(resolve(schema)) <= SCHEMA_KEYWORDS, schema

    ids = [operation["operationId"] for _, _, operation in operations()]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    for method, path, operation in operations():
        label = f"{method.upper()} {path}"
        assert operation["summary"] and "Who may call" in operation["description"], label
        params = [resolve(p) for p in operation.get("parameters", [])]
        in_path = {p["name"] for p in params if p["in"] == "path"}
        assert in_path == set(re.findall(r"{(\w+)}", path)), label
        for param in params:
            assert param["in"] in ("path", "query", "header") and "schema" in param, label
            if param["in"] == "path":
                assert param["required"] is True, label
            if param["name"].endswith("_id") and param["name"] != "node_id":  # node ids are names (GBMEDIA_NODE_ID)
                assert param["schema"]["format"] == "uuid", label
        for param in ("limit", "offset", "before"):
            bounded = [p for p in params if p["name"] == param]
            assert all({"minimum", "maximum"} <= set(p["schema"]) for p in bounded), label
        security = operation.get("security", DOC["security"])
        responses = {status: resolve(r) for status, r in operation["responses"].items()}
        # 101: the WebSocket; 302 alone: a redirect to a page (`/`)
        assert any(s.startswith("2") or s == "101" for s in responses) or set(responses) == {"302", "500"}, label
        if path.startswith("/api/") or (path.startswith(TOKEN_PATHS) and method != "options"):
            assert security and all(set(req) <= set(schemes) for req in security), label
            assert {"401", "403", "429", "500"} <= set(responses), label
            assert "Retry-After" in responses["429"]["headers"], label
        else:
            assert security == [], label
        if "requestBody" in operation:
            assert operation["requestBody"]["required"] is True, label
            assert {"400", "413"} <= set(responses), label
        for status, response in responses.items():
            assert response["description"], (label, status)
            assert "X-Request-Id" in response["headers"], (label, status)
            if int(status) >= 400 and (path, status) != ("/readyz", "503"):  # 503 there is the readiness report
                assert (
                    resolve(response["content"]["application/json"]["schema"]) is DOC["components"]["schemas"]["Error"]
                ), (label, status)
                assert response["x-error-codes"], (label, status)
                for code in response["x-error-codes"]:
                    assert f"`{code}`" in response["description"], (label, status, code)


def _source_error_codes() -> set[str]:
    root = Path(gbmedia.http.__file__).parent.parent
    text = "\n".join(p.read_text(encoding="utf-8") for pattern in REST_SOURCES for p in sorted(root.glob(pattern)))
    codes = set(re.findall(r'\b(?:bad_request|unauthorized|forbidden|conflict)\(\s*"([a-z_]+)"', text))
    codes |= set(re.findall(r'\bApiError\(\s*\d+,\s*"([a-z_]+)"', text))
    codes |= {f"{what}_not_found" for what in re.findall(r'\bnot_found\(\s*"([a-z_]+)"', text)}
    codes |= {f"quota_{quota}_exceeded" for quota in re.findall(r'\bquota_exceeded\(\s*"([a-z_]+)"', text)}
    # Outages (errors.py): the constructors are named after their codes, and any failure the API
    # middleware or a handler classifies with outage_error may be either 503.
    codes |= set(re.findall(r"\b(database_unavailable|redis_unavailable|insufficient_storage)\(", text))
    if "outage_error(" in text:
        codes |= {"database_unavailable", "redis_unavailable"}
    return codes


def test_every_reachable_error_code_is_documented_and_no_other():
    documented = {
        code
        for node in walk(DOC)
        if isinstance(node, dict) and "x-error-codes" in node
        for code in node["x-error-codes"]
    }
    source = _source_error_codes()
    assert {
        "quota_max_instances_exceeded",
        "grant_missing",
        "api_key_not_found",
        "rate_limited",
        "room_not_found",
        "quota_max_concurrent_rooms_exceeded",
        "instance_id_required",
    } <= source
    assert source - UNREACHABLE_CODES - documented == set(), "raised but not documented"
    assert documented - source - {"payload_too_large"} == set(), "documented but never raised"


def _normalised(prop: dict[str, Any]) -> tuple[set[str], dict[str, Any]]:
    """A property's types and constraints, from pydantic's anyOf or the document's type list."""
    types: set[str] = set()
    constraints: dict[str, Any] = {}
    for variant in prop.get("anyOf", [prop]):
        variant_types = variant["type"] if isinstance(variant["type"], list) else [variant["type"]]
        types |= set(variant_types)
        for key in ("minLength", "maxLength", "pattern", "minimum", "maximum", "enum"):
            if key in variant:
                constraints[key] = variant[key]
        if "object" in variant_types:
            constraints["additionalProperties"] = variant.get("additionalProperties", True)
    return types, constraints


@pytest.mark.parametrize("operation_id", sorted(REQUEST_MODELS))
def test_request_bodies_mirror_the_pydantic_models(operation_id: str):
    model, is_patch = REQUEST_MODELS[operation_id]
    (operation,) = [op for _, _, op in operations() if op["operationId"] == operation_id]
    documented = resolve(operation["requestBody"]["content"]["application/json"]["schema"])
    expected = model.model_json_schema()
    assert documented["additionalProperties"] is expected["additionalProperties"] is False
    assert set(documented.get("required", [])) == set(expected.get("required", []))
    assert list(documented["properties"]) == list(expected["properties"])
    for name, prop in expected["properties"].items():
        types, constraints = _normalised(prop)
        if is_patch:
            types.discard("null")  # accepted by the model, then refused as null_field
        assert _normalised(documented["properties"][name]) == (types, constraints), name
        field = model.model_fields[name]
        if not is_patch and not field.is_required():
            assert documented["properties"][name]["default"] == field.get_default(call_default_factory=True), name
    with_bodies = {
        op["operationId"]
        for _, _, op in operations()
        if "requestBody" in op and "application/json" in op["requestBody"]["content"]
    }
    # The keyword API's bodies are each keyword's arguments, made from the registry (x-keywords):
    # tests/bots/test_keywords_doc.py checks them.
    keyword_calls = {op for op in with_bodies if op.startswith("callKeyword")}
    assert len(keyword_calls) == 5
    assert with_bodies - keyword_calls == set(REQUEST_MODELS)


@pytest.mark.parametrize("name", sorted(RESPONSE_DATACLASSES))
def test_component_schemas_mirror_the_dataclasses(name: str):
    schema = DOC["components"]["schemas"][name]
    fields = dataclasses.fields(RESPONSE_DATACLASSES[name])
    assert list(schema["properties"]) == [f.name for f in fields]
    assert schema["additionalProperties"] is False
    if name == "Grants":  # the claim leaves out false grants and a missing room
        assert schema["required"] == []
        return
    assert schema["required"] == [f.name for f in fields]
    for f in fields:
        declared = schema["properties"][f.name].get("type", [])
        assert ("None" in str(f.type)) == ("null" in declared), f.name


def test_grant_and_feature_names_match_the_code():
    schemas = DOC["components"]["schemas"]
    assert schemas["TokenCreate"]["properties"]["grants"]["propertyNames"]["enum"] == Grants.names()
    assert schemas["Instance"]["properties"]["features"]["propertyNames"]["enum"] == list(models.FEATURES)
    assert list(schemas["Quotas"]["properties"]) == list(models.QUOTAS)


# --- real answers against the document ------------------------------------------------


async def _chat_calls(call: Caller, tenant: Tenant) -> None:
    """Every chat operation, with answers and errors checked against the document."""
    alice = bearer(mint_token(tenant.key, tenant.secret, "alice", Grants()))
    bob = bearer(mint_token(tenant.key, tenant.secret, "bob", Grants()))
    mallory = bearer(mint_token(tenant.key, tenant.secret, "mallory", Grants()))
    conv = await call(
        "POST",
        "/api/v1/conversations",
        201,
        headers=alice,
        json={"kind": "group", "members": ["bob"], "title": "docs", "metadata": {"a": 1}},
    )
    cid = conv["id"]
    await call("POST", "/api/v1/conversations", 201, headers=alice, json={"kind": "direct", "members": ["bob"]})
    await call("POST", "/api/v1/conversations", 200, headers=bob, json={"kind": "direct", "members": ["alice"]})
    await call("POST", "/api/v1/conversations", 400, headers=OPERATOR, json={"members": ["x"]})
    await call("GET", "/api/v1/conversations", 200, headers=alice, query={"limit": "10"})
    await call(
        "GET",
        "/api/v1/conversations",
        200,
        headers=OPERATOR,
        query={"instance_id": tenant.instance_id, "identity": "bob"},
    )
    await call("GET", "/api/v1/conversations/{conversation_id}", 200, headers=bob, conversation_id=cid)
    await call("GET", "/api/v1/conversations/{conversation_id}", 403, headers=mallory, conversation_id=cid)
    await call("GET", "/api/v1/conversations/{conversation_id}", 404, headers=alice, conversation_id=str(uuid.uuid4()))
    await call(
        "POST",
        "/api/v1/conversations/{conversation_id}/members",
        201,
        headers=alice,
        conversation_id=cid,
        json={"identity": "carol"},
    )
    await call(
        "DELETE",
        "/api/v1/conversations/{conversation_id}/members/{identity}",
        200,
        headers=OPERATOR,
        conversation_id=cid,
        identity="carol",
    )
    await call(
        "DELETE",
        "/api/v1/conversations/{conversation_id}/members/{identity}",
        404,
        headers=OPERATOR,
        conversation_id=cid,
        identity="carol",
    )
    sent = await call(
        "POST",
        "/api/v1/conversations/{conversation_id}/messages",
        201,
        headers=alice,
        conversation_id=cid,
        json={"content": "hello docs", "idempotency_key": "d-1"},
    )
    await call(
        "POST",
        "/api/v1/conversations/{conversation_id}/messages",
        200,
        headers=alice,
        conversation_id=cid,
        json={"content": "hello docs", "idempotency_key": "d-1"},
    )
    await call(
        "POST",
        "/api/v1/conversations/{conversation_id}/messages",
        409,
        headers=alice,
        conversation_id=cid,
        json={"content": "other", "idempotency_key": "d-1"},
    )
    await call(
        "POST",
        "/api/v1/conversations/{conversation_id}/messages",
        400,
        headers=alice,
        conversation_id=cid,
        json={"content": "x", "idempotency_key": "no spaces"},
    )
    await call(
        "POST",
        "/api/v1/conversations/{conversation_id}/messages",
        413,
        headers=alice,
        conversation_id=cid,
        json={"content": "x" * 20_000, "idempotency_key": "big"},
    )
    await call(
        "POST",
        "/api/v1/conversations/{conversation_id}/messages",
        201,
        headers=OPERATOR,
        conversation_id=cid,
        json={"content": "from a bot", "idempotency_key": "b-1", "sender": "bot:docs", "kind": "system"},
    )
    await call(
        "GET",
        "/api/v1/conversations/{conversation_id}/messages",
        200,
        headers=bob,
        conversation_id=cid,
        query={"after_seq": "0", "limit": "10"},
    )
    await call(
        "GET",
        "/api/v1/conversations/{conversation_id}/messages",
        400,
        headers=bob,
        conversation_id=cid,
        query={"after_seq": "0", "before_seq": "2"},
    )
    await call(
        "GET",
        "/api/v1/conversations/{conversation_id}/messages/{seq}",
        200,
        headers=bob,
        conversation_id=cid,
        seq=str(sent["seq"]),
    )
    await call(
        "GET", "/api/v1/conversations/{conversation_id}/messages/{seq}", 404, headers=bob, conversation_id=cid, seq="99"
    )
    await call(
        "PATCH",
        "/api/v1/conversations/{conversation_id}/messages/{seq}",
        200,
        headers=alice,
        conversation_id=cid,
        seq="1",
        json={"content": "hello, docs"},
    )
    await call(
        "PATCH",
        "/api/v1/conversations/{conversation_id}/messages/{seq}",
        403,
        headers=bob,
        conversation_id=cid,
        seq="1",
        json={"content": "mine"},
    )
    await call(
        "DELETE",
        "/api/v1/conversations/{conversation_id}/messages/{seq}",
        200,
        headers=alice,
        conversation_id=cid,
        seq="1",
    )
    await call(
        "DELETE",
        "/api/v1/conversations/{conversation_id}/messages/{seq}",
        409,
        headers=alice,
        conversation_id=cid,
        seq="1",
    )
    await call(
        "POST",
        "/api/v1/conversations/{conversation_id}/receipts",
        200,
        headers=bob,
        conversation_id=cid,
        json={"delivered_seq": 2, "read_seq": 1},
    )
    await call(
        "POST", "/api/v1/conversations/{conversation_id}/receipts", 400, headers=bob, conversation_id=cid, json={}
    )
    await call("GET", "/api/v1/messages/search", 200, headers=bob, query={"q": "bot", "limit": "5"})
    await call(
        "GET",
        "/api/v1/messages/search",
        200,
        headers=OPERATOR,
        query={
            "q": "bot",
            "instance_id": tenant.instance_id,
            "conversation_id": cid,
            "since": "2020-01-01T00:00:00+00:00",
            "until": "2100-01-01T00:00:00+00:00",
        },
    )
    await call("GET", "/api/v1/messages/search", 400, headers=bob, query={"q": ""})


async def _recording_calls(call: Caller, admin: dict[str, str], room_id: str) -> None:
    """Every recording operation on a room nobody publishes in (tests/recording record real media)."""
    started = await call(
        "POST",
        "/api/v1/rooms/{room_id}/recordings",
        201,
        headers=admin,
        room_id=room_id,
        json={"kinds": ["tracks", "composite"]},
    )
    rid = started["id"]
    await call("POST", "/api/v1/rooms/{room_id}/recordings", 409, headers=admin, room_id=room_id, json={})
    await call(
        "POST", "/api/v1/rooms/{room_id}/recordings", 400, headers=admin, room_id=room_id, json={"kinds": ["movie"]}
    )
    await call(
        "GET",
        "/api/v1/rooms/{room_id}/recordings",
        200,
        headers=admin,
        room_id=room_id,
        query={"limit": "10", "offset": "0"},
    )
    await call("GET", "/api/v1/recordings/{recording_id}", 200, headers=admin, recording_id=rid)
    await call("GET", "/api/v1/recordings/{recording_id}", 404, headers=admin, recording_id=str(uuid.uuid4()))
    await call(
        "GET",
        "/api/v1/recordings/{recording_id}/files/{file}",
        409,
        headers=admin,
        recording_id=rid,
        file="composite.mp4",
    )  # not ready while recording
    await call(
        "GET", "/api/v1/recordings/{recording_id}/files/{file}", 404, headers=admin, recording_id=rid, file="nope.webm"
    )
    await call("DELETE", "/api/v1/recordings/{recording_id}", 409, headers=admin, recording_id=rid)  # running
    stopped = await call("POST", "/api/v1/recordings/{recording_id}/stop", 200, headers=admin, recording_id=rid)
    assert stopped["status"] == "completed"
    await call("POST", "/api/v1/recordings/{recording_id}/stop", 409, headers=admin, recording_id=rid)
    deleted = await call("DELETE", "/api/v1/recordings/{recording_id}", 200, headers=admin, recording_id=rid)
    assert deleted["id"] == rid
    await call("DELETE", "/api/v1/recordings/{recording_id}", 404, headers=admin, recording_id=rid)


async def _media_bot_calls(call: Caller, admin: dict[str, str], room_id: str) -> None:
    """Start, list and stop a media bot (tests/bots/media check its media)."""
    started = await call(
        "POST",
        "/api/v1/rooms/{room_id}/media_bots",
        201,
        headers=admin,
        room_id=room_id,
        json={"name": "Docs Clock", "show": "clock", "audio": False},
    )
    bot = started["media_bot"]
    assert (bot["identity"], bot["left"], len(bot["tracks"])) == ("bot:docs-clock", False, 1)
    await call(
        "POST", "/api/v1/rooms/{room_id}/media_bots", 400, headers=admin, room_id=room_id, json={"show": "movie"}
    )
    await call(
        "POST",
        "/api/v1/rooms/{room_id}/media_bots",
        404,
        headers=admin,
        room_id=room_id,
        json={"participant": "nobody", "filter": "edges"},
    )
    listed = await call("GET", "/api/v1/rooms/{room_id}/media_bots", 200, headers=admin, room_id=room_id)
    assert [b["id"] for b in listed["media_bots"]] == [bot["id"]]
    stopped = await call(
        "DELETE", "/api/v1/rooms/{room_id}/media_bots/{bot}", 200, headers=admin, room_id=room_id, bot=bot["id"]
    )
    assert stopped["media_bot"]["left"] is True
    await call("DELETE", "/api/v1/rooms/{room_id}/media_bots/{bot}", 404, headers=admin, room_id=room_id, bot=bot["id"])


async def _webhook_calls(call: Caller, admin: dict[str, str], iid: str) -> None:
    """Every webhook operation; real deliveries to a receiver are tests/tenancy/test_webhooks.py's."""
    base = "/api/v1/instances/{instance_id}/webhooks"
    one = base + "/{webhook_id}"
    created = await call(
        "POST",
        base,
        201,
        headers=admin,
        instance_id=iid,
        json={"url": "https://hooks.example.invalid/docs", "events": ["room_started", "message_created"]},
    )
    hook = created["webhook"]["id"]
    assert created["secret"].startswith("whsec_")
    await call(
        "POST",
        base,
        400,
        headers=admin,
        instance_id=iid,
        json={"url": "http://127.0.0.1:9/", "events": ["room_started"]},
    )
    await call("GET", base, 200, headers=admin, instance_id=iid)
    await call("GET", one, 200, headers=admin, instance_id=iid, webhook_id=hook)
    await call("GET", one, 404, headers=admin, instance_id=iid, webhook_id=str(uuid.uuid4()))
    await call("PATCH", one, 200, headers=admin, instance_id=iid, webhook_id=hook, json={"description": "docs"})
    await call("PATCH", one, 400, headers=admin, instance_id=iid, webhook_id=hook, json={"url": None})
    delivery = await call("POST", one + "/test", 202, headers=admin, instance_id=iid, webhook_id=hook)
    listed = await call(
        "GET", one + "/deliveries", 200, headers=admin, instance_id=iid, webhook_id=hook, query={"limit": "5"}
    )
    assert [d["id"] for d in listed["deliveries"]] == [delivery["id"]]
    await call(
        "GET", one + "/deliveries", 400, headers=admin, instance_id=iid, webhook_id=hook, query={"status": "lost"}
    )
    redeliver = one + "/deliveries/{delivery}/redeliver"
    await call("POST", redeliver, 202, headers=admin, instance_id=iid, webhook_id=hook, delivery=delivery["id"])
    await call("POST", redeliver, 404, headers=admin, instance_id=iid, webhook_id=hook, delivery="999999999")
    await call("PATCH", one, 200, headers=admin, instance_id=iid, webhook_id=hook, json={"enabled": False})
    await call("POST", one + "/test", 409, headers=admin, instance_id=iid, webhook_id=hook)
    await call("DELETE", one, 200, headers=admin, instance_id=iid, webhook_id=hook)


async def _billing_calls(call: Caller, admin: dict[str, str], cid: str, participant: dict[str, str]) -> None:
    """Usage, invoices, standing and the payment hook (tests/tenancy/test_billing.py covers them in depth)."""
    usage_path, invoices = "/api/v1/customers/{customer_id}/usage", "/api/v1/customers/{customer_id}/invoices"
    nobody = str(uuid.uuid4())
    report = await call("GET", usage_path, 200, headers=admin, customer_id=cid, query={"granularity": "hour"})
    assert report["granularity"] == "hour"
    await call("GET", usage_path, 200, headers=OPERATOR, customer_id=cid, query={"from": "2026-01-01"})
    await call("GET", usage_path, 400, headers=OPERATOR, customer_id=cid, query={"granularity": "week"})
    await call("GET", usage_path, 403, headers=participant, customer_id=cid)
    await call("GET", usage_path, 404, headers=OPERATOR, customer_id=nobody)
    period = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    invoice = await call("POST", invoices, 201, headers=OPERATOR, customer_id=cid, json={"period": period})
    await call("POST", invoices, 400, headers=OPERATOR, customer_id=cid, json={"period": "2999-01"})
    await call("POST", invoices, 403, headers=admin, customer_id=cid, json={"period": period})
    await call("POST", invoices, 404, headers=OPERATOR, customer_id=nobody, json={"period": period})
    await call("GET", invoices, 200, headers=admin, customer_id=cid, query={"limit": "5"})
    await call("GET", invoices, 400, headers=admin, customer_id=cid, query={"limit": "0"})
    await call("GET", "/api/v1/customers/{customer_id}/subscription", 200, headers=admin, customer_id=cid)
    await call("GET", "/api/v1/invoices/{invoice_id}", 200, headers=admin, invoice_id=invoice["id"])
    await call("GET", "/api/v1/invoices/{invoice_id}", 400, headers=admin, invoice_id="nope")
    await call("GET", "/api/v1/invoices/{invoice_id}", 404, headers=OPERATOR, invoice_id=nobody)
    page = await call("GET", "/api/v1/invoices/{invoice_id}/print", 200, headers=admin, invoice_id=invoice["id"])
    assert invoice["number"] in page
    await call("GET", "/api/v1/invoices/{invoice_id}/print", 403, headers=participant, invoice_id=invoice["id"])
    await call("POST", "/billing/payment-events", 503, json={"id": "e"})  # no GBMEDIA_BILLING_WEBHOOK_SECRET here


async def _live_calls(call: Caller, tenant: Tenant) -> None:
    """WHIP and WHEP with real aiortc offers (tests/signaling/test_whip.py covers them in depth)."""
    from aiortc import RTCPeerConnection

    from tests.rtc import ColorVideoTrack, offer_from

    encoder, player = RTCPeerConnection(), RTCPeerConnection()
    try:
        encoder.addTransceiver(ColorVideoTrack((200, 0, 0)), direction="sendonly")
        player.addTransceiver("video", direction="recvonly")
        host = bearer(mint_token(tenant.key, tenant.secret, "obs", Grants(room="stage", can_publish=True)))
        viewer = bearer(mint_token(tenant.key, tenant.secret, "fan", Grants(room="stage", can_subscribe=True)))
        sdp, frag = {"Content-Type": "application/sdp"}, {"Content-Type": "application/trickle-ice-sdpfrag"}
        play_offer = await offer_from(player)
        await call("OPTIONS", "/whip/{room}", 204, room="stage")
        await call("OPTIONS", "/whep/{room}", 204, room="stage")
        await call("POST", "/whep/{room}", 409, headers={**viewer, **sdp}, room="stage", data=play_offer.encode())
        publish_offer = await offer_from(encoder)
        await call("POST", "/whip/{room}", 401, headers=sdp, room="stage", data=publish_offer.encode())
        await call("POST", "/whip/{room}", 403, headers={**viewer, **sdp}, room="stage", data=publish_offer.encode())
        await call("POST", "/whip/{room}", 415, headers=host, room="stage", data=publish_offer.encode())
        await call("POST", "/whip/{room}", 400, headers={**host, **sdp}, room="stage", data=b"hello")
        answer = await call(
            "POST", "/whip/{room}", 201, headers={**host, **sdp}, room="stage", data=publish_offer.encode()
        )
        assert answer.startswith("v=0")
        (live,) = [r for r in call.client.app[NODE].live_rooms.live.values() if r.room.name == "stage"]
        (session,) = live.audience.ingest
        ufrag = next(line for line in publish_offer.splitlines() if line.startswith("a=ice-ufrag:"))
        await call("OPTIONS", "/whip/{room}/{session}", 204, room="stage", session=session)
        await call(
            "PATCH",
            "/whip/{room}/{session}",
            204,
            headers={**host, **frag},
            room="stage",
            session=session,
            data=f"{ufrag}\r\na=end-of-candidates\r\n".encode(),
        )
        await call(
            "PATCH",
            "/whip/{room}/{session}",
            412,
            headers={**host, **frag, "If-Match": '"old"'},
            room="stage",
            session=session,
            data=f"{ufrag}\r\n".encode(),
        )
        await call(
            "PATCH",
            "/whip/{room}/{session}",
            422,
            headers={**host, **frag},
            room="stage",
            session=session,
            data=b"a=ice-ufrag:other\r\n",
        )
        played = await call(
            "POST", "/whep/{room}", 201, headers={**viewer, **sdp}, room="stage", data=play_offer.encode()
        )
        assert "VP8/90000" in played
        (whep_id,) = live.audience.playback
        await call("OPTIONS", "/whep/{room}/{session}", 204, room="stage", session=whep_id)
        await call(
            "PATCH",
            "/whep/{room}/{session}",
            204,
            headers={**viewer, **frag},
            room="stage",
            session=whep_id,
            data=b"a=end-of-candidates\r\n",
        )
        await call("DELETE", "/whep/{room}/{session}", 200, headers=viewer, room="stage", session=whep_id)
        await call("DELETE", "/whep/{room}/{session}", 404, headers=viewer, room="stage", session=whep_id)
        await call("DELETE", "/whip/{room}/{session}", 200, headers=host, room="stage", session=session)
        await call(
            "PATCH",
            "/whip/{room}/{session}",
            404,
            headers={**host, **frag},
            room="stage",
            session=session,
            data=b"a=end-of-candidates\r\n",
        )
    finally:
        await encoder.close()
        await player.close()


class Caller:
    """Makes a call, then checks its answer against the documented response."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.seen: set[tuple[str, str, str]] = set()

    async def __call__(
        self,
        method: str,
        template: str,
        status: int,
        *,
        headers: dict[str, str] | None = None,
        json: Any = None,
        query: dict[str, str] | None = None,
        data: bytes | None = None,
        allow_redirects: bool = True,
        **ids: str,
    ) -> Any:
        operation = DOC["paths"][template][method.lower()]
        if json is not None and status < 300:
            request_schema = operation["requestBody"]["content"]["application/json"]["schema"]
            assert validate(json, request_schema) == [], "the test sends an undocumented body"
        resp = await self.client.request(
            method,
            template.format(**ids),
            headers=headers,
            json=json,
            params=query,
            data=data,
            allow_redirects=allow_redirects,
        )
        assert resp.status == status, await resp.text()
        response = resolve(operation["responses"].get(str(status)))
        assert response is not None, f"{method} {template} answered an undocumented {status}"
        if "content" not in response:  # a redirect or an upgrade: headers only
            assert resp.headers["X-Request-Id"]
            self.seen.add((method.lower(), template, str(status)))
            return resp.headers
        ((media, content),) = response["content"].items()
        assert resp.content_type == media.split(";")[0]
        assert resp.headers["X-Request-Id"]
        body = await resp.json() if media == "application/json" else await resp.text()
        assert validate(body, content["schema"]) == [], (method, template, status, body)
        if status >= 400:
            assert body["error"]["code"] in response["x-error-codes"], (method, template, body)
        self.seen.add((method.lower(), template, str(status)))
        return body


async def _keyword_calls(call: Caller, admin: dict[str, str], iid: str, participant: dict[str, str]) -> None:
    """The keyword API and the instance's providers (tests/bots/test_keywords_api.py and test_providers.py say more)."""
    kw = "/api/v1/keywords/{group}/{name}"
    answer = await call("POST", kw, 200, headers=admin, group="system", name="numberOnly", json={"text": "a1b2"})
    assert answer == {"group": "system", "keyword": "numberOnly", "result": "12"}
    await call("POST", kw, 200, headers=OPERATOR, group="dialog", name="getNow", query={"instance_id": iid}, json={})
    await call("POST", kw, 400, headers=admin, group="system", name="numberOnly", json={})
    await call("POST", kw, 400, headers=OPERATOR, group="system", name="numberOnly", json={"text": "1"})
    await call("POST", kw, 403, headers=participant, group="system", name="numberOnly", json={"text": "1"})
    await call("POST", kw, 404, headers=admin, group="system", name="nope", json={})
    await call("POST", kw, 409, headers=admin, group="dialog", name="talk", json={"text": ["hi"]})
    await call("POST", kw, 409, headers=admin, group="system", name="sendSmsTo", json={"to": "1", "text": "x"})
    await call("POST", kw, 401, group="system", name="numberOnly", json={"text": "1"})
    for old, name in (
        ("/systemKeywords/{name}", "numberToLetters"),
        ("/dialogKeywords/{name}", "getCoded"),
        ("/imageProcessing/{name}", "nope"),
        ("/webAutomation/{name}", "nope"),
    ):
        status = 404 if name == "nope" else 200
        body = {"number": 1, "pid": 3} if name == "numberToLetters" else {"text": "x"}
        await call("POST", old, status, headers=admin, name=name, json=body if status == 200 else None)
    await call("POST", "/systemKeywords/{name}", 401, name="numberOnly", json={"text": "1"})
    providers = "/api/v1/bots/providers"
    one = providers + "/{service}"
    hook = {"kind": "webhook", "settings": {"url": "https://hooks.example.invalid/sms"}, "secret": "s3cret"}
    made = await call("PUT", one, 201, headers=admin, service="sms", json=hook)
    assert made["has_secret"] and "secret" not in made
    await call("PUT", one, 200, headers=admin, service="sms", json={**hook, "secret": None})
    await call("PUT", one, 400, headers=admin, service="sms", json={"kind": "smtp"})
    await call("PUT", one, 404, headers=admin, service="fax", json=hook)
    await call("PUT", one, 403, headers=participant, service="sms", json=hook)
    listed = await call("GET", providers, 200, headers=admin)
    assert [p["service"] for p in listed["providers"]] == ["sms"]
    await call("GET", providers, 400, headers=OPERATOR)
    await call("GET", providers, 404, headers=OPERATOR, query={"instance_id": str(uuid.uuid4())})
    await call("DELETE", one, 204, headers=admin, service="sms")
    await call("DELETE", one, 404, headers=admin, service="sms")
    await call("DELETE", one, 400, headers=OPERATOR, service="sms")


async def _debugger_calls(call: Caller, admin: dict[str, str], participant: dict[str, str]) -> None:
    """The debugger's routes on the stored dialog ``start`` (``TALK "hi"``) and a source with a HEAR."""
    runs = "/api/v1/debugger/runs"
    body = {"source": "x = 1\nHEAR y\nTALK y", "breakpoints": [1], "stop_on_entry": False}
    run = await call("POST", runs, 201, headers=admin, json=body)
    assert (run["state"], run["line"]) == ("break", 1)
    await call("POST", runs, 400, headers=admin, json={"source": "IF"})
    await call("POST", runs, 403, headers=participant, json={"dialog": "start"})
    await call("POST", runs, 404, headers=admin, json={"dialog": "nope"})
    one = "/api/v1/debugger/runs/{run_id}"
    rid = run["id"]
    await call("GET", one, 200, headers=admin, run_id=rid)
    await call("GET", one, 400, headers=OPERATOR, run_id=rid)
    await call("GET", one, 403, headers=participant, run_id=rid)
    await call("GET", one, 404, headers=admin, run_id=str(uuid.uuid4()))
    bp = one + "/breakpoints"
    await call("POST", bp, 200, headers=admin, run_id=rid, json={"line": 3, "enabled": True})
    await call("POST", bp, 400, headers=admin, run_id=rid, json={"line": "3"})
    await call("POST", bp, 403, headers=participant, run_id=rid, json={"line": 3})
    await call("POST", bp, 404, headers=admin, run_id=str(uuid.uuid4()), json={"line": 3})
    for action in ("step", "resume"):
        await call("POST", f"{one}/{action}", 400, headers=OPERATOR, run_id=rid)
        await call("POST", f"{one}/{action}", 403, headers=participant, run_id=rid)
        await call("POST", f"{one}/{action}", 404, headers=admin, run_id=str(uuid.uuid4()))
    stepped = await call("POST", one + "/step", 200, headers=admin, run_id=rid)
    assert stepped["line"] == 2
    resumed = await call("POST", one + "/resume", 200, headers=admin, run_id=rid)
    assert resumed["waiting_for_input"]
    await call("POST", one + "/step", 409, headers=admin, run_id=rid)
    await call("POST", one + "/resume", 409, headers=admin, run_id=rid)
    messages = one + "/messages"
    answered = await call("POST", messages, 200, headers=admin, run_id=rid, json={"text": "yo"})
    assert (answered["state"], answered["line"]) == ("break", 3)
    await call("POST", messages, 409, headers=admin, run_id=rid, json={"text": "again"})
    await call("POST", messages, 400, headers=admin, run_id=rid, json={})
    await call("POST", messages, 403, headers=participant, run_id=rid, json={"text": "x"})
    await call("POST", messages, 404, headers=admin, run_id=str(uuid.uuid4()), json={"text": "x"})
    stopped = await call("DELETE", one, 200, headers=admin, run_id=rid)
    assert stopped["state"] == "stopped"
    await call("DELETE", one, 400, headers=OPERATOR, run_id=rid)
    await call("DELETE", one, 403, headers=participant, run_id=rid)
    await call("DELETE", one, 404, headers=admin, run_id=rid)
    refactor = "/api/v1/debugger/refactor"
    renamed = await call(
        "POST", refactor, 200, headers=admin, json={"action": "rename", "source": "a = 1", "old": "a", "new": "b"}
    )
    assert renamed["source"] == "b = 1"
    await call("POST", refactor, 400, headers=admin, json={"action": "rename", "source": "a = 1"})
    await call("POST", refactor, 403, headers=participant, json={"action": "reformat", "source": "a = 1"})
    await call("POST", refactor, 404, headers=admin, json={"action": "reformat", "dialog": "nope"})
    await call(
        "POST",
        refactor,
        409,
        headers=admin,
        json={"action": "rename", "source": "a = 1\nb = 2", "old": "a", "new": "b"},
    )
    unsafe = {"action": "rename", "source": "email = 1\nHEAR e AS EMAIL", "old": "email", "new": "m"}
    await call("POST", refactor, 422, headers=admin, json=unsafe)
    legacy = "/debuggerService/{name}"
    started = await call("POST", legacy, 201, headers=admin, name="start", json={"scriptName": "start"})
    assert started["outcome"] == "done"
    context = await call("POST", legacy, 200, headers=admin, name="getContext", json={"botId": started["botId"]})
    assert context["messages"] == []  # start's answer had them
    formatted = await call(
        "POST", legacy, 200, headers=admin, name="refactor", json={"code": "talk 1", "change": "reformat"}
    )
    assert formatted["source"] == "TALK 1"
    await call("POST", legacy, 400, headers=admin, name="refactor", json={"code": "talk 1", "change": "?"})
    await call("POST", legacy, 403, headers=participant, name="step", json={"botId": started["botId"]})
    await call("POST", legacy, 404, headers=admin, name="launch", json={})
    await call("POST", legacy, 409, headers=admin, name="step", json={"botId": started["botId"]})
    await call(
        "POST",
        legacy,
        422,
        headers=admin,
        name="refactor",
        json={"code": unsafe["source"], "change": "rename email to m"},
    )
    await call("POST", legacy, 200, headers=admin, name="stop", json={"botId": started["botId"]})


async def test_real_answers_conform_to_the_documented_responses(client: TestClient):
    call = Caller(client)
    await call("GET", "/healthz", 200)
    await call("GET", "/readyz", 200)
    await call("GET", "/metrics", 200)
    await call("GET", "/openapi.json", 200)
    home = await call("GET", "/", 302, allow_redirects=False)
    assert home["Location"] == "/web/room/"
    page = await call("GET", "/web/{path}", 200, path="room/")
    assert "<title>" in page
    await call("GET", "/web/{path}", 302, path="room", allow_redirects=False)
    await call("GET", "/web/{path}", 404, path="room/nope.js")
    # The dashboard's one-time login link (tests/tenancy/test_dashboard_login.py covers it in depth).
    code = dashboard_login.issue_code(client.app[NODE].settings.data_dir)
    await call("POST", "/dashboard/login", 400, json={"code": ""})
    await call("POST", "/dashboard/login", 401, json={"code": "guess"})
    session = await call("POST", "/dashboard/login", 200, json={"code": code})
    assert session["kind"] == "operator"
    await call("GET", "/api/v1/whoami", 200, headers=OPERATOR)
    await call("GET", "/api/v1/plans", 200, headers=OPERATOR)

    customer = await call(
        "POST",
        "/api/v1/customers",
        201,
        headers=OPERATOR,
        json={"name": "Docs", "tier": "starter", "metadata": {"crm": 7}},
    )
    cid = customer["id"]
    await call("GET", "/api/v1/customers", 200, headers=OPERATOR, query={"limit": "10", "offset": "0"})
    await call(
        "PATCH",
        "/api/v1/customers/{customer_id}",
        200,
        headers=OPERATOR,
        customer_id=cid,
        json={"name": "Docs Inc", "max_instances": 2},
    )
    created = await call(
        "POST",
        "/api/v1/customers/{customer_id}/instances",
        201,
        headers=OPERATOR,
        customer_id=cid,
        json={
            "name": "main",
            "region": "eu-west",
            "locale": "pt-BR",
            "features": {"recording": True},
            "config": {"a": [1]},
        },
    )
    iid = created["instance"]["id"]
    tenant = Tenant(cid, iid, created["credentials"]["key"], created["credentials"]["secret"])
    admin = tenant.admin
    await call("GET", "/api/v1/customers/{customer_id}", 200, headers=admin, customer_id=cid)
    await call("GET", "/api/v1/customers/{customer_id}/instances", 200, headers=admin, customer_id=cid)
    await call("GET", "/api/v1/instances/{instance_id}", 200, headers=admin, instance_id=iid)
    await call(
        "PATCH",
        "/api/v1/instances/{instance_id}",
        200,
        headers=admin,
        instance_id=iid,
        json={"config": {"theme": "dark"}},
    )
    await call("GET", "/api/v1/instances/{instance_id}/keys", 200, headers=admin, instance_id=iid)
    key = await call(
        "POST", "/api/v1/instances/{instance_id}/keys", 201, headers=admin, instance_id=iid, json={"description": "ci"}
    )
    await call(
        "DELETE", "/api/v1/instances/{instance_id}/keys/{key}", 200, headers=admin, instance_id=iid, key=key["key"]
    )
    minted = await call(
        "POST",
        "/api/v1/instances/{instance_id}/tokens",
        201,
        headers=admin,
        instance_id=iid,
        json={"identity": "ops", "name": "Ops", "grants": {"instance_admin": True}, "ttl_seconds": 600},
    )
    whoami = await call("GET", "/api/v1/whoami", 200, headers=bearer(minted["token"]))
    assert (whoami["kind"], whoami["identity"], whoami["grants"]) == ("instance", "ops", {"instance_admin": True})
    participant = await call(
        "POST",
        "/api/v1/instances/{instance_id}/tokens",
        201,
        headers=OPERATOR,
        instance_id=iid,
        json={"identity": "bob", "room": "standup"},
    )
    await call("GET", "/api/v1/audit", 200, headers=OPERATOR, query={"customer_id": cid, "limit": "5"})
    entries = await call("GET", "/api/v1/audit", 200, headers=admin)
    await call("GET", "/api/v1/audit", 200, headers=admin, query={"before": str(entries["entries"][-1]["id"])})

    room = await call(
        "POST",
        "/api/v1/rooms",
        201,
        headers=admin,
        json={
            "name": "standup",
            "kind": "live",
            "max_participants": 5,
            "empty_timeout": 60,
            "metadata": {"topic": "docs"},
        },
    )
    await call("POST", "/api/v1/rooms", 201, headers=OPERATOR, json={"name": "ops.room_1", "instance_id": iid})
    await call("GET", "/api/v1/rooms", 200, headers=admin)
    await call(
        "GET",
        "/api/v1/rooms",
        200,
        headers=OPERATOR,
        query={"instance_id": iid, "status": "all", "limit": "10", "offset": "0"},
    )
    await call("GET", "/api/v1/rooms/{room_id}", 200, headers=admin, room_id=room["id"])
    await call("GET", "/rtc", 400)
    await call("GET", "/hls/{room_id}/live.m3u8", 404, room_id=room["id"])  # live, but nobody publishes video
    await call("GET", "/hls/{room_id}/{name}", 404, room_id=room["id"], name="0a1b2c3d-init.mp4")
    socket = await client.ws_connect("/rtc")
    await socket.send_json({"type": "join", "token": participant["token"]})
    joined = await socket.receive_json()
    assert joined["type"] == "joined", joined
    pid = joined["participant"]["id"]
    detail = await call("GET", "/api/v1/rooms/{room_id}", 200, headers=admin, room_id=room["id"])
    assert [p["id"] for p in detail["participants"]] == [pid] and detail["num_participants"] == 1
    listed = await call("GET", "/api/v1/rooms/{room_id}/participants", 200, headers=admin, room_id=room["id"])
    assert listed["participants"][0]["identity"] == "bob"
    stats = await call(
        "GET",
        "/api/v1/rooms/{room_id}/participants/{participant}/stats",
        200,
        headers=admin,
        room_id=room["id"],
        participant=pid,
    )
    assert (stats["identity"], stats["published"], stats["subscribed"]) == ("bob", [], [])
    await call(
        "GET",
        "/api/v1/rooms/{room_id}/participants/{participant}/stats",
        404,
        headers=admin,
        room_id=room["id"],
        participant="nobody",
    )
    await call(
        "POST",
        "/api/v1/rooms/{room_id}/participants/{participant}/tracks/{track}/mute",
        404,
        headers=admin,
        room_id=room["id"],
        participant=pid,
        track="TR_nope",
        json={"muted": True},
    )
    await call(
        "POST",
        "/api/v1/rooms/{room_id}/participants/{participant}/tracks/{track}/mute",
        400,
        headers=admin,
        room_id=room["id"],
        participant=pid,
        track="TR_nope",
        json={"muted": "yes"},
    )
    removed = await call(
        "DELETE",
        "/api/v1/rooms/{room_id}/participants/{participant}",
        200,
        headers=admin,
        room_id=room["id"],
        participant="bob",
    )
    assert removed["removed"]["id"] == pid
    assert (await socket.receive_json()) == {"type": "removed", "reason": "removed_by_admin"}
    await socket.close()
    await call(
        "DELETE",
        "/api/v1/rooms/{room_id}/participants/{participant}",
        404,
        headers=admin,
        room_id=room["id"],
        participant="bob",
    )
    await _recording_calls(call, admin, room["id"])
    await _media_bot_calls(call, admin, room["id"])
    closed = await call("DELETE", "/api/v1/rooms/{room_id}", 200, headers=admin, room_id=room["id"])
    assert closed["status"] == "closed" and closed["closed_at"]
    await _chat_calls(call, tenant)
    await _live_calls(call, tenant)
    await _webhook_calls(call, admin, iid)
    await _billing_calls(call, admin, cid, bearer(participant["token"]))
    await _keyword_calls(call, admin, iid, bearer(participant["token"]))
    creator = await call(
        "POST",
        "/api/v1/instances/{instance_id}/tokens",
        201,
        headers=admin,
        instance_id=iid,
        json={"identity": "app", "grants": {"room_create": True}},
    )

    # Errors, each with a code its response lists.
    await call("GET", "/api/v1/whoami", 401)
    await call("GET", "/api/v1/whoami", 401, headers={"Authorization": "Basic eDp5"})
    await call("POST", "/api/v1/customers", 400, headers=OPERATOR, json={"name": ""})
    await call("POST", "/api/v1/customers", 400, headers=OPERATOR, json={"name": "x", "tier": "platinum"})
    await call(
        "POST",
        "/api/v1/customers",
        413,
        headers={**OPERATOR, "Content-Type": "application/json"},
        data=b'{"name": "' + b"x" * (client.app[NODE].settings.max_body_bytes + 10) + b'"}',
    )
    await call("GET", "/api/v1/customers", 400, headers=OPERATOR, query={"limit": "0"})
    await call("GET", "/api/v1/customers", 403, headers=admin)
    await call("GET", "/api/v1/nodes", 403, headers=admin)
    await call("POST", "/api/v1/nodes/{node_id}/drain", 403, headers=admin, node_id="any")
    await call("GET", "/api/v1/instances/{instance_id}", 400, headers=OPERATOR, instance_id="nope")
    await call("GET", "/api/v1/instances/{instance_id}", 404, headers=OPERATOR, instance_id=str(uuid.uuid4()))
    await call("GET", "/api/v1/instances/{instance_id}", 403, headers=bearer(participant["token"]), instance_id=iid)
    await call(
        "PATCH", "/api/v1/instances/{instance_id}", 403, headers=admin, instance_id=iid, json={"status": "suspended"}
    )
    await call("PATCH", "/api/v1/customers/{customer_id}", 400, headers=OPERATOR, customer_id=cid, json={"name": None})
    await call(
        "POST",
        "/api/v1/customers/{customer_id}/instances",
        409,
        headers=OPERATOR,
        customer_id=cid,
        json={"name": "main"},
    )
    await call(
        "POST",
        "/api/v1/customers/{customer_id}/instances",
        201,
        headers=OPERATOR,
        customer_id=cid,
        json={"name": "second"},
    )
    quota = await call(
        "POST",
        "/api/v1/customers/{customer_id}/instances",
        403,
        headers=OPERATOR,
        customer_id=cid,
        json={"name": "third"},
    )
    assert quota["error"]["code"] == "quota_max_instances_exceeded"
    await call(
        "POST",
        "/api/v1/instances/{instance_id}/tokens",
        400,
        headers=OPERATOR,
        instance_id=iid,
        json={"identity": "x", "grants": {"fly": True}},
    )
    await call(
        "DELETE", "/api/v1/instances/{instance_id}/keys/{key}", 404, headers=OPERATOR, instance_id=iid, key="APInope"
    )
    await call("POST", "/api/v1/rooms", 400, headers=OPERATOR, json={"name": "no-instance"})
    await call("POST", "/api/v1/rooms", 400, headers=admin, json={"name": "bad name"})
    await call("POST", "/api/v1/rooms", 403, headers=admin, json={"name": "huge", "max_participants": 51})
    await call("POST", "/api/v1/rooms", 403, headers=bearer(participant["token"]), json={"name": "x"})
    await call("POST", "/api/v1/rooms", 404, headers=OPERATOR, json={"name": "x", "instance_id": str(uuid.uuid4())})
    await call("POST", "/api/v1/rooms", 409, headers=admin, json={"name": "ops.room_1"})
    await call("GET", "/api/v1/rooms", 400, headers=admin, query={"status": "bogus"})
    await call("GET", "/api/v1/rooms", 403, headers=bearer(participant["token"]))
    await call("GET", "/api/v1/rooms", 404, headers=OPERATOR, query={"instance_id": str(uuid.uuid4())})
    await call("GET", "/api/v1/rooms/{room_id}", 400, headers=admin, room_id="nope")
    await call("GET", "/api/v1/rooms/{room_id}", 404, headers=admin, room_id=str(uuid.uuid4()))
    await call("DELETE", "/api/v1/rooms/{room_id}", 403, headers=bearer(creator["token"]), room_id=room["id"])
    await call("DELETE", "/api/v1/rooms/{room_id}", 404, headers=OPERATOR, room_id=str(uuid.uuid4()))
    # Bots: an instance's dialogs and runs (tests/bots/test_api.py and test_engine.py say more).
    dialog = "/api/v1/bots/dialogs/{name}"
    await call("PUT", dialog, 201, headers=admin, name="start", json={"source": 'TALK "hi"'})
    await call(
        "PUT", dialog, 200, headers=OPERATOR, name="Start.bas", query={"instance_id": iid}, json={"source": "x = 1"}
    )
    await call("PUT", dialog, 400, headers=admin, name="broken", json={"source": 'TALK "unclosed'})
    await call("PUT", dialog, 403, headers=bearer(participant["token"]), name="x", json={"source": ""})
    await call(
        "PUT", dialog, 404, headers=OPERATOR, name="x", query={"instance_id": str(uuid.uuid4())}, json={"source": ""}
    )
    await call("PUT", dialog, 413, headers=admin, name="big", json={"source": "' " + "x" * 300_000})
    await call("GET", "/api/v1/bots/dialogs", 200, headers=admin)
    await call("GET", "/api/v1/bots/dialogs", 400, headers=OPERATOR)
    await call("GET", "/api/v1/bots/dialogs", 403, headers=bearer(participant["token"]))
    await call("GET", "/api/v1/bots/dialogs", 404, headers=OPERATOR, query={"instance_id": str(uuid.uuid4())})
    await call("GET", dialog, 200, headers=admin, name="start")
    await call("GET", dialog, 400, headers=admin, name="start", query={"instance_id": "nope"})
    await call("GET", dialog, 404, headers=admin, name="nope")
    await _debugger_calls(call, admin, bearer(participant["token"]))
    # SHARE FOLDER's links (tests/bots/test_sharing.py says more): no credentials, the signed link is the grant.
    runner = client.app[NODE].bots.engine.runner
    assert runner.links is not None
    await InstanceFiles(runner.data_dir, iid).write("shared/a.bin", b"hi")
    await InstanceFiles(runner.data_dir, iid).write("shared/sub/b.txt", b"b")
    token = runner.links.link(iid, "shared", 60).rsplit("/", 1)[1]
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    expired = runner.links.link(iid, "shared", 60, now=0).rsplit("/", 1)[1]
    shared = await call("GET", "/shared/{token}", 200, token=token)
    assert [f["name"] for f in shared["files"]] == ["a.bin", "sub"]
    await call("GET", "/shared/{token}", 403, token=forged)
    removed = runner.links.link(iid, "removed", 60).rsplit("/", 1)[1]
    await call("GET", "/shared/{token}", 404, token=removed)
    assert await call("GET", "/shared/{token}/{path}", 200, token=token, path="a.bin") == "hi"
    await call("GET", "/shared/{token}/{path}", 403, token=expired, path="a.bin")
    await call("GET", "/shared/{token}/{path}", 404, token=token, path="none.bin")
    await call("GET", "/api/v1/bots/runs", 200, headers=admin, query={"limit": "10"})
    await call("GET", "/api/v1/bots/runs", 400, headers=admin, query={"limit": "0"})
    join = "/api/v1/bots/conversations"
    joined = await call(
        "POST", join, 201, headers=admin, json={"room_id": room["id"], "dialog": "start", "user": "ann"}
    )
    assert joined["run"]["status"] == "done"
    await call("POST", join, 201, headers=admin, json={"room_id": room["id"], "bot": "helper"})
    await call("POST", join, 400, headers=admin, json={})
    await call("POST", join, 403, headers=bearer(participant["token"]), json={"room_id": room["id"]})
    await call("POST", join, 404, headers=admin, json={"room_id": str(uuid.uuid4())})
    await call("POST", join, 409, headers=admin, json={"room_id": room["id"], "bot": "ann"})
    # HEAR AS LOGIN: ann signs in with the code a bot gave in the room's chat (tests/bots/test_login.py).
    login = "/api/v1/bots/login"
    code = await PgLogins(client.app[NODE].db.pool, uuid.UUID(iid), uuid.UUID(joined["conversation_id"]), "ann").start()
    signed = await call("POST", login, 200, headers=bearer(participant["token"]), json={"code": code})
    assert signed["signed_in"]["conversation_id"] == joined["conversation_id"]
    await call("POST", login, 400, headers=admin, json={"code": 1})
    await call("POST", login, 403, headers=OPERATOR, json={"code": code})
    await call("POST", login, 404, headers=admin, json={"code": code})
    run = "/api/v1/bots/runs/{run_id}"
    stopped = await call("DELETE", run, 200, headers=admin, run_id=joined["run"]["id"])
    assert stopped["run"]["status"] == "stopped"
    await call("DELETE", run, 400, headers=OPERATOR, run_id=joined["run"]["id"])
    await call("DELETE", run, 404, headers=admin, run_id=str(uuid.uuid4()))
    await call("DELETE", dialog, 204, headers=admin, name="start")
    await call("DELETE", dialog, 404, headers=admin, name="start")
    deleted = await call("DELETE", "/api/v1/instances/{instance_id}", 200, headers=OPERATOR, instance_id=iid)
    assert deleted["status"] == "deleted"
    await call("GET", "/api/v1/whoami", 401, headers=admin)  # api_key_revoked
    await call("POST", "/api/v1/instances/{instance_id}/keys", 409, headers=OPERATOR, instance_id=iid, json={})
    await call(
        "POST",
        "/api/v1/instances/{instance_id}/tokens",
        409,
        headers=OPERATOR,
        instance_id=iid,
        json={"identity": "late"},
    )
    await call("POST", "/api/v1/rooms", 409, headers=OPERATOR, json={"name": "late", "instance_id": iid})

    # The cluster's nodes (a node without Redis lists itself, and has nowhere to drain to; the
    # drain's 202 and 404 are answered by cluster nodes in tests/test_cluster.py).
    nodes = await call("GET", "/api/v1/nodes", 200, headers=OPERATOR)
    (me,) = nodes["nodes"]
    await call("POST", "/api/v1/nodes/{node_id}/drain", 409, headers=OPERATOR, node_id=me["node_id"])
    # Feeds between nodes (cascading live rooms): nodes only; their real feeds are tests/test_cascade.py's.
    sdp = {"Content-Type": "application/sdp"}
    await call("POST", "/cluster/cascade/{room_id}", 403, room_id=str(uuid.uuid4()), data=b"v=0", headers=sdp)
    await call("DELETE", "/cluster/cascade/{room_id}/{session}", 403, room_id=str(uuid.uuid4()), session="abc")

    documented = {(m, path) for m, path, _ in operations()}
    assert documented == {(m, path) for m, path, _ in call.seen}, "every operation is exercised"
