"""Every kustomize overlay renders and validates offline, in strict mode, against the
Kubernetes schemas (kubernetes-validate), and has the properties the deployment relies on."""

from __future__ import annotations

import pytest

from .manifests import OVERLAYS, by_kind, pod_spec, render, render_text

APPS = ("gateway", "retrieval", "ranking", "feature-store")
AUTOSCALED = {"gateway", "retrieval", "ranking"}
REDIS_CLIENTS = {"gateway", "feature-store", "retrieval", "ranking", "archiver", "vidrec-bundle",
                 "vidrec-retrain"}


def test_overlays_exist() -> None:
    assert {"cpu", "gpu", "external-redis"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly(overlay: str) -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import (
        InvalidSchemaError,
        SchemaNotFoundError,
        ValidationError,
    )

    docs = render(overlay)
    assert len(docs) >= 15
    version = kubernetes_validate.latest_version()
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except (ValidationError, InvalidSchemaError, SchemaNotFoundError) as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_locked_down(overlay: str) -> None:
    for doc in render(overlay):
        spec = pod_spec(doc)
        if spec is None:
            continue
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec.get("automountServiceAccountToken") is False, name
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert {"requests", "limits"} <= set(c["resources"]), (name, c["name"])
        if doc["kind"] in ("Deployment", "Job"):  # python writes temp files under /tmp
            mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscalers_and_disruption_budgets_cover_the_services(overlay: str) -> None:
    docs = render(overlay)
    deployments = by_kind(docs, "Deployment")
    assert set(APPS) <= set(deployments)
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == AUTOSCALED
    for hpa in hpas.values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
        assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    pdbs = by_kind(docs, "PodDisruptionBudget")
    for app in APPS:
        labels = deployments[app]["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in pdbs.values()
                    if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert covering, f"no PodDisruptionBudget selects {app}"
        replicas = deployments[app]["spec"]["replicas"]
        assert covering[0]["spec"]["minAvailable"] < replicas, app


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_referenced_never_committed(overlay: str) -> None:
    docs = render(overlay)
    assert not by_kind(docs, "Secret"), "secret values must not be in the manifests"
    refs = set()
    for doc in docs:
        spec = pod_spec(doc)
        for c in (spec or {}).get("containers", []):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))
    assert refs == {("vidrec-secrets", "admin-token"), ("vidrec-secrets", "redis-password")}
    assert "change-me" not in render_text(overlay)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_redis_clients_reach_redis(overlay: str) -> None:
    docs = render(overlay)
    labelled = {d["metadata"]["name"] for d in docs if pod_spec(d) is not None and
                (d["spec"].get("template") or d["spec"]["jobTemplate"]["spec"]["template"])
                ["metadata"]["labels"].get("vidrec.io/redis-client") == "true"}
    assert labelled == REDIS_CLIENTS
    policies = by_kind(docs, "NetworkPolicy")
    if overlay == "external-redis":
        assert "redis" not in by_kind(docs, "StatefulSet")
        return
    redis = by_kind(docs, "StatefulSet")["redis"]
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    pod_labels = redis["spec"]["template"]["metadata"]["labels"]
    (policy,) = [p for p in policies.values()
                 if p["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"vidrec.io/redis-client": "true"}}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_bundle_volume_is_shared_read_only(overlay: str) -> None:
    docs = render(overlay)
    pvcs = by_kind(docs, "PersistentVolumeClaim")
    assert set(pvcs) == {"vidrec-artifacts", "vidrec-event-log"}
    assert all(p["spec"]["accessModes"] == ["ReadWriteMany"] for p in pvcs.values())
    for name, dep in by_kind(docs, "Deployment").items():
        spec = pod_spec(dep)
        claims = {v["name"]: v["persistentVolumeClaim"] for v in spec["volumes"]
                  if "persistentVolumeClaim" in v}
        (vol, claim), = claims.items()
        if name == "archiver":  # the one writer of the event log; needs no bundle
            assert claim["claimName"] == "vidrec-event-log" and not claim.get("readOnly")
            assert not spec.get("initContainers")
            continue
        assert claim["claimName"] == "vidrec-artifacts" and claim["readOnly"], name
        assert [c["name"] for c in spec["initContainers"]] == ["wait-for-bundle"], name
    job = by_kind(docs, "Job")["vidrec-bundle"]
    (claim,) = [v["persistentVolumeClaim"] for v in pod_spec(job)["volumes"]
                if "persistentVolumeClaim" in v]
    assert claim["claimName"] == "vidrec-artifacts" and not claim.get("readOnly")
    # retrain writes a bundle and reads the log
    cron = by_kind(docs, "CronJob")["vidrec-retrain"]
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]
              for v in pod_spec(cron)["volumes"] if "persistentVolumeClaim" in v}
    assert not claims["vidrec-artifacts"].get("readOnly")
    assert claims["vidrec-event-log"]["readOnly"] is True


def test_gpu_overlay_puts_retrieval_and_ranking_on_gpus() -> None:
    docs = render("gpu")
    deployments = by_kind(docs, "Deployment")
    for name in ("retrieval", "ranking"):
        spec = pod_spec(deployments[name])
        (c,) = spec["containers"]
        assert c["image"].split(":")[0] == "vidrec-gpu", name
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1, name
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, name
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
            spec["tolerations"], name
        assert {"name": "VIDREC_USE_GPU", "value": "true"} in c["env"], name
    for name in ("gateway", "feature-store"):
        (c,) = pod_spec(deployments[name])["containers"]
        assert c["image"].split(":")[0] == "vidrec" and "nvidia.com/gpu" not in \
            c["resources"]["limits"], name
    cpu = by_kind(render("cpu"), "Deployment")
    for name in ("retrieval", "ranking"):
        (c,) = pod_spec(cpu[name])["containers"]
        assert "nvidia.com/gpu" not in c["resources"]["limits"]
