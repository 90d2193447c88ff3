"""One running gbmedia node: settings, database, Redis, metrics and the domains.

Start-up order matters: the database (embedded or not) and its migrations first,
then the domain services that use it, then background tasks (the idle-room
sweeper). Shutdown runs in reverse.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from gbmedia.bots.browser import BrowserLimits, Browsers
from gbmedia.bots.limits import Limits
from gbmedia.bots.media.service import MediaBots
from gbmedia.bots.s3_files import S3Files, s3_client
from gbmedia.bots.service import Bots
from gbmedia.bots.sharing import PURPOSE as SHARE_LINKS
from gbmedia.bots.sharing import ShareLinks
from gbmedia.bus import Bus, MemoryBus, RedisBus
from gbmedia.config import ConfigError, Settings
from gbmedia.db.pool import Database
from gbmedia.http.abuse import AbuseLimits, TrustedProxies
from gbmedia.loopwatch import LoopWatch
from gbmedia.messaging.delivery import ChatHub
from gbmedia.messaging.metering import meter_messages
from gbmedia.messaging.presence import MemoryPresence, Presence, RedisPresence
from gbmedia.messaging.service import Chat
from gbmedia.metrics import Metrics, Sample
from gbmedia.outbox import OutboxRelay, OutboxTrimmer
from gbmedia.ratelimit import FallbackRateLimiter, RateLimiter, rate_limiter
from gbmedia.recording.disk import MB, DiskGuard
from gbmedia.recording.service import Recordings
from gbmedia.recording.storage import storage_from_settings
from gbmedia.rooms.audience import audience_samples
from gbmedia.rooms.cascade import Cascade
from gbmedia.rooms.cluster import ClusterMember
from gbmedia.rooms.live import LiveRooms, TrackLimits
from gbmedia.rooms.metering import RoomMeter
from gbmedia.rooms.placement import LocalPlacement, RedisPlacement
from gbmedia.rooms.policy import SessionLimits
from gbmedia.rooms.quality import QualityMonitor
from gbmedia.rooms.registry import LocalRegistry, NodeInfo, NodeRegistry, RedisRegistry
from gbmedia.rooms.speakers import RoomSpeakers
from gbmedia.rooms.store import Rooms, RoomSweeper
from gbmedia.rooms.webhooks import RoomWebhooks
from gbmedia.sfu import aiortc_adapter, fanout, remb
from gbmedia.sfu.media_address import MediaAddress, media_ports, resolve_media_address
from gbmedia.sfu.udp_mux import MuxCounters, UdpMux
from gbmedia.signaling.cascade import HttpFeeder
from gbmedia.signaling.relay import ClusterAuth, Relay
from gbmedia.streaming.metering import meter_hls
from gbmedia.streaming.playlist import HlsConfig
from gbmedia.streaming.service import HlsService
from gbmedia.tenancy.billing import InvoiceCloser
from gbmedia.tenancy.metering import UsageMeter
from gbmedia.tenancy.revocation import Revocations
from gbmedia.tenancy.secrets import SecretBox, load_or_create_file_secret
from gbmedia.tenancy.service import Tenancy, webhook_guard
from gbmedia.tenancy.webhook_dispatch import DispatchSettings, WebhookDispatcher
from gbmedia.tenancy.webhook_events import WebhookEmitter
from gbmedia.turn.coturn import CoturnPlan, EmbeddedCoturn
from gbmedia.turn.credentials import TurnCredentials

log = logging.getLogger(__name__)


def bot_file_store(settings: Settings) -> Callable[[str], S3Files] | None:
    """Where bots' files live: None (the data directory), or the S3 bucket of GBMEDIA_S3_* under ``bots/``."""
    if settings.bot_files_storage != "s3":
        return None
    client = s3_client(settings)
    assert settings.s3_bucket is not None  # the settings refuse s3 without a bucket
    bucket, prefix = settings.s3_bucket, settings.s3_prefix
    return lambda instance_id: S3Files(client, bucket, prefix, instance_id)


