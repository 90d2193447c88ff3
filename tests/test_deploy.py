"""The Kubernetes manifests: every setting has a home, every manifest matches the Kubernetes
OpenAPI schemas (kubernetes-validate, offline), and the pieces agree with each other."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate
from packaging.version import Version

from gbmedia.config import Settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
# statefulset.yaml sets them from the pod, or (the TURN secret) from the coturn Secret
PER_POD = {"GBMEDIA_NODE_ID", "GBMEDIA_PUBLIC_HOST", "GBMEDIA_CLUSTER_HOST", "GBMEDIA_TURN_SECRET"}
MANIFESTS = sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")


def kubernetes_versions(oldest: str = "1.26") -> tuple[str, str]:
    """The oldest Kubernetes the manifests claim (mixed-protocol LoadBalancer Services: 1.26), or
    the oldest kubernetes-validate still bundles if that is newer, and the newest it bundles."""
    bundled = sorted({kubernetes_validate.major_minor(v) for v in kubernetes_validate.all_versions()}, key=Version)
    return next(v for v in bundled if Version(v) >= Version(oldest)), bundled[-1]


KUBERNETES_VERSIONS = kubernetes_versions()


def documents(name: str, folder: Path = DEPLOY) -> list[dict]:
    return [d for d in yaml.safe_load_all((folder / name).read_text()) if d]


def document(name: str, kind: str, metadata_name: str) -> dict:
    return next(d for d in documents(name) if d["kind"] == kind and d["metadata"]["name"] == metadata_name)


def test_every_setting_has_a_home_in_the_manifests_and_each_value_is_valid():
    config = documents("configmap.yaml")[0]["data"]
    secret = next(d for d in documents("secret.example.yaml") if d["metadata"]["name"] == "gbmedia")["stringData"]
    statefulset = (DEPLOY / "statefulset.yaml").read_text()
    names = {"GBMEDIA_" + name.upper() for name in Settings.model_fields}
    homes = set(config) | set(secret) | {n for n in PER_POD if n in statefulset}
    assert names - homes == set(), "settings missing from deploy/kubernetes"
    assert homes - names == set(), "manifests set variables gbmedia does not read"
    assert not set(config) & set(secret)
    # The ConfigMap's values are ones the node accepts (the bucket check happens at start-up).
    values = {k.removeprefix("GBMEDIA_").lower(): v for k, v in config.items()}
    Settings(**values, operator_token="x" * 16, turn_secret="x" * 16)  # the TURN secret: coturn's Secret


# --- schemas ---------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """kubernetes-validate must read only the schemas it bundles: any connection fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"the schema validation tried to reach the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def schema_errors(path: Path) -> list[str]:
    """Every resource in the file against the strict schemas (unknown fields are errors)."""
    errors = []
    for resource in documents(path.name, path.parent):
        name = f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"
        if "apiVersion" not in resource or "kind" not in resource:
            errors.append(f"{name}: no apiVersion or kind")
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(resource, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path) or "(top)"
                errors.append(f"{name} (Kubernetes {version}) at {where}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                errors.append(f"{name}: {exc.message}")
    return errors


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize("manifest", MANIFESTS)
def test_manifest_matches_the_kubernetes_schemas(manifest: str):
    assert schema_errors(DEPLOY / manifest) == []


# (manifest, text, replacement, part of the error it must cause)
SUPERVISOR_MARGIN = 10.0  # gbmedia/workers.py: drain + shutdown timeouts + this, then SIGKILL

BROKEN = {
    "a misspelt field": (
        "statefulset.yaml",
        "terminationGracePeriodSeconds:",
        "terminationGracePeriodSecond:",
        "'terminationGracePeriodSecond' was unexpected",
    ),
    "a misspelt nested field": (
        "haproxy-deployment.yaml",
        "readOnlyRootFilesystem:",
        "readOnlyRootFileSystem:",
        "'readOnlyRootFileSystem' was unexpected",
    ),
    "a wrong type": ("hpa.yaml", "maxReplicas: 10", "maxReplicas: ten", "'ten' is not of type 'integer'"),
    "a missing required field": (
        "haproxy-deployment.yaml",
        "- name: haproxy\n          # The",
        "- # The",
        "'name' is a required property",
    ),
    "no apiVersion": (
        "pdb.yaml",
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\n",
        "kind: PodDisruptionBudget\n",
        "no apiVersion",
    ),
    "an unknown API version": ("hpa.yaml", "autoscaling/v2", "autoscaling/v9", "Couldn't find schema"),
}


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize("change", BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_copy_of_a_manifest_fails_validation(tmp_path: Path, change: tuple[str, str, str, str]):
    manifest, old, new, error = change
    text = (DEPLOY / manifest).read_text()
    assert old in text, f"{manifest} no longer contains {old!r}: update the test"
    (tmp_path / manifest).write_text(text.replace(old, new, 1))
    errors = schema_errors(tmp_path / manifest)
    assert errors and all(error in e for e in errors), errors


def test_the_schema_tests_cannot_reach_the_network(no_network: None):
    with pytest.raises(AssertionError, match="network"):
        socket.create_connection(("127.0.0.1", 9), timeout=1)


# --- the pieces agree --------------------------------------------------------------------


def test_kustomization_lists_every_manifest_but_the_secret_template():
    kustomization = documents("kustomization.yaml")[0]
    resources = kustomization["resources"]
    assert sorted(resources) == [m for m in MANIFESTS if m != "secret.example.yaml"]
    generated = [f for g in kustomization["configMapGenerator"] for f in g["files"]]
    assert all((DEPLOY / f).is_file() for f in generated)


def config_value(name: str) -> str:
    return documents("configmap.yaml")[0]["data"][name]


def node_pod() -> dict:
    return document("statefulset.yaml", "StatefulSet", "gbmedia")["spec"]["template"]["spec"]


def test_termination_leaves_time_for_the_drain():
    pod = node_pod()
    (container,) = pod["containers"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = float(pre_stop[1]) + float(config_value("GBMEDIA_DRAIN_TIMEOUT"))
    needed += float(config_value("GBMEDIA_SHUTDOWN_TIMEOUT"))
    needed += SUPERVISOR_MARGIN  # the workers' supervisor waits this long more before it kills a stuck worker
    assert pod["terminationGracePeriodSeconds"] > needed


def test_the_internal_port_is_the_same_everywhere():
    port = int(config_value("GBMEDIA_CLUSTER_PORT"))
    assert port != 0, "a fixed port, so that firewalls can name it"
    (container,) = node_pod()["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["cluster"] == port
    headless = document("service.yaml", "Service", "gbmedia-headless")["spec"]["ports"]
    assert {p["name"]: p["port"] for p in headless}["cluster"] == port
    # Per pod: the internal listener binds the node's own address, not every interface.
    env = {e["name"]: e for e in container["env"]}
    assert env["GBMEDIA_CLUSTER_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def test_the_cluster_secret_is_a_secret():
    secret = document("secret.example.yaml", "Secret", "gbmedia")["stringData"]
    assert "GBMEDIA_CLUSTER_SECRET" in secret
    assert "GBMEDIA_CLUSTER_SECRET" not in documents("configmap.yaml")[0]["data"]
    # The placeholder is refused by the node, so nobody runs a cluster on it.
    with pytest.raises(ValueError, match="cluster_secret"):
        Settings(cluster_secret=secret["GBMEDIA_CLUSTER_SECRET"])


def test_the_autoscaler_uses_cpu_and_the_nodes_load():
    spec = document("hpa.yaml", "HorizontalPodAutoscaler", "gbmedia")["spec"]
    metrics = {m["type"]: m for m in spec["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == "gbmedia_node_load"


def test_haproxy_lists_every_pod_the_autoscaler_may_create():
    """haproxy.cfg names the StatefulSet's pods by their DNS names, up to maxReplicas."""
    max_replicas = document("hpa.yaml", "HorizontalPodAutoscaler", "gbmedia")["spec"]["maxReplicas"]
    statefulset = document("statefulset.yaml", "StatefulSet", "gbmedia")
    namespace = documents("kustomization.yaml")[0]["namespace"]
    domain = f"{statefulset['spec']['serviceName']}.{namespace}.svc.cluster.local"
    port = config_value("GBMEDIA_PORT")
    servers = re.findall(r"^\s*server (\S+) (\S+)", (DEPLOY / "haproxy.cfg").read_text(), re.MULTILINE)
    assert servers == [(f"gbmedia-{i}", f"gbmedia-{i}.{domain}:{port}") for i in range(max_replicas)]


def test_traffic_goes_ingress_to_haproxy_to_the_nodes():
    (rule,) = document("ingress.yaml", "Ingress", "gbmedia")["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": "haproxy", "port": {"name": "http"}}
    service = document("haproxy-service.yaml", "Service", "haproxy")["spec"]
    deployment = document("haproxy-deployment.yaml", "Deployment", "haproxy")
    assert service["selector"] == deployment["spec"]["selector"]["matchLabels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (http,) = [p for p in service["ports"] if p["name"] == "http"]
    assert http["targetPort"] == "http"
    config = (DEPLOY / "haproxy.cfg").read_text()
    assert f"    bind :{ports['http']}\n" in config
    assert f"    bind :{ports['stats']}\n" in config
    # The official image reads /usr/local/etc/haproxy/haproxy.cfg; the generator makes that file.
    (mount,) = container["volumeMounts"]
    (volume,) = deployment["spec"]["template"]["spec"]["volumes"]
    assert mount["mountPath"] == "/usr/local/etc/haproxy" and volume["configMap"]["name"] == "haproxy"
    (generator,) = documents("kustomization.yaml")[0]["configMapGenerator"]
    assert generator == generator | {"name": "haproxy", "files": ["haproxy.cfg"]}
