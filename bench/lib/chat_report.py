"""The chat benchmark's report (``python -m bench.chat``): its table, the count check, the profile by purpose.

Pure functions of the result: what each rate step measured, whether the clients received
exactly what the database stored, where the server's time went.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

from bench.lib.chatclient import Plan
from bench.lib.profile import collapsed_stacks, split_frame
from bench.lib.report import col, fmt, print_aligned, table

NEIGHBOUR_CORES = 0.5  # other processes' CPU in a 0.1 s sample that a slow slot is put down to
# The target and the peer measured here (docs/performance.md).
TARGET_MSGS_PER_S = 2000
TARGET_MEMBERS = 10
TARGET_P99_MS = 100.0
REF_SYNAPSE = (
    "Matrix Synapse 1.163 (PostgreSQL 15), same machines: about 40-57 persisted msg/s (400-560 "
    "deliveries/s), delivery p50/p99 about 0.1/0.15 s at 5 msg/s and about 1 s at its peak"
)


# Where a server sample's time goes: the first rule (in this order) that matches a frame of its stack.
PROFILE_BUCKETS = (
    (
        "fan-out writes: ChatSession._flush -> transport.write (one write per socket per loop turn)",
        ("_flush (gbmedia/messaging/socket.py",),
    ),
    (
        "fan-out dispatch: hub, frames, bus publish",
        (
            "_queue (gbmedia/messaging/delivery.py",
            "_on_event (gbmedia/messaging/delivery.py",
            "_publish (gbmedia/messaging/delivery.py",
            "publish (gbmedia/bus.py",
            "_dispatch (gbmedia/bus.py",
            "push (gbmedia/messaging/socket.py",
            "on_change (gbmedia/messaging/delivery.py",
        ),
    ),
    ("member lookup query for the fan-out (member_identities)", ("member_identities (gbmedia/",)),
    ("access check queries (Conversations.access: conversation + membership)", ("access (gbmedia/messaging/",)),
    ("instance lookup query (Instances.get, for the locale)", ("get (gbmedia/tenancy/instances.py",)),
    (
        "group commit: the batch statement (SendBatcher._execute: arrays in, rows out)",
        ("_execute (gbmedia/messaging/group_commit.py",),
    ),
    (
        "group commit: outcomes, listeners, answering the sends",
        ("gbmedia/messaging/group_commit.py", "_committed (gbmedia/messaging/messages.py"),
    ),
    (
        "send checks before the batch (Messages.prepare)",
        ("send (gbmedia/messaging/messages.py", "prepare (gbmedia/messaging/messages.py"),
    ),
    ("rate limiter", ("take (gbmedia/ratelimit.py",)),
    ("frame parse: json.loads + pydantic (parse_message)", ("parse_message (gbmedia/signaling/protocol.py",)),
    (
        "ack reply (ChatSession.reply: JSON + frame, written with the turn's events)",
        ("reply (gbmedia/messaging/socket.py", "_send (gbmedia/messaging/socket.py"),
    ),
    ("other replies (Connection.handle -> send_json)", ("handle (gbmedia/signaling/ws.py",)),
)
# Samples of threads that only wait (thread pool workers blocked on their queue): not work.
IDLE_FRAMES = ("_queue_SimpleQueue_get", "PyThread_acquire_lock_timed", "_worker (concurrent/futures/thread.py")
OTHER_BUCKET = "event loop and native code (uvloop I/O, asyncpg protocol callbacks), the rest"


def profile_summary(path: Path, top: int = 12) -> list[str]:
    """A py-spy raw (collapsed) profile by what the time is for, and its hottest frames."""
    buckets: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, n in collapsed_stacks(path.read_text(errors="replace")):
        if any(idle in frame for frame in frames for idle in IDLE_FRAMES):
            continue
        total += n
        for label, needles in PROFILE_BUCKETS:
            if any(needle in frame for frame in frames for needle in needles):
                buckets[label] += n
                break
        else:
            buckets[OTHER_BUCKET] += n
        if frames:
            name, where = split_frame(frames[-1])
            own[f"{name} ({where})" if where else name] += n
    if not total:
        return [f"{path}: no samples"]
    lines = [f"{path}: {total} samples (py-spy, 100/s, idle and waiting threads excluded); by purpose:"]
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in buckets.most_common()]
    lines.append("  hottest frames (self):")
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    return lines


# --- output -------------------------------------------------------------------------------


def print_table(result: dict[str, Any]) -> None:
    """The table, its legend, each rate's notes (group commit, machine probe, slow slots), the target."""
    cfg = result["config"]
    rows = [r for r in result["rows"] if "error" not in r]
    members = cfg["members"]
    print()
    print(
        f"gbmedia chat: {cfg['clients']} clients in {cfg['conversations']} conversations of {members} members "
        f"over /rtc, {cfg['workers']} client processes ({cfg['event_loop']}, "
        f"{cfg.get('client', 'aiohttp')} WebSocket), {cfg['seconds']:.0f} s window "
        f"after {cfg['warmup']:.0f} s warm-up per rate; {cfg['cpus']} cores;"
    )
    print(f"database: {cfg['database']}.")
    print_aligned(
        table(
            rows,
            [
                col("rate", "rate", "g"),
                col("offered/s", "offered_per_s", ".0f"),
                col("acked/s", "acked_per_s", ".0f"),
                col("deliv/s", "deliveries_per_s", ".0f"),
                col("own/s", "own_copies_per_s", ".0f"),
                col("ack p50", "ack_ms_p50", ".1f"),
                col("ack p99", "ack_ms_p99", ".1f"),
                col("deliv p50", "delivery_ms_p50", ".1f"),
                col("deliv p99", "delivery_ms_p99", ".1f"),
                col("deliv max", "delivery_ms_max", ".0f"),
                col("srv CPU%", "server_cpu_percent", ".0f"),
                col("srv sys%", "server_sys_percent", ".0f"),
                col("pg CPU%", "postgres_cpu_percent", ".0f"),
                col("clients%", "clients_cpu_percent", ".0f"),
                col("others%", "others_cpu_percent", ".0f"),
                col("busy%", "machine_busy_percent", ".0f"),
                col("srv wait%", "server_runqueue_wait_percent", ".0f"),
                col("srv ms/msg", "server_ms_per_msg", ".3f"),
                col("pg ms/msg", "postgres_ms_per_msg", ".3f"),
                col("cli ms/msg", "clients_ms_per_msg", ".3f"),
                ("drain s", lambda r: fmt(r["drain_s"], ".1f") + ("" if r["drained"] else "!")),
                ("errors", lambda r: str(sum(r["errors"].values()))),
                ("target", lambda r: "yes" if r["meets_target"] else "no"),
            ],
        )
    )
    print()
    legend = [
        "offered/s: chat_send frames written in the window; acked/s: chat_ack replies that arrived in it (the "
        "server acks after the commit, so acked = persisted);",
        f"deliv/s: chat_message events that arrived at the other members ({members - 1} per message; the "
        "sender's own copy is NOT counted there); own/s: the sender's own copy, which the server also pushes;",
        "ack: send -> chat_ack; deliv: send -> chat_message at another member; ms, of the messages sent in the "
        "window (p50/p99/max, nearest rank);",
        "CPU % of one core: srv = utime+stime of gbmedia serve (all threads), sys = its stime alone; "
        "pg = PostgreSQL (see database above); clients = the client workers; others = every other process on "
        "the machine (not this benchmark); busy = the whole machine, % of all cores;",
        "srv/pg/cli ms/msg: CPU ms of one core per persisted message (server, PostgreSQL, client workers): the "
        "cost, which neighbours on the machine move far less than the saturation point;",
        "srv wait: time the server's threads were runnable but waited for a CPU; drain s: time after the window "
        "until every message was acked and delivered ('!' = gave up);",
        f"target: drained, no errors, acked >= 98% of offered, ack and delivery p99 < {TARGET_P99_MS:.0f} ms.",
    ]
    print("Legend: " + "\n        ".join(legend))
    for r in rows:
        if r["others_cpu_percent"] > 25:
            print(
                f"  rate {r['rate']:g}: other work on the machine took {r['others_cpu_percent']:.0f}% of a core "
                f"(server waited for a CPU {r['server_runqueue_wait_percent']:.0f}% of the time): not a clean row"
            )
        if r["errors"]:
            print(f"  rate {r['rate']:g}: errors {r['errors']}")
        if r["client_lag_ms_max"] > 50 or r["sender_behind_ms_max"] > 50:
            print(
                f"  rate {r['rate']:g}: the clients' own event loops lagged up to {r['client_lag_ms_max']:.0f} ms "
                f"(sender behind schedule up to {r['sender_behind_ms_max']:.0f} ms): latencies include that"
            )
        if "statements_per_s" in r:
            print(
                f"  rate {r['rate']:g}: group commit wrote {r['statements_per_s']:.0f} statements/s of "
                f"{r['sends_per_statement']:.1f} sends, {r['statement_ms']:.1f} ms each (connection to rows)"
            )
        probe = r.get("machine_probe")
        if probe is not None:
            stalls = probe["disk_stalls"]
            print(
                f"  rate {r['rate']:g}: machine probe: disk flush (8 kB + fdatasync) p50 "
                f"{probe['flush_ms_p50']:g} ms, p99 {probe['flush_ms_p99']:g} ms; "
                f"{len(stalls)} over {probe['stall_ms']:g} ms"
                + (
                    " (s into the window, ms: "
                    + ", ".join(f"{at:g}s {ms:g}" for at, ms in stalls[:8])
                    + (" ..." if len(stalls) > 8 else "")
                    + ")"
                    if stalls
                    else ""
                )
                + f"; other processes' peak {probe['others_peak_cores']:.2f} cores in a 0.1 s sample"
            )
        if r.get("slow_slots"):
            shown = ", ".join(
                f"{at} {ms:g} ms{slot_cause(r.get('slow_slot_machine', {}).get(at))}"
                for at, ms in list(r["slow_slots"].items())[:8]
            )
            print(
                f"  rate {r['rate']:g}: {len(r['slow_slots'])} of {r['slots']} slots of 100 ms (from "
                f"{r['window_start_utc']} UTC) had a delivery over "
                f"{TARGET_P99_MS:.0f} ms (by send time in the window, the slowest): {shown}"
                f"{' ...' if len(r['slow_slots']) > 8 else ''}"
            )
    for r in result["rows"]:
        if "error" in r:
            print(f"  rate {r['rate']:g}: not measured: {r['error']}")
    held = [r for r in rows if r["meets_target"]]
    print()
    print(
        f"Target (the issue): >= {TARGET_MSGS_PER_S:,} msgs/s persisted and fanned out to {TARGET_MEMBERS} members "
        f"({TARGET_MSGS_PER_S * (TARGET_MEMBERS - 1):,} deliveries/s to the others), p99 < {TARGET_P99_MS:.0f} ms."
    )
    if held:
        best = max(held, key=lambda r: r["acked_per_s"])
        print(
            f"Highest step that met it here: rate {best['rate']:g}: {best['acked_per_s']:.0f} msgs/s acked, "
            f"{best['deliveries_per_s']:.0f} deliveries/s, delivery p99 {best['delivery_ms_p99']:.1f} ms "
            f"({best['acked_per_s'] / TARGET_MSGS_PER_S:.0%} of the target rate)."
        )
    else:
        print("No step met it here.")
    if rows:
        peak = max(rows, key=lambda r: r["acked_per_s"])
        print(
            f"Peak acked rate: {peak['acked_per_s']:.0f} msgs/s at offered {peak['offered_per_s']:.0f} "
            f"(delivery p99 {fmt(peak['delivery_ms_p99'], '.0f')} ms)."
        )
    print(f"Reference: {REF_SYNAPSE} (docs/performance.md).")
    check = result.get("count_check")
    if check:
        print()
        for line in check["lines"]:
            print(line)
    for line in result.get("profile_summary", []):
        print(line)


