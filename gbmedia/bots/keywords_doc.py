"""The keyword API's part of the OpenAPI document, made from the registry so the two cannot drift.

``python -m gbmedia.bots.keywords_doc`` rewrites the keyword and provider operations of
gbmedia/http/openapi.json, with ``x-keywords``: every served keyword by group, its
arguments (a JSON Schema of the body) and its answer (the schema of ``result``, from the
built-in's return annotation). tests/bots/test_keywords_doc.py fails when the document
differs from what this makes: run it after adding or changing a built-in.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

import gbmedia.bots.library
import gbmedia.http
from gbmedia.bots import keywords
from gbmedia.bots.providers import KINDS, SERVICES
from gbmedia.bots.registry import Builtin

DOC_PATH = Path(gbmedia.http.__file__).parent / "openapi.json"
KEYWORD_PATH = "/api/v1/keywords/{group}/{name}"
OLD_PATHS = {f"/{prefix}/{{name}}": group for prefix, group in keywords.OLD_PREFIXES.items()}
REQUEST_ID = {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}}
ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
WHO = (
    "Who may call: the operator (naming the instance with `instance_id`), an access token of the instance "
    "with `instance_admin`, or a dialog run's token (`getCustomToken`), which acts on that run's instance, "
    "conversation and user."
)
ADMINS = "Who may call: the operator (naming the instance with `instance_id`), or an access token of the instance with `instance_admin`."  # noqa: E501


def schema_of(hint: Any) -> dict[str, Any]:
    """A JSON Schema for a return annotation (``{}``: any JSON value)."""
    if hint is type(None):
        return {"type": "null"}
    simple = {str: "string", bool: "boolean", int: "integer", float: "number"}
    if hint in simple:
        return {"type": simple[hint]}
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [schema_of(a) for a in typing.get_args(hint)]
        if all(set(p) == {"type"} and isinstance(p["type"], str) for p in parts):
            names = sorted({p["type"] for p in parts})
            if set(names) == {"integer", "number"}:
                return {"type": "number"}
            names = ["number" if n == "integer" and "number" in names else n for n in names]
            unique = sorted(set(names))
            return {"type": unique[0] if len(unique) == 1 else unique}
        return {}
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        inner = schema_of(item)
        return {"type": "array", "items": inner} if inner else {"type": "array"}
    if origin is dict or hint is dict:
        return {"type": "object"}
    if hint is list:
        return {"type": "array"}
    return {}


def answer_of(entry: Builtin) -> dict[str, Any]:
    if entry.statement_only and typing.get_type_hints(entry.fn).get("return") in (None, type(None)):
        return {"type": "null"}
    return schema_of(typing.get_type_hints(entry.fn).get("return", Any))


def arguments_of(entry: Builtin) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for param in entry.params:
        prop: dict[str, Any] = {"description": ("optional" if param.optional else "required")}
        if param.variadic:
            prop = {"type": "array", "description": "any number of values, as a list"}
        properties[param.name] = prop
    required = [p.name for p in entry.params if not p.optional and not p.variadic]
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = required
    return schema


def keyword_entries() -> dict[str, dict[str, Any]]:
    """``x-keywords``: group -> name -> what it does, takes and answers, and how HTTP may call it."""
    out: dict[str, dict[str, Any]] = {}
    for group in keywords.GROUPS:
        served: dict[str, Any] = {}
        for name in keywords.names(group):
            found = keywords.resolve(group, name)
            if found is None:
                continue  # not built yet: tests/bots/test_keywords_api.py lists these
            canonical, entry = found
            if canonical in keywords.DIALOG_ONLY or (entry is None and canonical != "exit"):
                http = "dialog_only"
            elif canonical in keywords.NEEDS_RUN:
                http = "run_token"
            else:
                http = "any"
            if entry is None:
                doc = {
                    "exit": "End the run (with a run's token: that run stops).",
                    "hear": "Wait for the user's answer (HEAR): a dialog statement.",
                    "start": "Start the dialog from its beginning: a dialog statement.",
                    "showMenu": "Show the menu of the bot's dialogs: a dialog statement.",
                }[canonical]
                served[canonical] = {"summary": doc, "http": http, "arguments": {"type": "object"}, "answer": {}}
                continue
            served[canonical] = {
                "summary": entry.doc.split("\n")[0],
                "builtin": entry.name,
                "http": http,
                "arguments": arguments_of(entry),
                "answer": answer_of(entry),
            }
        out[group] = served
    return out


def _error(description: str, codes: list[tuple[str, str]]) -> dict[str, Any]:
    text = description + " `error.code` is one of:\n\n" + "\n".join(f"- `{c}`: {why}" for c, why in codes)
    return {"description": text, "headers": REQUEST_ID, "content": ERROR, "x-error-codes": [c for c, _ in codes]}


BAD_QUERY = ("invalid_query", "`instance_id` is not a UUID")
OPERATOR_ID = ("instance_id_required", "the operator did not name the `instance_id`")
BODY = [
    ("invalid_json", "the body is not valid JSON"),
    ("json_too_deep", "the body nests objects and arrays deeper than 32 levels; `details.max_depth` is the limit"),
    ("body_not_object", "the body is not a JSON object"),
]
FORBIDDEN = _error(
    "The caller may not do this.",
    [
        ("grant_missing", "the access token lacks `instance_admin`; `details.grant` names it"),
        ("instance_suspended", "the token's instance is suspended"),
        ("customer_suspended", "the token's customer is suspended or closed"),
        (
            "feature_not_in_plan",
            "the customer's tier does not include `bots`; `details.feature` is `bots`, `details.tier` names the tier",
        ),
        ("feature_disabled", "the instance has the `bots` feature turned off; `details.feature` is `bots`"),
    ],
)
COMMON = {
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "403": FORBIDDEN,
    "429": {"$ref": "#/components/responses/RateLimited"},
    "500": {"$ref": "#/components/responses/InternalError"},
    "503": {"$ref": "#/components/responses/DependencyUnavailable"},
}


def keyword_operation(operation_id: str, old_group: str | None) -> dict[str, Any]:
    where = (
        f"The old platform's path for the `{old_group}` keywords (`POST /api/v1/keywords/{old_group}/{{name}}`), "
        "kept so General Bots clients work unchanged; its `pid` argument (the old dialog id) is ignored. "
        if old_group
        else ""
    )
    parameters = [{"$ref": "#/components/parameters/bot_instance_id"}]
    if not old_group:
        parameters.append({"$ref": "#/components/parameters/keyword_group"})
    parameters += [{"$ref": "#/components/parameters/keyword_name"}, {"$ref": "#/components/parameters/X-Request-Id"}]
    operation: dict[str, Any] = {
        "tags": ["keywords"],
        "summary": "Call a keyword" + (f" ({old_group}, the old path)" if old_group else ""),
        "operationId": operation_id,
        "description": where
        + "Runs one GB BASIC keyword, the very built-in dialogs run (docs/keywords.md), in the instance's context "
        "(its tables, files, HTTP allowance, providers). The body holds the keyword's named arguments "
        "(`x-keywords` lists each keyword's arguments and answer); a keyword without arguments takes `{}` or no "
        "body. " + WHO,
        "security": [{"operatorToken": []}, {"accessToken": []}],
        "parameters": parameters,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/KeywordArguments"}}},
        },
        "responses": {
            "200": {
                "description": "The keyword's answer.",
                "headers": REQUEST_ID,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/KeywordAnswer"}}},
            },
            "400": _error(
                "The call is invalid.",
                [
                    BAD_QUERY,
                    OPERATOR_ID,
                    *BODY,
                    ("keyword_argument_missing", "a required argument is missing; `details.argument` names it"),
                    ("keyword_argument_unknown", "the keyword has no such argument; `details.argument` names it"),
                    ("keyword_argument_invalid", "a variadic argument is not a list; `details.argument` names it"),
                    (
                        "keyword_failed",
                        "the keyword refused its arguments or failed (the message says why); `details.argument` "
                        "names the argument of a one-argument keyword",
                    ),
                    ("keyword_limit_exceeded", "a sandbox limit was reached; `details.limit` names the setting"),
                ],
            ),
            **COMMON,
            "404": _error(
                "Not found.",
                [
                    ("keyword_not_found", "the group has no keyword of that name"),
                    ("instance_not_found", "no such instance, or not the caller's"),
                    ("dialog_not_found", "`gotoDialog` named a dialog the instance does not have"),
                ],
            ),
            "409": _error(
                "The keyword cannot run for this caller.",
                [
                    ("keyword_dialog_only", "it changes a running dialog (HEAR, SET ...): only a dialog runs it"),
                    ("keyword_run_required", "it acts on a conversation and its user: call it with a run's token"),
                    (
                        "provider_not_configured",
                        "the instance has no provider for the outside service it needs; the message names the "
                        "setting (`providers.<service>`, set with `PUT /api/v1/bots/providers/{service}`)",
                    ),
                ],
            ),
            "413": {"$ref": "#/components/responses/PayloadTooLarge"},
        },
    }
    if not old_group:
        operation["x-keywords"] = keyword_entries()
    return operation


def provider_operations() -> dict[str, dict[str, Any]]:
    provider_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/BotProvider"}}}
    common_400 = [BAD_QUERY, OPERATOR_ID]
    base = [{"$ref": "#/components/parameters/bot_instance_id"}]
    service = [{"$ref": "#/components/parameters/provider_service"}]
    rid = [{"$ref": "#/components/parameters/X-Request-Id"}]
    return {
        "/api/v1/bots/providers": {
            "get": {
                "tags": ["keywords"],
                "summary": "List the instance's providers",
                "operationId": "listBotProviders",
                "description": "The outside services the instance's keywords use, and the services there are "
                "(secrets are never shown). " + ADMINS,
                "security": [{"operatorToken": []}, {"accessToken": []}],
                "parameters": base + rid,
                "responses": {
                    "200": {
                        "description": "The providers.",
                        "headers": REQUEST_ID,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BotProviders"}}},
                    },
                    "400": _error("The request is invalid.", common_400),
                    **COMMON,
                    "404": _error("Not found.", [("instance_not_found", "no such instance, or not the caller's")]),
                },
            }
        },
        "/api/v1/bots/providers/{service}": {
            "put": {
                "tags": ["keywords"],
                "summary": "Set the provider of a service",
                "operationId": "putBotProvider",
                "description": "Sets which provider does a service's work for the instance's keywords: `smtp` "
                "(service `mail`: `settings` `host`, `port`, `sender`, `starttls`, `username`; `secret` the "
                "password), `webhook` (any service: `settings.url`; `secret` signs each request, docs/keywords.md) "
                "or `tesseract` (service `ocr`). The secret is stored encrypted and never shown again. " + ADMINS,
                "security": [{"operatorToken": []}, {"accessToken": []}],
                "parameters": base + service + rid,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BotProviderPut"}}},
                },
                "responses": {
                    "200": {"description": "The provider, replaced.", "headers": REQUEST_ID, "content": provider_ref},
                    "201": {"description": "The provider, new.", "headers": REQUEST_ID, "content": provider_ref},
                    "400": _error(
                        "The request is invalid.",
                        [
                            *common_400,
                            ("body_required", "the request has no body"),
                            *BODY,
                            ("validation_failed", "the body does not match the request schema"),
                            ("provider_kind_invalid", "that kind of provider cannot serve the service"),
                            ("provider_settings_invalid", "a setting is missing or wrong; `details.setting` names it"),
                        ],
                    ),
                    **COMMON,
                    "404": _error(
                        "Not found.",
                        [
                            ("instance_not_found", "no such instance, or not the caller's"),
                            ("provider_service_not_found", "there is no such service"),
                        ],
                    ),
                    "413": {"$ref": "#/components/responses/PayloadTooLarge"},
                },
            },
            "delete": {
                "tags": ["keywords"],
                "summary": "Remove the provider of a service",
                "operationId": "deleteBotProvider",
                "description": "The service's keywords answer `provider_not_configured` again. " + ADMINS,
                "security": [{"operatorToken": []}, {"accessToken": []}],
                "parameters": base + service + rid,
                "responses": {
                    "204": {"description": "Removed.", "headers": REQUEST_ID},
                    "400": _error("The request is invalid.", common_400),
                    **COMMON,
                    "404": _error(
                        "Not found.",
                        [
                            ("instance_not_found", "no such instance, or not the caller's"),
                            ("provider_not_found", "the instance has no provider for that service"),
                        ],
                    ),
                },
            },
        },
    }


def components() -> dict[str, dict[str, Any]]:
    provider = {
        "type": "object",
        "additionalProperties": False,
        "required": ["service", "kind", "settings", "has_secret", "updated_at"],
        "properties": {
            "service": {"type": "string", "enum": sorted(SERVICES)},
            "kind": {"type": "string", "enum": sorted(KINDS)},
            "settings": {"type": "object"},
            "has_secret": {"type": "boolean"},
            "updated_at": {"type": "string", "format": "date-time"},
        },
    }
    return {
        "schemas": {
            "KeywordArguments": {
                "type": "object",
                "description": "The keyword's named arguments (`x-keywords` of the operation lists them).",
            },
            "KeywordAnswer": {
                "type": "object",
                "additionalProperties": False,
                "required": ["group", "keyword", "result"],
                "properties": {
                    "group": {"type": "string", "enum": sorted(keywords.GROUPS)},
                    "keyword": {"type": "string"},
                    "result": {"description": "What the keyword gives (`x-keywords` has its schema)."},
                },
            },
            "BotProvider": provider,
            "BotProviders": {
                "type": "object",
                "additionalProperties": False,
                "required": ["providers", "services"],
                "properties": {
                    "providers": {"type": "array", "items": {"$ref": "#/components/schemas/BotProvider"}},
                    "services": {
                        "type": "object",
                        "description": "Every service, and the keywords that use it.",
                        "additionalProperties": {"type": "string"},
                    },
                },
            },
            "BotProviderPut": {
                "type": "object",
                "additionalProperties": False,
                "required": ["kind"],
                "properties": {
                    "kind": {"type": "string", "enum": ["smtp", "webhook", "tesseract"]},
                    "settings": {"type": "object", "default": {}},
                    "secret": {"type": ["string", "null"], "minLength": 1, "maxLength": 4096, "default": None},
                },
            },
        },
        "parameters": {
            "keyword_group": {
                "name": "group",
                "in": "path",
                "required": True,
                "description": "The keyword's group: `system`, `dialog`, `image` or `web`.",
                "schema": {"type": "string", "enum": sorted(keywords.GROUPS)},
            },
            "keyword_name": {
                "name": "name",
                "in": "path",
                "required": True,
                "description": "The keyword's name, as the old platform's API named it (case-insensitive).",
                "schema": {"type": "string", "minLength": 1, "maxLength": 100},
            },
            "provider_service": {
                "name": "service",
                "in": "path",
                "required": True,
                "description": "The outside service: " + ", ".join(f"`{s}`" for s in sorted(SERVICES)) + ".",
                "schema": {"type": "string", "minLength": 1, "maxLength": 40},
            },
        },
    }


def paths() -> dict[str, dict[str, Any]]:
    made: dict[str, dict[str, Any]] = {KEYWORD_PATH: {"post": keyword_operation("callKeyword", None)}}
    for path, group in OLD_PATHS.items():
        made[path] = {"post": keyword_operation(f"callKeywordOld{group.capitalize()}", group)}
    made.update(provider_operations())
    return made


TAG = {
    "name": "keywords",
    "description": "The GB BASIC keyword library over HTTP, and the providers it uses (docs/keywords.md).",
}


def updated(doc: dict[str, Any]) -> dict[str, Any]:
    """The document with the keyword API's operations, parameters, schemas and tag made afresh."""
    doc = json.loads(json.dumps(doc))
    doc["paths"].update(paths())
    for kind, entries in components().items():
        doc["components"][kind].update(entries)
    doc["tags"] = [t for t in doc["tags"] if t["name"] != "keywords"] + [TAG]
    unauthorized = doc["components"]["responses"]["Unauthorized"]
    if "run_token_invalid" not in unauthorized["x-error-codes"]:
        unauthorized["x-error-codes"].append("run_token_invalid")
        unauthorized["description"] += (
            "\n- `run_token_invalid`: a dialog run's token (`gbrun.`...) does not verify, has expired (an hour), "
            "or its instance is gone"
        )
    return doc


def main() -> int:
    doc = json.loads(DOC_PATH.read_text(encoding="utf-8"))
    DOC_PATH.write_text(json.dumps(updated(doc), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
