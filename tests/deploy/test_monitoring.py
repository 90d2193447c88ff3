"""deploy/monitoring: the Prometheus scrape configuration, the alert rules and the Grafana
dashboard name only metrics a live node exports (read from its /metrics here), and have
the shape Prometheus and Grafana load; ``promtool`` (Debian's ``prometheus``, which
scripts/test installs) checks the rules and the scrape configuration.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from gbmedia.app import create_app
from gbmedia.node import Node
from tests.conftest import make_settings, service_missing

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
PROMETHEUS_OWN = {"up"}  # series Prometheus writes itself for every target
# PromQL words that are not metric names: operators, modifiers, and names of labels in by/on clauses.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
DROPPED = "gbmedia_(track|participant|live_room)_.+"  # per-room series the scrape configurations drop
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}


async def exported_metrics(client: TestClient, documented: set[str] | None = None) -> set[str]:
    """Every series name a node's /metrics offers, labelled families without series yet included;
    each metric's name as docs/operations.md writes it goes into ``documented``."""
    resp = await client.get("/metrics")
    assert resp.status == 200
    names: set[str] = set()
    for family in text_string_to_metric_families(await resp.text()):
        if documented is not None and not family.name.endswith("_created"):
            documented.add(family.name + "_total" if family.type == "counter" else family.name)
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, labels, strings and durations left out)."""
    if (variable := re.fullmatch(r"label_values\((\w+), *\w+\)", expr)) is not None:  # a Grafana variable's query
        return {variable.group(1)}
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # label values, regexes
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range durations
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = match.group()
        if word in KEYWORDS or expr[match.end() :].lstrip().startswith("("):
            continue  # a keyword, or a function called
        if re.fullmatch(r"\d+(?:e\d+)?", word) or (match.start() > 0 and expr[match.start() - 1].isdigit()):
            continue  # part of a number (3e9)
        names.add(word)
    return names


def test_metric_names_are_read_from_expressions():
    expr = 'histogram_quantile(0.9, sum by (kind, le) (rate(gbmedia_x_bucket{job=~"a|b"}[5m]))) > 5e9'
    assert metric_names(expr) == {"gbmedia_x_bucket"}
    assert metric_names("process_open_fds / process_max_fds > 0.8") == {"process_open_fds", "process_max_fds"}
    assert metric_names("up == 0 and on (instance) gbmedia_node_draining") == {"up", "gbmedia_node_draining"}
    assert metric_names("label_values(gbmedia_build_info, job)") == {"gbmedia_build_info"}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    assert groups and all(set(g) == {"name", "rules"} and g["rules"] for g in groups)
    return [rule for group in groups for rule in group["rules"]]


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    queries = [("variable job", dashboard["templating"]["list"][0]["definition"])]
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        queries += [(panel["title"], target["expr"]) for target in panel["targets"]]
    return queries


def test_alert_rules_have_what_prometheus_and_alertmanager_need():
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names repeat"
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"Gbmedia[A-Za-z]+", rule["alert"])
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert "for" not in rule or re.fullmatch(r"\d+[smh]", rule["for"])


def test_the_dashboard_panels_each_have_a_place_and_a_unique_id():
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert {i["name"] for i in dashboard["__inputs"]} == {"DS_PROMETHEUS"}
    for panel in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-kubernetes.yml"])
def test_the_scrape_configurations_send_the_metrics_token_and_load_the_rules(name: str):
    config = yaml.safe_load((MONITORING / name).read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = config["scrape_configs"]
    assert jobs
    for job in jobs:
        assert job["metrics_path"] == "/metrics"
        # The token as a file Prometheus reads, never inline in the configuration.
        assert job["authorization"] == {"type": "Bearer", "credentials_file": "/etc/prometheus/gbmedia-metrics-token"}
        assert "credentials" not in job["authorization"] and "bearer_token" not in job
        (drop,) = job["metric_relabel_configs"]  # the per-room series stay out of Prometheus
        assert (drop["action"], drop["source_labels"], drop["regex"]) == ("drop", ["__name__"], DROPPED)
    statefulset = (MONITORING.parent / "kubernetes" / "statefulset.yaml").read_text()
    for job in jobs:
        if "static_configs" in job:  # the headless Service of the StatefulSet names the pods
            service = re.search(r"serviceName: (\S+)", statefulset)
            assert service is not None
            assert all(t.endswith(f".{service.group(1)}:7880") for t in job["static_configs"][0]["targets"])
        else:  # the pods the StatefulSet labels, in its namespace, on the port its annotation names
            assert "app.kubernetes.io/name: gbmedia" in statefulset and 'prometheus.io/port: "7880"' in statefulset
            assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == ["gbmedia"]


async def test_alerts_dashboard_and_docs_agree_with_the_metrics_the_node_exports(
    client: TestClient, tmp_path: Path, database_url: str, kafka_bootstrap: str
):
    """Read from two live nodes: a single one as ``scripts/serve`` starts it, and one relaying its
    outbox to Kafka (``gbmedia_outbox_lag_seconds`` and the relay's figures exist only there)."""
    node = await Node.start(make_settings(tmp_path / "kafka", database_url, kafka_bootstrap_servers=kafka_bootstrap))
    metrics: set[str] = set()
    try:
        async with TestClient(TestServer(create_app(node))) as with_kafka:
            exported = await exported_metrics(client, metrics) | await exported_metrics(with_kafka, metrics)
            exported |= PROMETHEUS_OWN
    finally:
        await node.stop()
    operations = (MONITORING.parents[1] / "docs" / "operations.md").read_text()
    section = operations.split("## Observability", 1)[1].split("\n## ", 1)[0]
    assert {m for m in metrics if f"`{m}`" not in section} == set(), "metrics missing from docs/operations.md"
    documented = set(re.findall(r"`((?:gbmedia|process)_[a-z_]+)`", section))
    assert {m for m in documented if m not in exported and not re.fullmatch(DROPPED, m)} <= {
        # Exported only while there is something to count: per-room series, fallbacks, HLS of a live room.
        "gbmedia_live_room_node_viewers",
        "gbmedia_live_room_edges",
        "gbmedia_ratelimit_degraded",
        "gbmedia_ratelimit_redis_fallbacks_total",
    }
    used: dict[str, set[str]] = {}
    for rule in alert_rules():
        used[f"alert {rule['alert']}"] = metric_names(rule["expr"])
    for title, expr in dashboard_queries():
        used[f"panel {title}"] = metric_names(expr)
    assert all(used.values()), [where for where, names in used.items() if not names]
    missing = {where: names - exported for where, names in used.items() if names - exported}
    assert missing == {}
    dropped = {where: names for where, names in used.items() if any(re.fullmatch(DROPPED, n) for n in names)}
    assert dropped == {}, "these read series the scrape configurations drop"


def promtool(*args: str) -> None:
    if shutil.which("promtool") is None:
        service_missing("promtool (Debian's prometheus package; scripts/test installs it)")
    result = subprocess.run(["promtool", "check", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_alert_rules():
    promtool("rules", str(MONITORING / "alerts.yml"))


def test_promtool_accepts_the_scrape_configuration(tmp_path: Path):
    """With the token file where the configuration says (promtool checks that it exists)."""
    token = tmp_path / "gbmedia-metrics-token"
    token.write_text("a-metrics-token-of-16-chars")
    config = (MONITORING / "prometheus.yml").read_text()
    assert config.count("/etc/prometheus/gbmedia-metrics-token") == 1
    (tmp_path / "prometheus.yml").write_text(config.replace("/etc/prometheus/gbmedia-metrics-token", str(token)))
    shutil.copy(MONITORING / "alerts.yml", tmp_path / "alerts.yml")
    promtool("config", str(tmp_path / "prometheus.yml"))


async def test_prometheus_scrapes_a_node_with_the_token_and_evaluates_every_rule_and_panel(
    tmp_path: Path, database_url: str
):
    """The real Prometheus (Debian's), with prometheus.yml pointed at a live node that requires
    the metrics token: the target is up, every alert rule evaluates without error, and every
    dashboard query runs."""
    binary = shutil.which("prometheus")
    if binary is None:
        service_missing("prometheus (Debian's prometheus package; scripts/test installs it)")
    secret = "a-metrics-token-of-some-length"
    node = await Node.start(make_settings(tmp_path / "node", database_url, metrics_token=secret))
    process: asyncio.subprocess.Process | None = None
    try:
        async with TestClient(TestServer(create_app(node))) as client:
            assert (await client.get("/metrics")).status == 401  # the token is required
            token = tmp_path / "gbmedia-metrics-token"
            token.write_text(secret + "\n")
            config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
            config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
            (job,) = config["scrape_configs"]
            job["authorization"]["credentials_file"] = str(token)
            job["static_configs"][0]["targets"] = [f"127.0.0.1:{client.server.port}"]
            (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
            shutil.copy(MONITORING / "alerts.yml", tmp_path / "alerts.yml")
            port = free_port()
            process = await asyncio.create_subprocess_exec(
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=(tmp_path / "prometheus.log").open("wb"),
            )
            api = f"http://127.0.0.1:{port}/api/v1"
            async with aiohttp.ClientSession() as http:

                async def get(path: str, **params: str) -> Any:
                    async with http.get(f"{api}/{path}", params=params) as resp:
                        body = await resp.json()
                        assert body["status"] == "success", body
                        return body["data"]

                async def settled() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
                    for _ in range(300):
                        try:
                            targets = (await get("targets"))["activeTargets"]
                            rules = [r for g in (await get("rules"))["groups"] for r in g["rules"]]
                        except (aiohttp.ClientConnectionError, aiohttp.ContentTypeError):  # starting: 503
                            targets, rules = [], []
                        up = targets and all(t["health"] == "up" for t in targets)
                        if up and rules and all(r["health"] != "unknown" for r in rules):  # each evaluated once
                            return targets, rules
                        await asyncio.sleep(0.1)
                    log = (tmp_path / "prometheus.log").read_text()[-3000:]
                    health = [(t["health"], t.get("lastError")) for t in targets], [r["health"] for r in rules]
                    raise AssertionError(f"Prometheus did not scrape and evaluate: {health} {log}")

                targets, rules = await settled()
                assert [t["labels"]["job"] for t in targets] == ["gbmedia"]
                assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
                assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
                for title, expr in dashboard_queries():
                    if expr.startswith("label_values("):
                        values = await get("label/job/values", **{"match[]": "gbmedia_build_info"})
                        assert values == ["gbmedia"], title
                        continue
                    query = expr.replace("$job", ".*")
                    await get("query", query=query)  # parses and runs (an empty result is fine)
                # The series arrive: the node's own build info, scraped with the token.
                info = await get("query", query="gbmedia_build_info")
                assert info["result"] and info["result"][0]["metric"]["node_id"] == node.settings.node_id
    finally:
        if process is not None and process.returncode is None:
            process.terminate()
            await process.wait()
        await node.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