def operator_token_for(settings: Settings) -> str:
    """The configured operator token, or one generated once into the data directory."""
    if settings.operator_token:
        return settings.operator_token
    return load_or_create_file_secret(settings.data_dir / "operator.token", lambda: secrets.token_urlsafe(32))


def cluster_secret_for(settings: Settings) -> str:
    """The configured cluster secret, or one generated once into the data directory.

    Nodes that share a data directory (the workers of one machine) agree on the
    generated one; nodes on several machines must be given the same value.
    """
    if settings.cluster_secret:
        return settings.cluster_secret
    return load_or_create_file_secret(settings.data_dir / "cluster.secret", lambda: secrets.token_urlsafe(32))


async def start_turn(
    settings: Settings, media_address: MediaAddress
) -> tuple[TurnCredentials | None, EmbeddedCoturn | None]:
    """The TURN servers this node's clients are given credentials for, and the embedded coturn if it runs one.

    Configured servers (``GBMEDIA_TURN_URLS`` with their shared secret) win; with none, a
    node with ``turnserver`` installed starts its own (``GBMEDIA_TURN_EMBEDDED``). A coturn
    that fails to start leaves the node without TURN, said loudly in the log: clients that
    reach the node directly do not need it, and the node must not fail for their sake.
    """
    ttl = settings.turn_credential_ttl_seconds
    if settings.turn_urls and settings.turn_secret:
        return TurnCredentials(tuple(settings.turn_urls.split(",")), settings.turn_secret, ttl), None
    executable = shutil.which("turnserver") if settings.turn_embedded else None
    if executable is None:
        return None, None
    coturn = EmbeddedCoturn(
        CoturnPlan(
            directory=settings.data_dir / "turn" / settings.node_id,
            advertised=media_address.advertised,
            bind=media_address.bind,
            relay_ports=settings.turn_relay_range,
            cert=settings.turn_tls_cert,
            key=settings.turn_tls_key,
        ),
        executable,
    )
    try:
        urls = await coturn.start()
    except OSError:
        log.exception("the embedded coturn did not start: this node issues no TURN credentials")
        return None, None
    return TurnCredentials(urls, coturn.secret, ttl), coturn


def redis_client_for(settings: Settings) -> aioredis.Redis:
    """The node's Redis client (every Redis user of the node shares it: bus, presence,
    registry, placement, cascade, rate limits), bounded so an outage cannot hold anything.

    A connect or a command waits at most ``GBMEDIA_REDIS_TIMEOUT_SECONDS`` (redis-py's own
    default is 5 s, and older releases had none), and is not retried after a timeout: a
    hung Redis costs a caller one timeout, then 503 ``redis_unavailable`` (see
    errors.outage_error). A broken connection (Redis restarted under it) is retried once
    at once on a fresh one, so the first call after a restart does not fail; redis-py's
    default of three retries with backoff is not used. The client reconnects by itself
    when Redis is back.
    """
    assert settings.redis_url is not None
    timeout = settings.redis_timeout_seconds
    return aioredis.from_url(
        settings.redis_url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )


