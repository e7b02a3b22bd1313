"""The shape of deploy/k8s and of the image, read from the files (no kubectl, no Docker).

``bash deploy/k8s/validate.sh`` validates the rendered overlays against the Kubernetes schemas;
these tests check what a schema cannot: the design (who may talk to whom, the NATS cluster, the
probes and limits) and the Dockerfile.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.unit.test_deploy_settings import APIS, K8S, PROCESSES, REPO, _object, render_files

BASE = render_files(K8S / "base")
WORKLOADS = [d for d in BASE if d["kind"] in ("Deployment", "StatefulSet")]


def _pods() -> list[tuple[str, dict[str, Any]]]:
    return [(w["metadata"]["name"], w["spec"]["template"]["spec"]) for w in WORKLOADS]


def test_one_deployment_per_process_and_the_nats_statefulset() -> None:
    assert sorted(d["metadata"]["name"] for d in BASE if d["kind"] == "Deployment") == sorted(PROCESSES)
    assert [d["metadata"]["name"] for d in BASE if d["kind"] == "StatefulSet"] == ["nats"]
    for name in PROCESSES:
        (c,) = _object(BASE, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        assert c["image"] == "portability-broker"


@pytest.mark.parametrize(("name", "pod"), _pods(), ids=[n for n, _ in _pods()])
def test_non_root_and_locked_down(name: str, pod: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
        res = c["resources"]
        assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"]), c["name"]


def test_probes() -> None:
    for name in APIS:
        (c,) = _object(BASE, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # the worker has no HTTP: no probe, and the reason is written down beside it
    (w,) = _object(BASE, "Deployment", "transfer-worker")["spec"]["template"]["spec"]["containers"]
    assert "livenessProbe" not in w and "readinessProbe" not in w
    assert "no /healthz or /readyz" in (K8S / "base" / "transfer-worker.yaml").read_text("utf-8")


def test_services_pdbs_and_autoscaler() -> None:
    services = {d["metadata"]["name"]: d for d in BASE if d["kind"] == "Service"}
    assert set(APIS) <= set(services)
    for name in APIS:
        assert services[name]["spec"]["selector"] == {"app.kubernetes.io/name": name}
    pdbs = {d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for d in BASE if d["kind"] == "PodDisruptionBudget"}
    assert pdbs == {*PROCESSES, "nats"}
    (hpa,) = [d for d in BASE if d["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "transfer-worker"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "replicas" not in _object(BASE, "Deployment", "transfer-worker")["spec"], "the HPA owns the worker's replicas"


def test_nats_cluster() -> None:
    sts = _object(BASE, "StatefulSet", "nats")
    assert sts["spec"]["replicas"] == 3
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "nats:2.10-alpine"
    assert {p["containerPort"] for p in c["ports"]} == {4222, 6222, 8222}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["data"]
    conf = _object(BASE, "ConfigMap", "nats-config")["data"]["nats.conf"]
    store = re.search(r"store_dir:\s*(\S+)", conf)
    assert store and store.group(1).startswith(mounts["data"] + "/"), "JetStream must store on the claim"
    headless = _object(BASE, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    routes = re.findall(r"nats://([\w.-]+):6222", conf)
    assert routes == [f"nats-{i}.{headless['metadata']['name']}" for i in range(3)]
    assert re.search(r"^http:\s*\S+:8222$", conf, re.M)


def _policy(name: str) -> dict[str, Any]:
    return _object(BASE, "NetworkPolicy", name)["spec"]


def _ports(rules: list[dict[str, Any]]) -> set[int]:
    return {p["port"] for r in rules for p in r.get("ports", [])}


def test_network_policies() -> None:
    policies = [d for d in BASE if d["kind"] == "NetworkPolicy"]
    deny = _policy("default-deny-all")
    assert deny["podSelector"] == {} and sorted(deny["policyTypes"]) == ["Egress", "Ingress"] and "ingress" not in deny and "egress" not in deny
    assert _ports(_policy("allow-dns-egress")["egress"]) == {53}
    assert _ports(_policy("api-ingress-from-ingress-controller")["ingress"]) == {8080}
    assert _ports(_policy("broker-egress-nats-postgres")["egress"]) == {4222, 5432}
    https = _policy("holders-recipients-egress-https")
    assert _ports(https["egress"]) == {443}
    assert set(https["podSelector"]["matchExpressions"][0]["values"]) == {"consent", "transfer-worker"}
    blocks = [t["ipBlock"] for r in https["egress"] for t in r["to"]]
    assert all("169.254.0.0/16" in b["except"] for b in blocks if b["cidr"] == "0.0.0.0/0"), "no cloud metadata endpoint"
    assert _ports(_policy("nats-ingress")["ingress"]) == {4222, 6222, 8222}
    assert _ports(_policy("nats-egress-routes")["egress"]) == {6222}
    # nothing else opens a port
    assert {p["metadata"]["name"] for p in policies} == {
        "default-deny-all", "allow-dns-egress", "api-ingress-from-ingress-controller", "broker-egress-nats-postgres",
        "holders-recipients-egress-https", "nats-ingress", "nats-egress-routes"}


def test_overlays() -> None:
    for overlay, environment in (("dev", "development"), ("production", "production")):
        text = (K8S / "overlays" / overlay / "kustomization.yaml").read_text("utf-8")
        assert f"ENVIRONMENT={environment}" in text
    prod = (K8S / "overlays" / "production" / "kustomization.yaml").read_text("utf-8")
    assert prod.count("behavior: replace") >= 4 and "secrets/broker-secrets.env" in prod
    ignore = (K8S / "overlays" / "production" / "secrets" / ".gitignore").read_text("utf-8").split()
    assert ignore[ignore.index("*") :] == ["*", "!.gitignore", "!README.md"]


def test_dockerfile() -> None:
    text = (REPO / "Dockerfile").read_text("utf-8")
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(f == "python:3.11-slim" for f in froms)
    assert re.search(r"pip install \.\s*$", text, re.M), "pip install . without extras"
    assert "[test]" not in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["python", "-m"\]$', text, re.M)
    ignored = (REPO / ".dockerignore").read_text("utf-8").split()
    assert {".git", ".venv", "var", "tests"} <= set(ignored)
