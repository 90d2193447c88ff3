"""Node settings: defaults with nothing set, GBMEDIA_* variables, and refusal of bad values."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from gbmedia.cli import main
from gbmedia.config import (
    ConfigError,
    Settings,
    describe_settings,
    detect_public_host,
    env_name,
    load_settings,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No GBMEDIA_* variable from the developer's shell or CI leaks into a test."""
    for name in list(os.environ):
        if name.startswith("GBMEDIA_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return tmp_path


# --- defaults -----------------------------------------------------------------------


def test_defaults_with_empty_environment(clean_env: Path):
    s = Settings()
    assert s.port == 7880
    assert s.host == "0.0.0.0"
    assert s.udp_ports == "50000-60000"
    assert s.udp_port_range == (50000, 60000)
    assert s.region == "local"
    assert s.data_dir == (clean_env / "xdg" / "gbmedia").resolve()
    assert s.data_dir.is_absolute()
    assert s.node_id == socket.gethostname()
    assert s.database_url is None
    assert s.redis_url is None
    assert s.kafka_bootstrap_servers is None
    assert s.public_host is None
    assert s.operator_token is None
    assert s.secret_key is None
    assert s.log_level == "info"
    assert s.log_format == "json"
    assert s.shard_count == 16
    assert s.database_pool_size == 10
    assert s.max_body_bytes == 1024 * 1024
    assert s.api_rate_limit == 50.0
    assert s.api_rate_burst == 100
    assert s.token_ttl_seconds == 6 * 3600
    assert s.shutdown_timeout == 10.0


def test_data_dir_defaults_to_home_local_share_without_xdg(monkeypatch: pytest.MonkeyPatch, clean_env: Path):
    monkeypatch.delenv("XDG_DATA_HOME")
    assert Settings().data_dir == (clean_env / "home" / ".local" / "share" / "gbmedia").resolve()


def test_empty_xdg_data_home_falls_back_to_home(monkeypatch: pytest.MonkeyPatch, clean_env: Path):
    monkeypatch.setenv("XDG_DATA_HOME", "")
    assert Settings().data_dir == (clean_env / "home" / ".local" / "share" / "gbmedia").resolve()


def test_data_dir_is_expanded_and_made_absolute(monkeypatch: pytest.MonkeyPatch, clean_env: Path):
    monkeypatch.setenv("GBMEDIA_DATA_DIR", "~/state/../gb")
    assert Settings().data_dir == (clean_env / "home" / "gb").resolve()
    monkeypatch.chdir(clean_env)
    monkeypatch.setenv("GBMEDIA_DATA_DIR", "relative/dir")
    assert Settings().data_dir == (clean_env / "relative" / "dir").resolve()


def test_settings_are_frozen():
    s = Settings()
    with pytest.raises(ValueError):
        s.port = 1  # type: ignore[misc]


# --- environment --------------------------------------------------------------------


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    key = Fernet.generate_key().decode()
    env = {
        "GBMEDIA_DATA_DIR": str(tmp_path / "state"),
        "GBMEDIA_HOST": "127.0.0.1",
        "GBMEDIA_PORT": "8443",
        "GBMEDIA_DATABASE_URL": "postgresql://u:p@db:5432/gb",
        "GBMEDIA_DATABASE_POOL_SIZE": "25",
        "GBMEDIA_REDIS_URL": "rediss://:pw@redis:6380/1",
        "GBMEDIA_KAFKA_BOOTSTRAP_SERVERS": "k0:9092, k1:9093",
        "GBMEDIA_PUBLIC_HOST": "media.example.com",
        "GBMEDIA_UDP_PORTS": "40000-40100",
        "GBMEDIA_OPERATOR_TOKEN": "x" * 16,
        "GBMEDIA_SECRET_KEY": key,
        "GBMEDIA_LOG_LEVEL": "debug",
        "GBMEDIA_LOG_FORMAT": "text",
        "GBMEDIA_REGION": "eu-west-1",
        "GBMEDIA_NODE_ID": "gbmedia-3",
        "GBMEDIA_SHARD_COUNT": "64",
        "GBMEDIA_MAX_BODY_BYTES": "2048",
        "GBMEDIA_API_RATE_LIMIT": "2.5",
        "GBMEDIA_API_RATE_BURST": "7",
        "GBMEDIA_TOKEN_TTL_SECONDS": "120",
        "GBMEDIA_SHUTDOWN_TIMEOUT": "0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert s.data_dir == (tmp_path / "state").resolve()
    assert (s.host, s.port) == ("127.0.0.1", 8443)
    assert s.database_url == "postgresql://u:p@db:5432/gb"
    assert s.database_pool_size == 25
    assert s.redis_url == "rediss://:pw@redis:6380/1"
    assert s.kafka_bootstrap_servers == "k0:9092, k1:9093"
    assert s.public_host == "media.example.com"
    assert s.udp_port_range == (40000, 40100)
    assert s.operator_token == "x" * 16
    assert s.secret_key == key
    assert (s.log_level, s.log_format) == ("debug", "text")
    assert (s.region, s.node_id) == ("eu-west-1", "gbmedia-3")
    assert s.shard_count == 64
    assert s.max_body_bytes == 2048
    assert (s.api_rate_limit, s.api_rate_burst) == (2.5, 7)
    assert s.token_ttl_seconds == 120
    assert s.shutdown_timeout == 0.0


@pytest.mark.parametrize("url", ["postgres://h/db", "postgresql://h:5432/db?sslmode=require"])
def test_both_postgres_schemes_accepted(monkeypatch: pytest.MonkeyPatch, url: str):
    monkeypatch.setenv("GBMEDIA_DATABASE_URL", url)
    assert load_settings().database_url == url


@pytest.mark.parametrize("url", ["redis://localhost:6379/0", "rediss://h", "unix:///run/redis.sock"])
def test_redis_schemes_accepted(monkeypatch: pytest.MonkeyPatch, url: str):
    monkeypatch.setenv("GBMEDIA_REDIS_URL", url)
    assert load_settings().redis_url == url


@pytest.mark.parametrize(
    "field",
    ["database_url", "redis_url", "kafka_bootstrap_servers", "public_host", "operator_token", "secret_key"],
)
def test_empty_string_means_unset_for_optional_values(monkeypatch: pytest.MonkeyPatch, field: str):
    monkeypatch.setenv(env_name(field), "")
    assert getattr(load_settings(), field) is None


@pytest.mark.parametrize("raw", ["DEBUG", "Warning", "eRrOr", "info"])
def test_log_level_is_case_insensitive(monkeypatch: pytest.MonkeyPatch, raw: str):
    monkeypatch.setenv("GBMEDIA_LOG_LEVEL", raw)
    assert load_settings().log_level == raw.lower()


def test_log_format_is_case_insensitive(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GBMEDIA_LOG_FORMAT", "TEXT")
    assert load_settings().log_format == "text"


def test_udp_ports_are_normalised(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GBMEDIA_UDP_PORTS", " 1024 - 65535 ")
    s = load_settings()
    assert s.udp_ports == "1024-65535"
    assert s.udp_port_range == (1024, 65535)


def test_single_port_udp_range_is_valid(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GBMEDIA_UDP_PORTS", "50000-50000")
    assert load_settings().udp_port_range == (50000, 50000)


# --- invalid values -----------------------------------------------------------------

INVALID = [
    ("GBMEDIA_PORT", "abc"),
    ("GBMEDIA_PORT", "70000"),
    ("GBMEDIA_PORT", "-1"),
    ("GBMEDIA_UDP_PORTS", "50000"),
    ("GBMEDIA_UDP_PORTS", "60000-50000"),
    ("GBMEDIA_UDP_PORTS", "80-90"),
    ("GBMEDIA_UDP_PORTS", "50000-70000"),
    ("GBMEDIA_UDP_PORTS", "a-b"),
    ("GBMEDIA_DATABASE_URL", "mysql://x"),
    ("GBMEDIA_DATABASE_URL", "localhost:5432"),
    ("GBMEDIA_DATABASE_POOL_SIZE", "0"),
    ("GBMEDIA_DATABASE_POOL_SIZE", "501"),
    ("GBMEDIA_REDIS_URL", "http://x"),
    ("GBMEDIA_KAFKA_BOOTSTRAP_SERVERS", "nohost"),
    ("GBMEDIA_KAFKA_BOOTSTRAP_SERVERS", "a:b"),
    ("GBMEDIA_KAFKA_BOOTSTRAP_SERVERS", ":9092"),
    ("GBMEDIA_KAFKA_BOOTSTRAP_SERVERS", "a:9092,b:0"),
    ("GBMEDIA_KAFKA_BOOTSTRAP_SERVERS", "a:9092,b:65536"),
    ("GBMEDIA_SECRET_KEY", "short"),
    ("GBMEDIA_OPERATOR_TOKEN", "short"),
    ("GBMEDIA_OPERATOR_TOKEN", "x" * 15),
    ("GBMEDIA_LOG_LEVEL", "loud"),
    ("GBMEDIA_LOG_FORMAT", "xml"),
    ("GBMEDIA_REGION", "Not_Valid"),
    ("GBMEDIA_REGION", "x" * 65),
    ("GBMEDIA_NODE_ID", "n" * 129),
    ("GBMEDIA_SHARD_COUNT", "0"),
    ("GBMEDIA_SHARD_COUNT", "4097"),
    ("GBMEDIA_MAX_BODY_BYTES", "10"),
    ("GBMEDIA_API_RATE_LIMIT", "0"),
    ("GBMEDIA_API_RATE_LIMIT", "-1"),
    ("GBMEDIA_API_RATE_BURST", "0"),
    ("GBMEDIA_TOKEN_TTL_SECONDS", "59"),
    ("GBMEDIA_SHUTDOWN_TIMEOUT", "-0.5"),
]


@pytest.mark.parametrize(("variable", "value"), INVALID, ids=[f"{v}={x[:20]}" for v, x in INVALID])
def test_invalid_value_raises_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("invalid configuration: ")
    assert f"{variable}:" in message
    if variable in ("GBMEDIA_SECRET_KEY", "GBMEDIA_OPERATOR_TOKEN", "GBMEDIA_DATABASE_URL", "GBMEDIA_REDIS_URL"):
        assert "(got (hidden))" in message  # may hold credentials
    else:
        assert repr(value) in message  # the offending value is shown
    # Only the bad variable is blamed.
    assert re.findall(r"GBMEDIA_[A-Z_]+(?=:)", message) == [variable]


def test_every_invalid_variable_is_reported_at_once(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GBMEDIA_PORT", "abc")
    monkeypatch.setenv("GBMEDIA_REGION", "Bad Region")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "GBMEDIA_PORT:" in str(info.value)
    assert "GBMEDIA_REGION:" in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://meet.example.com/", "https://meet.example.com"),
        ("http://10.0.0.5:7880", "http://10.0.0.5:7880"),
        ("", None),
    ],
)
def test_public_url_is_a_base_url(monkeypatch: pytest.MonkeyPatch, value: str, expected: str | None):
    monkeypatch.setenv("GBMEDIA_PUBLIC_URL", value)
    assert load_settings().public_url == expected


@pytest.mark.parametrize("value", ["meet.example.com", "ftp://x", "https://x/?a=1", "https://"])
def test_a_public_url_that_is_not_a_base_url_is_refused(monkeypatch: pytest.MonkeyPatch, value: str):
    monkeypatch.setenv("GBMEDIA_PUBLIC_URL", value)
    with pytest.raises(ConfigError, match="GBMEDIA_PUBLIC_URL:"):
        load_settings()


def test_base_url_defaults_to_the_media_host_and_port():
    settings = load_settings(public_host="192.0.2.9", port=8443)
    assert settings.base_url() == "http://192.0.2.9:8443"
    assert load_settings(public_url="https://meet.example.com").base_url() == "https://meet.example.com"


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    "variable",
    [
        "GBMEDIA_DATA_DIR",
        "GBMEDIA_HOST",
        "GBMEDIA_PORT",
        "GBMEDIA_REGION",
        "GBMEDIA_NODE_ID",
        "GBMEDIA_UDP_PORTS",
        "GBMEDIA_LOG_LEVEL",
        "GBMEDIA_SHARD_COUNT",
        "GBMEDIA_RESUME_GRACE_SECONDS",
    ],
)
def test_empty_value_of_a_non_optional_setting_is_invalid(monkeypatch: pytest.MonkeyPatch, variable: str):
    """deploy/gbmedia.env.example: "For every other setting an empty value is invalid"."""
    monkeypatch.setenv(variable, "")
    with pytest.raises(ConfigError, match=f"{variable}:"):
        load_settings()


# --- overrides ----------------------------------------------------------------------


def test_overrides_win_over_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GBMEDIA_PORT", "9999")
    monkeypatch.setenv("GBMEDIA_HOST", "10.0.0.1")
    s = load_settings(port=1234, host="127.0.0.2")
    assert (s.port, s.host) == (1234, "127.0.0.2")


def test_none_overrides_are_ignored(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GBMEDIA_PORT", "9999")
    s = load_settings(port=None, host=None)
    assert (s.port, s.host) == (9999, "0.0.0.0")


def test_invalid_override_names_the_variable():
    with pytest.raises(ConfigError, match="GBMEDIA_PORT:"):
        load_settings(port=70000)


# --- derived values -----------------------------------------------------------------


def test_media_host_is_public_host_when_set():
    assert Settings(public_host="media.example.com").media_host == "media.example.com"


def test_media_host_detects_an_ipv4_address_when_unset():
    host = Settings().media_host
    assert isinstance(ipaddress.ip_address(host), ipaddress.IPv4Address)


def test_detect_public_host_returns_dotted_quad():
    host = detect_public_host()
    assert re.fullmatch(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", host)
    ipaddress.IPv4Address(host)


# --- documentation ------------------------------------------------------------------


def test_describe_settings_lists_every_field():
    rows = describe_settings()
    assert [name for name, _, _ in rows] == [env_name(f) for f in Settings.model_fields]
    assert all(name.startswith("GBMEDIA_") for name, _, _ in rows)
    defaults = {name: default for name, default, _ in rows}
    assert defaults["GBMEDIA_PORT"] == "7880"
    assert defaults["GBMEDIA_UDP_PORTS"] == "50000-60000"
    assert defaults["GBMEDIA_REGION"] == "local"
    assert defaults["GBMEDIA_DATABASE_URL"] == ""
    assert defaults["GBMEDIA_DATA_DIR"] == "(computed)"
    assert defaults["GBMEDIA_NODE_ID"] == "(computed)"
    assert {"GBMEDIA_SECRET_KEY", "GBMEDIA_OPERATOR_TOKEN", "GBMEDIA_REDIS_URL"} <= set(defaults)


def test_env_example_documents_every_setting():
    text = (ROOT / "deploy" / "gbmedia.env.example").read_text(encoding="utf-8")
    missing = [name for name, _, _ in describe_settings() if not re.search(rf"^#?{name}=", text, re.MULTILINE)]
    assert missing == []


def test_readme_documents_every_setting():
    readme = ROOT / "README.md"
    assert readme.exists(), "README.md is missing"
    text = readme.read_text(encoding="utf-8")
    missing = [name for name, _, _ in describe_settings() if not re.search(rf"\b{name}\b", text)]
    assert missing == []


# --- CLI ------------------------------------------------------------------------------


def test_cli_serve_with_invalid_setting_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("GBMEDIA_PORT", "abc")
    assert main(["serve"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("gbmedia: invalid configuration")
    assert "GBMEDIA_PORT" in err
    assert "'abc'" in err


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("GBMEDIA_OPERATOR_TOKEN", "tooshort-secret"),
        ("GBMEDIA_SECRET_KEY", "not-a-fernet-key-secret"),
        ("GBMEDIA_DATABASE_URL", "mysql://user:hunter2@db/x"),
    ],
)
def test_rejected_secrets_are_not_echoed(monkeypatch: pytest.MonkeyPatch, var: str, value: str):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    assert var in str(excinfo.value)
    assert value not in str(excinfo.value)


# --- TURN ---------------------------------------------------------------------------


def test_turn_urls_and_secret_go_together_and_are_checked():
    urls = "turn:turn.example.com:3478?transport=udp, turns:turn.example.com:5349?transport=tcp"
    s = load_settings(turn_urls=urls, turn_secret="s" * 16)
    assert s.turn_urls == urls.replace(" ", "") and s.turn_embedded is True
    with pytest.raises(ConfigError, match="GBMEDIA_TURN_URLS and GBMEDIA_TURN_SECRET go together"):
        load_settings(turn_urls=urls)
    with pytest.raises(ConfigError, match=r"GBMEDIA_TURN_URLS:.*not a TURN or STUN URL"):
        load_settings(turn_urls="https://turn.example.com", turn_secret="s" * 16)
    with pytest.raises(ConfigError, match="GBMEDIA_TURN_RELAY_PORTS:"):
        load_settings(turn_relay_ports="40000")
    with pytest.raises(ConfigError, match="GBMEDIA_TURN_TLS_CERT and GBMEDIA_TURN_TLS_KEY go together"):
        load_settings(turn_tls_cert="/etc/turn.crt")


def test_a_rejected_turn_secret_is_not_echoed():
    with pytest.raises(ConfigError) as failure:
        load_settings(turn_urls="turn:t.example.com", turn_secret="short-secret")
    assert "short-secret" not in str(failure.value) and "GBMEDIA_TURN_SECRET" in str(failure.value)


def test_one_media_port_by_default_and_the_range_on_request(monkeypatch: pytest.MonkeyPatch, clean_env: Path):
    assert load_settings().udp_port == 7882
    for off in ("off", "", " OFF "):
        monkeypatch.setenv("GBMEDIA_UDP_PORT", off)
        assert load_settings().udp_port is None  # each connection its own port in GBMEDIA_UDP_PORTS
    monkeypatch.setenv("GBMEDIA_UDP_PORT", "0")
    assert load_settings().udp_port == 0
    for bad in ("70000", "-1", "seven"):
        monkeypatch.setenv("GBMEDIA_UDP_PORT", bad)
        with pytest.raises(ConfigError, match="GBMEDIA_UDP_PORT"):
            load_settings()
