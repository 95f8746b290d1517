"""deploy/kubernetes without a cluster: every object is valid against the
Kubernetes API schemas (kubernetes-validate, strict: an unknown field fails),
the CloudNativePG Cluster against the operator's own CRD schema (vendored in
deploy/schemas with its origin), and the pieces fit together: two replicas,
probes on routes the app serves, memory sized from the measured peak RSS,
non-root read-only pods, a PDB and Service that select the pods, and the
database Secret the operator creates."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cds_service import create_app
from cds_service.auth import load_trusted_issuers
from cds_service.config import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
CNPG_SCHEMA = ROOT / "deploy" / "schemas" / "cnpg-cluster-v1.30.0.json"
K8S_VERSION = "1.33.0"


def _docs() -> list[dict]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _one(kind: str) -> dict:
    found = [d for d in _docs() if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def _strict(schema):
    """Like kubeconform -strict: an object with declared properties accepts no others."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@pytest.mark.parametrize("doc", _docs(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_object_is_valid_against_its_schema(doc):
    if doc["apiVersion"] == "postgresql.cnpg.io/v1":
        schema = _strict(json.loads(CNPG_SCHEMA.read_text()))
        jsonschema.validate(doc, schema, cls=jsonschema.Draft7Validator)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_strict_validators_reject_a_misspelt_field():
    deployment = _one("Deployment")
    bad = json.loads(json.dumps(deployment))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    cluster = json.loads(json.dumps(_one("Cluster")))
    cluster["spec"]["instance"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cluster, _strict(json.loads(CNPG_SCHEMA.read_text())))


def test_kustomization_lists_every_manifest():
    listed = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")


def _container(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def _mib(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()
    return int(number) * (1024 if unit == "Gi" else 1)


def test_two_replicas_with_probes_on_the_apps_health_routes():
    deployment = _one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    container = _container(deployment)
    routes = {r.rule for r in create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:"}).url_map.iter_rules()}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in routes
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in routes
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_memory_is_sized_from_the_measured_peak_rss_per_worker():
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    peak_mb = int(re.search(r"Round 4: .*peak (\d+) MB", results).group(1))
    config = _one("ConfigMap")["data"]
    workers = int(config["CDS_WORKERS"])
    resources = _container(_one("Deployment"))["resources"]
    limit, request = _mib(resources["limits"]["memory"]), _mib(resources["requests"]["memory"])
    assert limit >= workers * peak_mb * 1.2  # every worker at its peak, with headroom
    assert request >= workers * 0.75 * peak_mb and request <= limit


def test_pods_run_as_non_root_with_a_read_only_root_filesystem():
    pod = _one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    image_user = re.search(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.M).group(1)
    assert pod["securityContext"]["runAsUser"] == int(image_user)  # the image's user owns what it must
    for container in pod["containers"] + pod.get("initContainers", []):
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert "/tmp" in mounts  # gunicorn's worker heartbeat files
    assert _one("ConfigMap")["data"]["PROMETHEUS_MULTIPROC_DIR"] in mounts


def test_pdb_and_service_select_the_pods():
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    for selector in (_one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"], _one("Service")["spec"]["selector"]):
        assert selector.items() <= labels.items()
    assert _one("PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_configuration_comes_from_the_configmap_and_the_database_url_from_the_operators_secret():
    config = _one("ConfigMap")["data"]
    unknown = {k for k in config if k.startswith("CDS_")} - set(DEFAULTS)
    assert not unknown, f"not configuration keys: {unknown}"
    assert load_trusted_issuers(json.loads(config["trusted-issuers.json"]))
    pod = _one("Deployment")["spec"]["template"]["spec"]
    cluster = _one("Cluster")["metadata"]["name"]
    for container in pod["containers"] + pod["initContainers"]:
        env = {e["name"]: e for e in container.get("env", [])}
        assert env["CDS_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": f"{cluster}-app", "key": "uri"}
    refs = {r.get("configMapRef", r.get("secretRef"))["name"] for r in pod["containers"][0]["envFrom"]}
    assert refs == {"mg-cds-config", "mg-cds-secrets"}


def test_the_init_containers_command_upgrades_the_schema(tmp_path):
    command = _one("Deployment")["spec"]["template"]["spec"]["initContainers"][0]["command"]
    assert command[:2] == ["python", "-m"]
    done = subprocess.run([sys.executable, *command[1:], "--db", str(tmp_path / "db.sqlite3")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    from cds_service.storage import SCHEMA_VERSION
    assert f"schema version 0 -> {SCHEMA_VERSION}" in done.stdout and "RuntimeWarning" not in done.stderr
