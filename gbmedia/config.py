"""Settings of one gbmedia node, read from ``GBMEDIA_*`` environment variables.

Every setting has a default so that ``gbmedia serve`` starts with nothing set; an
invalid value stops start-up with a :class:`ConfigError` naming the variable, because
a node that silently falls back to a default in production is worse than one that
refuses to start.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "GBMEDIA_"


class ConfigError(ValueError):
    """A setting has a value the node cannot run with."""


def _default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "gbmedia"


def _default_node_id() -> str:
    return socket.gethostname() or "node"


def detect_public_host() -> str:
    """The machine's own outbound interface address, so ICE works without config.

    Connecting a UDP socket sends nothing; it only asks the kernel which local
    address routes outwards. Falls back to loopback on a machine with no route.
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never answered, only routed
        return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def _port_range(value: str) -> str:
    low, sep, high = value.partition("-")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise ValueError("must look like 50000-60000")
    lo, hi = int(low), int(high)
    if not 1024 <= lo <= hi <= 65535:
        raise ValueError("must be a range within 1024-65535 with min <= max")
    return f"{lo}-{hi}"


class Settings(BaseSettings):
    """One node's configuration. Field ``x`` is read from ``GBMEDIA_X``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    data_dir: Path = Field(default_factory=_default_data_dir)
    host: str = Field(default="0.0.0.0", min_length=1)
    port: int = Field(default=7880, ge=0, le=65535)
    database_url: str | None = None
    database_pool_size: int = Field(default=10, ge=1, le=500)
    # Outages (docs/operations.md "Outages"): no call to PostgreSQL or Redis waits longer than these.
    database_command_timeout_seconds: float = Field(default=10.0, gt=0, le=3600)
    redis_url: str | None = None
    redis_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    kafka_bootstrap_servers: str | None = None
    public_host: str | None = None
    public_url: str | None = None
    udp_ports: str = "50000-60000"
    # Single-port mode (gbmedia/sfu/udp_mux.py): every peer connection of the process on this one UDP
    # port (0: one the kernel picks); "off" (or empty): each connection its own port in GBMEDIA_UDP_PORTS.
    udp_port: int | None = Field(default=7882, ge=0, le=65535)
    # The RTP fan-out (gbmedia/sfu/fanout.py): auto = the C extension when it is built and single-port
    # mode is on; on = refuse to start without it; off = the Python path.
    native_forwarding: Literal["auto", "on", "off"] = "auto"
    operator_token: str | None = Field(default=None, min_length=16)
    # Print a one-time dashboard login link at start; off where stdout goes to shared logs (Kubernetes).
    dashboard_login_link: bool = True
    metrics_token: str | None = Field(default=None, min_length=16)  # unset: /metrics is open (scrape inside)
    secret_key: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    region: str = Field(default="local", min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$")
    node_id: str = Field(default_factory=_default_node_id, min_length=1, max_length=128)
    shard_count: int = Field(default=16, ge=1, le=4096)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    api_rate_limit: float = Field(default=50.0, gt=0)
    api_rate_burst: int = Field(default=100, ge=1)
    # Abuse limits per source address (gbmedia/http/abuse.py): failed authentications, and joins and
    # new WHIP/WHEP sessions; the address is the peer's, or X-Forwarded-For from a trusted proxy.
    trusted_proxies: str = ""  # comma-separated addresses or CIDR networks, e.g. 10.0.0.0/8
    auth_failure_rate: float = Field(default=0.2, gt=0)
    auth_failure_burst: int = Field(default=20, ge=1)
    join_rate_limit: float = Field(default=2.0, gt=0)
    join_rate_burst: int = Field(default=30, ge=1)
    # Open sessions' credentials re-checked this often (a revocation the bus did not carry; tenancy/revocation.py).
    revocation_check_seconds: float = Field(default=30.0, ge=0.1, le=3600)
    token_ttl_seconds: int = Field(default=6 * 3600, ge=60)
    shutdown_timeout: float = Field(default=10.0, ge=0)
    resume_grace_seconds: float = Field(default=20.0, ge=0, le=3600)
    max_tracks_per_participant: int = Field(default=8, ge=1, le=64)
    max_tracks_per_room: int = Field(default=400, ge=1, le=100_000)
    media_connect_timeout_seconds: float = Field(default=20.0, gt=0, le=600)
    max_sessions_per_identity: int = Field(default=5, ge=1, le=1000)
    socket_max_buffered_bytes: int = Field(default=4 * 1024 * 1024, ge=16 * 1024, le=1024 * 1024 * 1024)
    chat_max_message_bytes: int = Field(default=16 * 1024, ge=1, le=1024 * 1024)
    chat_rate_limit: float = Field(default=10.0, gt=0)
    chat_rate_burst: int = Field(default=20, ge=1)
    chat_writers: int = Field(default=2, ge=1, le=32)
    # Bots (gbmedia/bots): the sandbox's limits on one run of a GB BASIC dialog (docs/bots.md, "Limits").
    bot_max_statements: int = Field(default=1_000_000, ge=100, le=1_000_000_000)
    # The engine dialogs run in: "wasm" (compiled to WebAssembly, run in wasmtime) or "interp".
    bot_engine: Literal["wasm", "interp"] = "wasm"
    bot_max_seconds: float = Field(default=30.0, gt=0, le=3600)  # while running: waiting at a HEAR is free
    bot_max_value_bytes: int = Field(default=1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    bot_max_list_items: int = Field(default=10_000, ge=10, le=10_000_000)
    bot_max_http_calls: int = Field(default=20, ge=0, le=10_000)
    bot_max_http_bytes: int = Field(default=5 * 1024 * 1024, ge=0, le=1024 * 1024 * 1024)
    # Web automation (gbmedia/bots/browser.py): one Chromium per node, contexts bounded per instance.
    bot_browser_contexts: int = Field(default=4, ge=1, le=256)  # browser sessions one instance holds at once
    bot_browser_pages: int = Field(default=4, ge=1, le=64)  # pages one session holds
    bot_browser_seconds: float = Field(default=300.0, gt=0, le=3600)  # a session closes after this, whatever
    bot_browser_action_seconds: float = Field(default=10.0, gt=0, le=300)  # one navigation, click, download
    bot_browser_memory_mb: int = Field(default=256, ge=32, le=16384)  # JavaScript heap of each renderer
    bot_browser_executable: str = "/usr/bin/chromium"
    # The dialog debugger (gbmedia/bots/debug, docs/bots.md "Debugging"): a debug run nobody
    # touches for this long ends; an instance holds at most this many at once.
    debug_run_idle_seconds: float = Field(default=600.0, gt=0, le=86400)
    debug_runs_per_instance: int = Field(default=5, ge=1, le=1000)
    # CONVERT's LibreOffice (a name on PATH or a path); missing, CONVERT fails with a clear error.
    bot_office_binary: str = Field(default="soffice", min_length=1, max_length=4096)
    # Where bots' files live: the node's data directory, or the recordings' S3 bucket (GBMEDIA_S3_*) under bots/.
    bot_files_storage: Literal["local", "s3"] = "local"
    # Webhooks (gbmedia/tenancy/webhook_dispatch.py, docs/api.md "Webhooks"): retries, the dead
    # letter, each request's time limit, and private networks endpoints may name on purpose.
    webhook_max_attempts: int = Field(default=10, ge=1, le=100)
    webhook_backoff_seconds: float = Field(default=10.0, gt=0, le=86400)
    webhook_backoff_max_seconds: float = Field(default=3600.0, gt=0, le=7 * 86400)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    webhook_allow_networks: str = ""  # comma-separated CIDRs, e.g. 10.20.0.0/16; empty: public addresses only
    # Usage metering and billing (gbmedia/tenancy/metering.py, billing.py; docs/api.md "Usage", "Billing").
    usage_flush_seconds: float = Field(default=5.0, ge=0.1, le=300)  # what a killed node may lose at most
    billing_close_interval_seconds: float = Field(default=3600.0, ge=1, le=86400)
    billing_webhook_secret: str = ""  # signs the payment provider's events; empty: the hook answers 503
    # Recording (gbmedia/recording): where files are spooled and stored.
    recording_storage: Literal["local", "s3"] = "local"
    recording_dir: Path | None = None  # default: <data_dir>/recordings
    min_free_disk_mb: int = Field(default=1024, ge=0, le=10_000_000)  # below it recordings stop and are refused
    s3_bucket: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    s3_prefix: str = Field(default="", max_length=512, pattern=r"^[A-Za-z0-9!_.*'()/-]*$")
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None

    @field_validator(
        "recording_dir",
        "s3_bucket",
        "s3_endpoint_url",
        "s3_region",
        "s3_access_key_id",
        "s3_secret_access_key",
        mode="before",
    )
    @classmethod
    def _recording_empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("s3_endpoint_url")
    @classmethod
    def _s3_endpoint(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError("must be an http:// or https:// URL, e.g. https://s3.eu-west-1.amazonaws.com")
        return value

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> Settings:
        if self.recording_storage == "s3" and not self.s3_bucket:
            raise ValueError("GBMEDIA_RECORDING_STORAGE=s3 needs GBMEDIA_S3_BUCKET")
        if self.bot_files_storage == "s3" and not self.s3_bucket:
            raise ValueError("GBMEDIA_BOT_FILES_STORAGE=s3 needs GBMEDIA_S3_BUCKET")
        if self.recording_dir is not None:
            object.__setattr__(self, "recording_dir", self.recording_dir.expanduser().resolve())
        return self

    # Cluster (gbmedia/rooms/registry.py, placement.py; gbmedia/signaling/relay.py): on with Redis.
    cluster_secret: str | None = Field(default=None, min_length=16)
    cluster_host: str | None = None  # bind address of the internal listener (default: GBMEDIA_HOST)
    cluster_port: int = Field(default=0, ge=0, le=65535)  # internal listener, 0 picks a free one
    node_capacity: float = Field(default=2000.0, gt=0)  # placement cost units (down tracks) one node carries
    node_max_cpu: float = Field(default=0.85, gt=0, le=1.0)  # above this CPU share a node takes no new rooms
    heartbeat_seconds: float = Field(default=1.0, ge=0.1, le=30.0)
    node_ttl_seconds: float = Field(default=3.0, ge=0.3, le=120.0)
    drain_timeout: float = Field(default=60.0, ge=0, le=86_400)
    workers: int | None = Field(default=None, ge=1, le=256)
    cascade_viewers: int = Field(default=200, ge=1)  # viewers one node serves in a live room before edges
    cascade_fanout: int = Field(default=4, ge=1, le=64)  # edges one node feeds before edges feed edges
    cascade_linger_seconds: float = Field(default=10.0, ge=0, le=3600)  # an unwatched edge keeps its copy this long

    # TURN (gbmedia/turn): credentials for clients behind firewalls (docs/operations.md "TURN").
    turn_urls: str = ""  # comma-separated turn:/turns:/stun: URLs of TURN servers sharing GBMEDIA_TURN_SECRET
    turn_secret: str | None = Field(default=None, min_length=16)  # coturn's static-auth-secret
    turn_credential_ttl_seconds: int = Field(default=24 * 3600, ge=60, le=7 * 24 * 3600)
    turn_embedded: bool = True  # no GBMEDIA_TURN_URLS: start the node's own coturn when turnserver is installed
    turn_relay_ports: str = "40000-49999"  # the embedded coturn's relay range (UDP)
    turn_tls_cert: Path | None = None  # the embedded coturn's turns: certificate (PEM); unset: self-signed
    turn_tls_key: Path | None = None

    @field_validator("turn_urls")
    @classmethod
    def _turn_urls(cls, value: str) -> str:
        from gbmedia.turn.credentials import parse_ice_urls

        return ",".join(parse_ice_urls(value))

    @field_validator("turn_relay_ports")
    @classmethod
    def _turn_relay_ports(cls, value: str) -> str:
        return _port_range(value)

    @field_validator("turn_secret", "turn_tls_cert", "turn_tls_key", mode="before")
    @classmethod
    def _turn_empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _turn_complete(self) -> Settings:
        if bool(self.turn_urls) != bool(self.turn_secret):
            raise ValueError("GBMEDIA_TURN_URLS and GBMEDIA_TURN_SECRET go together: set both or neither")
        if (self.turn_tls_cert is None) != (self.turn_tls_key is None):
            raise ValueError("GBMEDIA_TURN_TLS_CERT and GBMEDIA_TURN_TLS_KEY go together: set both or neither")
        return self

    @property
    def turn_relay_range(self) -> tuple[int, int]:
        low, _, high = self.turn_relay_ports.partition("-")
        return int(low), int(high)

    speaker_interval_ms: int = Field(default=500, ge=50, le=10_000)
    stats_interval_ms: int = Field(default=1000, ge=100, le=60_000)
    hls_enabled: bool = True
    hls_segment_seconds: float = Field(default=2.0, ge=0.5, le=10.0)
    hls_part_seconds: float = Field(default=0.5, ge=0.1, le=2.0)
    hls_window_segments: int = Field(default=6, ge=3, le=100)
    hls_video_bitrate: int = Field(default=1_500_000, ge=100_000, le=20_000_000)

    @field_validator("hls_part_seconds")
    @classmethod
    def _hls_part_within_segment(cls, value: float, info: ValidationInfo) -> float:
        segment = info.data.get("hls_segment_seconds")
        if segment is not None and value * 2 > segment:
            raise ValueError("must be at most half of GBMEDIA_HLS_SEGMENT_SECONDS")
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir_given(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            raise ValueError("must be a directory path (unset it to use the default)")
        return value

    @field_validator(
        "database_url",
        "redis_url",
        "kafka_bootstrap_servers",
        "public_host",
        "public_url",
        "operator_token",
        "metrics_token",
        "secret_key",
        "cluster_secret",
        "cluster_host",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("trusted_proxies", "webhook_allow_networks")
    @classmethod
    def _trusted_proxies(cls, value: str) -> str:
        items = [item.strip() for item in value.split(",") if item.strip()]
        for item in items:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or network; use e.g. 10.0.0.0/8, 192.168.1.7"
                ) from None
        return ",".join(items)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError("must be an http:// or https:// base URL without query, e.g. https://meet.example.com")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _kafka_servers(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("must be a comma-separated list of host:port")
        return value

    @field_validator("secret_key")
    @classmethod
    def _fernet_key(cls, value: str | None) -> str | None:
        if value is not None:
            from cryptography.fernet import Fernet

            try:
                Fernet(value.encode())
            except (ValueError, TypeError):
                raise ValueError(
                    "must be 32 url-safe base64-encoded bytes (generate one with `gbmedia secret-key`)"
                ) from None
        return value

    @field_validator("udp_ports")
    @classmethod
    def _port_range(cls, value: str) -> str:
        return _port_range(value)

    @field_validator("udp_port", mode="before")
    @classmethod
    def _single_port_off(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() in ("", "off") else value

    @model_validator(mode="after")
    def _node_outlives_heartbeats(self) -> Settings:
        if self.node_ttl_seconds < 2 * self.heartbeat_seconds:
            raise ValueError("GBMEDIA_NODE_TTL_SECONDS must be at least twice GBMEDIA_HEARTBEAT_SECONDS")
        return self

    @property
    def clustered(self) -> bool:
        """A node with Redis is a cluster member: it registers, places rooms and relays."""
        return self.redis_url is not None

    @model_validator(mode="after")
    def _absolute_data_dir(self) -> Settings:
        object.__setattr__(self, "data_dir", self.data_dir.expanduser().resolve())
        return self

    @property
    def udp_port_range(self) -> tuple[int, int]:
        low, _, high = self.udp_ports.partition("-")
        return int(low), int(high)

    def base_url(self, port: int | None = None) -> str:
        """Where people open this node (join links): configured, else the address it listens on.

        Never a request's ``Host`` header: whoever sends the request would choose the
        host that every link minted for it points people to. ``port``: the port the
        node really listens on, when ``port`` is 0 (picked at start).
        """
        if self.public_url:
            return self.public_url
        host = self.host if self.host not in ("0.0.0.0", "::", "") else self.media_host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port or self.port}"

    @property
    def media_host(self) -> str:
        """Address put in ICE candidates: configured, else the interface address."""
        return self.public_host or detect_public_host()


# Rejected values are echoed to help fix them, except these: they may be real secrets.
_SECRET_FIELDS = {
    "operator_token",
    "metrics_token",
    "secret_key",
    "cluster_secret",
    "database_url",
    "redis_url",
    "s3_secret_access_key",
    "turn_secret",
    "billing_webhook_secret",
}


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; ``overrides`` win (CLI flags)."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            shown = "(hidden)" if field in _SECRET_FIELDS else repr(error.get("input"))
            problems.append(f"{env_name(field)}: {error['msg']} (got {shown})")
        for error in exc.errors():
            if not error["loc"]:  # a check across settings: its message names the variables
                problems = [p for p in problems if not p.startswith(f"{ENV_PREFIX}?")] + [error["msg"]]
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


def describe_settings() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting: README and deploy docs."""
    rows = []
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = "(computed)"
        else:
            default = "" if field.default is None else str(field.default)
        rows.append((env_name(name), default, field.description or ""))
    return rows