@dataclass
class Node:
    settings: Settings
    db: Database
    metrics: Metrics
    tenancy: Tenancy
    rate_limiter: RateLimiter  # the REST budget of each caller (API key and identity)
    abuse: AbuseLimits  # per source address: failed authentications, joins and new media sessions
    rooms: Rooms
    room_sweeper: RoomSweeper
    live_rooms: LiveRooms
    media_address: MediaAddress
    chat: Chat
    bus: Bus
    chat_hub: ChatHub
    presence: Presence
    outbox: OutboxRelay | OutboxTrimmer
    recordings: Recordings
    media_bots: MediaBots  # bots in this node's rooms as media participants
    quality: QualityMonitor  # media quality sampling
    speakers: RoomSpeakers  # active speaker events
    registry: NodeRegistry  # the cluster's nodes (only this one without Redis)
    placement: LocalPlacement | RedisPlacement
    member: ClusterMember  # heartbeat, fencing, adoption, drain
    relay: Relay  # forwards a room's requests to its node
    cascade: Cascade  # live rooms' audiences spread over edge nodes
    bots: Bots  # dialogs, the engine that answers in chats, the scheduler
    webhooks: WebhookDispatcher  # sends the instances' webhook deliveries (every node; one per delivery)
    meter: UsageMeter  # usage of this node's sessions and counters, written in idempotent ticks
    invoice_closer: InvoiceCloser  # issues ended periods' invoices, snapshots storage (every node; idempotent)
    redis: aioredis.Redis | None = None
    hls: HlsService | None = None
    turn: TurnCredentials | None = None  # TURN credentials for clients (none: no TURN server)
    coturn: EmbeddedCoturn | None = None  # the node's own coturn child, when it runs one
    loop_watch: LoopWatch | None = None  # event-loop lag, for /metrics
    started: float = field(default_factory=time.monotonic)

    @classmethod
    async def start(cls, settings: Settings) -> Node:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings)
        await db.open()
        redis_client: aioredis.Redis | None = None
        revocations: Revocations | None = None  # started with the bus: stopped if the start fails after
        turn: TurnCredentials | None = None
        coturn: EmbeddedCoturn | None = None
        mux: UdpMux | None = None  # single-port mode's socket: closed if the start fails after
        try:
            if settings.redis_url:
                redis_client = redis_client_for(settings)
                await redis_client.ping()
            # Shared through Redis in a cluster; each falls back to this node's memory while Redis is away.
            limiter = rate_limiter(redis_client, settings.api_rate_limit, settings.api_rate_burst, name="api")
            chat_limiter = rate_limiter(redis_client, settings.chat_rate_limit, settings.chat_rate_burst, name="chat")
            abuse = AbuseLimits(
                auth_failures=rate_limiter(
                    redis_client, settings.auth_failure_rate, settings.auth_failure_burst, name="auth_failures"
                ),
                joins=rate_limiter(redis_client, settings.join_rate_limit, settings.join_rate_burst, name="joins"),
                trusted_proxies=TrustedProxies.parse(settings.trusted_proxies),
            )
            metrics = Metrics(settings.node_id, settings.region)
            secret_box = SecretBox.for_node(settings.secret_key, settings.data_dir)
            tenancy = Tenancy.create(db.pool, settings, secret_box, operator_token_for(settings))
            rooms = Rooms(db.pool, tenancy.customers, tenancy.instances, node_id=settings.node_id)
            await aiortc_adapter.check_internals()
            media_address = await resolve_media_address(settings.media_host, settings.udp_port_range)
            if settings.udp_port is not None:
                try:
                    mux = await UdpMux.bind(media_address.bind, settings.udp_port)
                except OSError as exc:
                    raise ConfigError(
                        f"GBMEDIA_UDP_PORT: cannot bind UDP {media_address.bind}:{settings.udp_port} "
                        f"({exc.strerror}); choose another port, 0 for any, or off for GBMEDIA_UDP_PORTS"
                    ) from None
                media_address = replace(media_address, mux=mux)
            try:
                native = fanout.choose(settings.native_forwarding, single_port=mux is not None)
            except fanout.NativeUnavailable as exc:
                raise ConfigError(str(exc)) from None
            if mux is not None:
                mux.native_fanout = native
            log.info(remb.describe())
            turn, coturn = await start_turn(settings, media_address)
            live_rooms = LiveRooms(
                rooms,
                resume_grace=settings.resume_grace_seconds,
                media_address=media_address,
                track_limits=TrackLimits(settings.max_tracks_per_participant, settings.max_tracks_per_room),
                session_limits=SessionLimits(
                    settings.media_connect_timeout_seconds, settings.max_sessions_per_identity
                ),
            )
            chat = Chat.create(
                db.pool,
                tenancy.instances,
                chat_limiter,
                max_content_bytes=settings.chat_max_message_bytes,
                batch_pool=db.batch_pool,
                writers=settings.chat_writers,
            )
            # Without Redis this node is alone: the in-process bus and presence serve it.
            bus: Bus = RedisBus(redis_client) if redis_client is not None else MemoryBus()
            presence: Presence = RedisPresence(redis_client) if redis_client is not None else MemoryPresence()
            # A revoked key or suspended tenant ends its sessions on every node: at once over the bus,
            # and at the latest at the next re-check of the credentials this node's sessions hold.
            revocations = tenancy.revocations
            await revocations.start(bus, tenancy.auth.revoked, settings.revocation_check_seconds)
            chat_hub = ChatHub(bus, chat.conversations, metrics.chat_delivery.observe)
            chat.messages.on_change(chat_hub.on_change)
            await chat_hub.start()
            # Recording: follows the live rooms' tracks; interrupted recordings of this node are closed out.
            storage = storage_from_settings(settings)
            await storage.check()
            recordings = Recordings(
                db.pool,
                storage,
                rooms,
                tenancy.customers,
                tenancy.instances,
                node_id=settings.node_id,
                disk=DiskGuard(storage.spool, settings.min_free_disk_mb * MB),
            )
            recordings.attach(live_rooms)
            # Webhook events of the live state (participants, tracks, live), written as they happen.
            RoomWebhooks(WebhookEmitter(db.pool)).attach(live_rooms)
            # Usage: rooms' minutes and bytes, chat's messages, flushed every GBMEDIA_USAGE_FLUSH_SECONDS.
            meter = UsageMeter(db.pool, settings.usage_flush_seconds)
            RoomMeter(meter, live_rooms).attach()
            meter_messages(chat.messages, meter)
            await recordings.recover()
            me = NodeInfo(
                node_id=settings.node_id,
                region=settings.region,
                url=settings.base_url(),
                internal_url="",  # known once the server listens (server.py)
                media_address=media_address.advertised,
                udp_ports=media_ports(media_address),
                capacity=settings.node_capacity,
                max_cpu=settings.node_max_cpu,
            )
            registry: NodeRegistry
            placement: LocalPlacement | RedisPlacement
            if redis_client is not None:
                registry = RedisRegistry(redis_client, me, ttl=settings.node_ttl_seconds)
                placement = RedisPlacement(
                    redis_client, registry, rooms, recent_ms=int(settings.node_ttl_seconds * 1000)
                )
            else:
                registry = LocalRegistry(me)
                placement = LocalPlacement(registry)
            rooms.on_close(lambda room, _reason: placement.release(room.id))
            member = ClusterMember(
                registry,
                placement,
                live_rooms,
                heartbeat_seconds=settings.heartbeat_seconds,
                adopt_seconds=settings.node_ttl_seconds,
                drain_timeout=settings.drain_timeout,
            )
            # Live audiences cascade to edge nodes (a cluster only: with Redis and its bus).
            cascade = Cascade(
                redis_client,
                bus,
                registry,
                placement,
                live_rooms,
                rooms,
                viewers=settings.cascade_viewers,
                fanout=settings.cascade_fanout,
                linger=settings.cascade_linger_seconds,
            )
            relay = Relay(
                placement, registry, ClusterAuth(cluster_secret_for(settings), settings.node_id), cascade=cascade
            )
            cascade.feeder = HttpFeeder(relay)
            member.heartbeat.listeners.append(cascade.tick)
            member.pipes = relay
            member.sockets = lambda: live_rooms.sockets
            await member.start()
        except BaseException:
            if mux is not None:
                mux.close()
            if coturn is not None:
                await coturn.stop()
            if revocations is not None:
                await revocations.stop()
            if redis_client is not None:
                await redis_client.aclose()
            await db.close()
            raise
        log.info(
            "node started",
            extra={
                "node_id": settings.node_id,
                "region": settings.region,
                "embedded_db": db.embedded is not None,
                "redis": bool(settings.redis_url),
                "media_address": media_address.advertised,
                "udp_ports": media_ports(media_address),
                "udp_single_port": media_address.mux is not None,
                "turn_urls": list(turn.urls) if turn is not None else [],
            },
        )
        # The event stream: relay the outbox to Kafka, or (single node, no Kafka) keep it trimmed.
        outbox: OutboxRelay | OutboxTrimmer = (
            OutboxRelay(db.pool, settings.kafka_bootstrap_servers)
            if settings.kafka_bootstrap_servers
            else OutboxTrimmer(db.pool)
        )
        if isinstance(outbox, OutboxRelay):
            chat.messages.on_change(outbox.changed)  # relay promptly after local commits
        media_bots = MediaBots(live_rooms)
        node = cls(
            settings=settings,
            db=db,
            metrics=metrics,
            tenancy=tenancy,
            rate_limiter=limiter,
            abuse=abuse,
            rooms=rooms,
            room_sweeper=RoomSweeper(rooms, live_rooms.participant_count),
            live_rooms=live_rooms,
            media_address=media_address,
            chat=chat,
            bus=bus,
            chat_hub=chat_hub,
            presence=presence,
            outbox=outbox,
            recordings=recordings,
            media_bots=media_bots,
            # Media quality and active speakers: packet sinks on every published track.
            quality=QualityMonitor(live_rooms, settings.stats_interval_ms / 1000, metrics),
            speakers=RoomSpeakers(live_rooms, settings.speaker_interval_ms / 1000),
            registry=registry,
            placement=placement,
            member=member,
            relay=relay,
            cascade=cascade,
            bots=Bots.create(
                db.pool,
                chat,
                tenancy.instances,
                settings.data_dir,
                Limits.from_settings(settings),
                debug_idle_seconds=settings.debug_run_idle_seconds,
                debug_runs_per_instance=settings.debug_runs_per_instance,
                browsers=Browsers(BrowserLimits.from_settings(settings)),  # started by the first OPEN
                media_bots=media_bots,
                rooms=rooms,
                placement=placement,
                links=ShareLinks(secret_box.derive(SHARE_LINKS), settings.public_url or ""),
                office_binary=settings.bot_office_binary,
                file_store=bot_file_store(settings),
                engine=settings.bot_engine,
            ),
            webhooks=WebhookDispatcher(
                db.pool,
                secret_box,
                webhook_guard(settings),
                settings.node_id,
                DispatchSettings(
                    max_attempts=settings.webhook_max_attempts,
                    backoff_seconds=settings.webhook_backoff_seconds,
                    backoff_max_seconds=settings.webhook_backoff_max_seconds,
                    timeout_seconds=settings.webhook_timeout_seconds,
                ),
            ),
            meter=meter,
            invoice_closer=InvoiceCloser(tenancy.billing, settings.billing_close_interval_seconds),
            redis=redis_client,
            turn=turn,
            coturn=coturn,
        )
        node.metrics.watch(live_rooms.media_samples)
        live_rooms.path_listener = lambda connection, path: node.metrics.media_connections.labels(
            connection, path.remote_type
        ).inc()
        node.metrics.watch(lambda: audience_samples(live_rooms.audiences()))
        node.metrics.watch(outbox.samples)
        node.metrics.watch(recordings.samples)
        node.metrics.watch(chat.messages.batcher.samples)  # chat group commit and fan-out
        node.metrics.watch(chat_hub.samples)
        node.metrics.watch(relay.samples)
        node.metrics.watch(cascade.samples)
        node.metrics.watch(node.load_samples)
        if media_address.mux is not None:
            node.metrics.watch(functools.partial(udp_samples, media_address.mux.counters))
        for each in (limiter, chat_limiter, abuse.auth_failures, abuse.joins):
            if isinstance(each, FallbackRateLimiter):
                node.metrics.watch(each.samples)
        node.outbox.start()
        node.bots.start()
        node.metrics.watch(node.webhooks.samples)
        node.webhooks.start()
        node.meter.start()
        node.invoice_closer.start()
        node.room_sweeper.start()
        node.loop_watch = LoopWatch(node.metrics)
        node.loop_watch.start()
        node.metrics.watch(node.quality.samples)
        node.quality.start()
        if settings.hls_enabled:  # LL-HLS of live rooms, packaged once per room on this node
            node.hls = HlsService(
                HlsConfig(settings.hls_segment_seconds, settings.hls_part_seconds, settings.hls_window_segments),
                live_rooms,
                rooms,
                video_bitrate=settings.hls_video_bitrate,
            )
            node.metrics.watch(node.hls.samples)
            meter_hls(node.hls, meter)  # players' fetched media time: viewer_minutes, channel hls
        return node

    def load_samples(self) -> list[Sample]:
        """The node's placement load, for autoscaling (deploy/kubernetes/hpa.yaml) and dashboards."""
        me = self.registry.me
        return [
            Sample(
                "gbmedia_node_load", "Placement load: cost over capacity, or CPU over its limit (0-1+)", me.load_share
            ),
            Sample("gbmedia_node_cpu", "Share of one core this node process used over the last heartbeat", me.load.cpu),
            Sample("gbmedia_node_draining", "1 while the node drains", 1 if me.draining else 0),
        ]

    async def stop(self) -> None:
        if self.loop_watch is not None:
            await self.loop_watch.stop()
        await self.member.stop()
        await self.cascade.close()  # edge copies end while their feeding nodes can still be told
        await self.relay.close()
        await self.room_sweeper.stop()
        await self.bots.stop()
        await self.outbox.stop()
        await self.webhooks.stop()
        await self.recordings.close()
        await self.quality.stop()
        await self.speakers.close()
        await self.media_bots.close()  # before their rooms: each closes its own connections and thread
        await self.live_rooms.close()
        if self.media_address.mux is not None:
            self.media_address.mux.close()
        await self.meter.stop()  # after the rooms: their sessions' last seconds are written
        await self.invoice_closer.stop()
        if self.hls is not None:
            await self.hls.close()
        await self.chat_hub.stop()
        await self.tenancy.revocations.stop()
        await self.bus.close()
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None
        await self.db.close()
        if self.coturn is not None:
            await self.coturn.stop()
        log.info("node stopped", extra={"node_id": self.settings.node_id})

    async def readiness(self) -> dict[str, dict[str, Any]]:
        """Each dependency's health; the node is ready when all are ok."""
        checks: dict[str, dict[str, Any]] = {"database": await _check(self.db.ping())}
        if self.redis is not None:
            checks["redis"] = await _check(self.redis.ping())
        if self.member.draining:  # the balancer sends new clients elsewhere; relays still reach it
            checks["placement"] = {"ok": False, "error": "draining"}
        return checks


async def _check(probe: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(probe, 2.5)
    except Exception as exc:  # any failure means "not ready", and says why
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


def udp_samples(counters: MuxCounters) -> list[Sample]:
    """The shared media port's counters on /metrics (docs/operations.md)."""
    dropped = "Datagrams the shared media port dropped, by reason"
    return [
        *(
            Sample("gbmedia_udp_dropped_total", dropped, getattr(counters, reason), True, (("reason", reason),))
            for reason in ("unknown_address", "unknown_ufrag", "bad_integrity", "unmatched_response")
        ),
        Sample(
            "gbmedia_udp_consent_answered_total",
            "Consent checks the shared media port answered itself",
            counters.consent_answered,
            True,
        ),
        Sample(
            "gbmedia_udp_rtp_direct_total",
            "SRTP and SRTCP datagrams the shared media port handed straight to their connections' handlers",
            counters.rtp_direct,
            True,
        ),
    ]
