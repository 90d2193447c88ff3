"""HTTP from dialogs: GET/POST/PUT against a real local server, and every way to reach a private address refused.

The test server listens on loopback, which the guard refuses; so the tests that need it
allow 127.0.0.0/8 the way an operator would (``bots.http_allow``), and the refusals are
checked both without the allow-list and past it (a redirect from the allowed server).
"""

from __future__ import annotations

import base64
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gbmedia.bots.errors import Fault
from gbmedia.bots.fetch import GuardedFetcher, _PinnedResolver, allowed_networks, is_public
from gbmedia.bots.limits import Limits
from tests.bots.helpers import talk_with

LOCAL = {"bots": {"http_allow": ["127.0.0.0/8"]}}


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    hits: dict[str, int] = {"flaky": 0}

    async def data(request: web.Request) -> web.Response:
        return web.json_response({"name": "Ana", "items": [1, 2], "agent": request.headers.get("User-Agent")})

    async def text(request: web.Request) -> web.Response:
        return web.Response(text="plain words")

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "method": request.method,
                "body": await request.text(),
                "type": request.content_type,
                "key": request.headers.get("X-Key"),
                "auth": request.headers.get("Authorization"),
            }
        )

    async def big(request: web.Request) -> web.Response:
        return web.Response(text="x" * 50_000)

    async def flaky(request: web.Request) -> web.Response:
        hits["flaky"] += 1
        if hits["flaky"] == 1:
            return web.Response(status=503, headers={"Retry-After": "0"})
        return web.json_response({"tries": hits["flaky"]})

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/data", data)
    app.router.add_get("/text", text)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/big", big)
    app.router.add_get("/flaky", flaky)
    app.router.add_route("*", "/redirect", redirect)
    app.router.add_get("/missing", missing)
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    try:
        yield test_server
    finally:
        await test_server.close()