def slot_cause(machine: dict[str, float] | None) -> str:
    """What the machine probe saw around a slow slot: a slow disk flush, a busy neighbour, or nothing."""
    if not machine:
        return ""
    causes = []
    if machine["disk_ms"] > 0:
        causes.append(f"disk flush {machine['disk_ms']:.0f} ms")
    if machine["others_cores"] >= NEIGHBOUR_CORES:
        causes.append(f"others {machine['others_cores']:.1f} cores")
    return f" ({', '.join(causes)})" if causes else ""


def count_check(stored: int, last_seq: dict[str, int], verify: list[dict[str, Any]], plan: Plan) -> dict[str, Any]:
    """Sent = acked = stored, each conversation's last seq = its acks, and every member received every seq of
    its conversation exactly once: the clients' tallies (``verify`` replies) against the database's."""
    total = {
        key: sum(v[key] for v in verify)
        for key in (
            "sent",
            "acked",
            "errors",
            "pending",
            "duplicate_acks",
            "received",
            "own_received",
            "missing",
            "extra",
            "duplicates",
            "foreign",
            "complete",
            "clients",
        )
    }
    sent, acked, errors, pending = total["sent"], total["acked"], total["errors"], total["pending"]
    duplicate_acks, received, own = total["duplicate_acks"], total["received"], total["own_received"]
    missing, extra, duplicates, foreign = total["missing"], total["extra"], total["duplicates"], total["foreign"]
    complete, clients = total["complete"], total["clients"]
    seq_total = sum(last_seq.get(cid, 0) for cid in plan.conversations)
    acked_by: collections.Counter[str] = collections.Counter()
    for v in verify:
        acked_by.update(v["acked_by_conversation"])
    per_conversation_ok = all(acked_by.get(cid, 0) == last_seq.get(cid, 0) for cid in plan.conversations)
    expected_others = sum(acked_by.get(cid, 0) * (len(g) - 1) for cid, g in plan.conversations.items())
    expected_total = sum(acked_by.get(cid, 0) * len(g) for cid, g in plan.conversations.items())
    others = received - own
    problems = []
    if not sent == acked == stored:
        problems.append(f"sent {sent}, acked {acked}, stored {stored} (refused {errors}, unanswered {pending})")
    if duplicate_acks:
        problems.append(f"{duplicate_acks} acks said duplicate")
    if seq_total != stored or not per_conversation_ok:
        problems.append(
            f"conversations' last_seq sum {seq_total} vs stored {stored}; per-conversation acks match "
            f"last_seq: {per_conversation_ok}"
        )
    if missing or extra or duplicates or foreign:
        examples = [e for v in verify for e in v["examples"]][:3]
        problems.append(
            f"deliveries: {missing} missing, {extra} beyond last_seq, {duplicates} duplicated, "
            f"{foreign} from other conversations; {complete}/{clients} members complete {examples}"
        )
    if others != expected_others or own != acked:
        problems.append(
            f"delivered to others {others} vs acked x (members-1) = {expected_others}; own copies "
            f"{own} vs acked {acked}"
        )
    members = max((len(g) for g in plan.conversations.values()), default=0)
    lines = [
        f"Count check: sent {sent} = acked {acked} = stored {stored} (SELECT count(*) FROM messages); "
        f"delivered to the other members {others} = acked x (members-1) = {expected_others} "
        f"({members}-member conversations); plus the senders' own copies {own} (= acked): "
        f"{received} = acked x members = {expected_total} in all; {complete}/{clients} members received "
        f"every seq of their conversation exactly once."
    ]
    lines.append("COUNT CHECK ok" if not problems else "COUNT CHECK MISMATCH: " + "; ".join(problems))
    return {
        "ok": not problems,
        "sent": sent,
        "acked": acked,
        "stored": stored,
        "refused": errors,
        "unanswered": pending,
        "delivered_to_others": others,
        "expected_to_others": expected_others,
        "own_copies": own,
        "missing": missing,
        "duplicates": duplicates,
        "members_complete": complete,
        "clients": clients,
        "problems": problems,
        "lines": lines,
    }
