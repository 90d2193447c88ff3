"""The Kubernetes manifests configure every setting: the ConfigMap, the Secret, or per pod."""

from __future__ import annotations

from pathlib import Path

import yaml

from gbmedia.config import Settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
PER_POD = {"GBMEDIA_NODE_ID", "GBMEDIA_PUBLIC_HOST"}  # statefulset.yaml sets them from the pod


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


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
    Settings(**values, operator_token="x" * 16)