def url(server: TestServer, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


async def run_http(source: str, config: dict | None = None, **context: object):
    config = config or {}
    return await talk_with(source, config=config, http=GuardedFetcher(allowed_networks(config)), **context)


async def test_get_json_becomes_an_object_and_text_stays_text(server: TestServer):
    source = (
        f'd = GET "{url(server, "/data")}"\nTALK d.name, d.items[1], d.agent\nt = GET "{url(server, "/text")}"\nTALK t'
    )
    outcome, port = await run_http(source, LOCAL)
    assert outcome.status == "done", outcome.error
    assert port.said == ["Ana 2 gbmedia-bot", "plain words"]


async def test_post_and_put_send_json_or_text_with_headers_and_basic_auth(server: TestServer):
    source = (
        'SET HEADER "X-Key" AS "k1"\nSET HTTP USERNAME = "u"\nSET HTTP PASSWORD = "p"\n'
        f'o = NEW OBJECT\no.a = 1\nr = POST "{url(server, "/echo")}", o\nTALK r.method, r.body, r.type, r.key, r.auth\n'
        f'r = PUT "{url(server, "/echo")}", "hello"\nTALK r.method, r.body, r.type'
    )
    outcome, port = await run_http(source, LOCAL)
    assert outcome.status == "done", outcome.error
    auth = "Basic " + base64.b64encode(b"u:p").decode()
    assert port.said == [f'POST {{"a": 1}} application/json k1 {auth}', "PUT hello text/plain"]


async def test_a_503_is_retried(server: TestServer):
    _, port = await run_http(f'r = GET "{url(server, "/flaky")}"\nTALK r.tries', LOCAL)
    assert port.said == ["2"]


async def test_an_error_status_ends_the_run(server: TestServer):
    outcome, _ = await run_http(f'r = GET "{url(server, "/missing")}"', LOCAL)
    assert outcome.error.message == f"GET {url(server, '/missing')} answered 404"


@pytest.mark.parametrize(
    ("target", "address"),
    [
        ("http://127.0.0.1:9/", "127.0.0.1"),
        ("http://10.1.2.3/", "10.1.2.3"),
        ("http://192.168.0.1/", "192.168.0.1"),
        ("http://172.16.5.4/", "172.16.5.4"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://100.64.0.1/", "100.64.0.1"),
        ("http://0.0.0.0/", "0.0.0.0"),
        ("http://[::1]/", "::1"),
        ("http://[::ffff:127.0.0.1]/", "::ffff:7f00:1"),
        ("http://[fd00:ec2::254]/", "fd00:ec2::254"),
        ("http://localhost/", "127.0.0.1"),
    ],
)
async def test_private_loopback_link_local_and_metadata_addresses_are_refused(target: str, address: str):
    outcome, port = await run_http(f'r = GET "{target}"')
    assert outcome.status == "failed"
    assert "is refused: not a public address" in outcome.error.message
    assert f"({address})" in outcome.error.message or address == "127.0.0.1"
    assert port.said == ["Sorry, something went wrong on my side and I had to stop. Please try again later."]


async def test_a_name_resolving_to_loopback_is_refused_unless_allowed(server: TestServer):
    outcome, _ = await run_http(f'r = GET "http://localhost:{server.port}/text"')
    assert (
        "localhost (127.0.0.1) is refused" in outcome.error.message
        or "localhost (::1) is refused" in outcome.error.message
    )
    outcome, port = await run_http(
        f'r = GET "http://localhost:{server.port}/text"\nTALK r', {"bots": {"http_allow": ["127.0.0.0/8", "::1/128"]}}
    )
    assert port.said == ["plain words"]


async def test_a_redirect_from_an_allowed_server_to_a_private_address_is_refused(server: TestServer):
    allow_one = {"bots": {"http_allow": ["127.0.0.1/32"]}}
    for target in ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/admin", "http://[::1]/"):
        source = f'r = GET "{url(server, "/redirect")}?to={target}"'
        outcome, _ = await run_http(source, allow_one)
        assert outcome.status == "failed" and "is refused: not a public address" in outcome.error.message, target
    source = (
        f'r = GET "{url(server, "/redirect")}?to=/text"\nTALK r'  # a redirect inside the allowed server is followed
    )
    outcome, port = await run_http(source, allow_one)
    assert port.said == ["plain words"]


async def test_only_http_and_https_urls(server: TestServer):
    for target in ("file:///etc/passwd", "ftp://example.com/", "http://"):
        outcome, _ = await run_http(f'r = GET "{target}"')
        assert "is not an http(s) URL" in outcome.error.message
    outcome, _ = await run_http(f'r = GET "{url(server, "/redirect")}?to=file:///etc/passwd"', LOCAL)
    assert "is not an http(s) URL" in outcome.error.message


async def test_http_calls_and_bytes_are_limited(server: TestServer):
    source = f'a = GET "{url(server, "/text")}"\nb = GET "{url(server, "/text")}"'
    outcome, _ = await run_http(source, LOCAL, limits=Limits(max_http_calls=1))
    assert outcome.error.limit == "GBMEDIA_BOT_MAX_HTTP_CALLS" and outcome.error.line == 2
    outcome, _ = await run_http(f'a = GET "{url(server, "/big")}"', LOCAL, limits=Limits(max_http_bytes=10_000))
    assert outcome.error.limit == "GBMEDIA_BOT_MAX_HTTP_BYTES" and outcome.error.line == 1


async def test_unresolvable_names_and_a_run_without_http():
    outcome, _ = await run_http('r = GET "http://no-such-host.invalid/"')
    assert "cannot resolve no-such-host.invalid" in outcome.error.message
    outcome, _ = await talk_with('r = GET "http://example.com/"')
    assert "HTTP is not available to this run" in outcome.error.message


def test_the_allow_list_is_read_from_the_instance_config():
    assert [str(n) for n in allowed_networks({"bots": {"http_allow": ["10.0.0.0/8", "fd00::/8"]}})] == [
        "10.0.0.0/8",
        "fd00::/8",
    ]
    assert allowed_networks({}) == []
    with pytest.raises(Fault, match="not a CIDR"):
        allowed_networks({"bots": {"http_allow": ["nonsense"]}})
    with pytest.raises(Fault, match="must be a list"):
        allowed_networks({"bots": {"http_allow": "10.0.0.0/8"}})


async def test_the_connection_resolver_answers_only_checked_addresses():
    """What makes DNS rebinding harmless: the connector never resolves a name itself."""
    resolver = _PinnedResolver()
    with pytest.raises(OSError, match="was not checked"):
        await resolver.resolve("example.com", 80)
    import ipaddress

    resolver.pins["example.com"] = [ipaddress.ip_address("93.184.216.34")]
    (answer,) = await resolver.resolve("example.com", 80, socket.AF_INET)
    assert (answer["host"], answer["port"], answer["hostname"]) == ("93.184.216.34", 80, "example.com")


def test_public_addresses():
    import ipaddress

    assert is_public(ipaddress.ip_address("93.184.216.34"))
    assert not is_public(ipaddress.ip_address("::ffff:10.0.0.1"))
    assert not is_public(ipaddress.ip_address("224.0.0.1"))


async def test_credentials_do_not_follow_a_redirect_to_another_host(server: TestServer):
    """127.0.0.1 redirects to localhost (the same server under another name): the Basic credentials stay behind."""
    allow = {"bots": {"http_allow": ["127.0.0.0/8", "::1/128"]}}
    elsewhere = f"http://localhost:{server.port}/echo"
    source = f'SET HTTP USERNAME = "u"\nSET HTTP PASSWORD = "p"\nr = GET "{url(server, "/redirect")}?to={elsewhere}"\n'
    source += f'TALK ISEMPTY(r.auth)\ns = GET "{url(server, "/redirect")}?to=/echo"\nTALK ISEMPTY(s.auth)'
    _, port = await run_http(source, allow)
    assert port.said == ["true", "false"]
