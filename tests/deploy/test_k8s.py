"""deploy/k8s/: every manifest against the Kubernetes schemas (kubernetes-validate, which bundles
them), and the manifests against the service they run: probe paths and ports, the AFM_* variables,
and the drain timings, read from service/settings.py and the service's own routes.

KServe's InferenceService is a custom resource that kubernetes-validate has no schema for; its
shape is checked here field by field instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.api import router
from service.settings import Settings
from service.workers import GRACEFUL_SHUTDOWN_SECONDS

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBERNETES_VERSION = "1.37"
CUSTOM_GROUPS = ("serving.kserve.io/",)
MARGIN_SECONDS = 5
"""Time left between the end of the slowest shutdown and the SIGKILL at the grace period's end."""

Manifest = dict[str, Any]


def load(name: str) -> list[Manifest]:
    with (K8S / name).open() as stream:
        return [document for document in yaml.safe_load_all(stream) if document]


def all_manifests() -> Iterator[tuple[str, Manifest]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            for manifest in load(path.name):
                yield path.name, manifest


def one(kind: str, name: str) -> Manifest:
    found = [m for _, m in all_manifests() if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} manifests"
    return found[0]


def pod_of(manifest: Manifest) -> Manifest:
    if manifest["kind"] == "InferenceService":
        pod: Manifest = manifest["spec"]["predictor"]
    else:
        pod = manifest["spec"]["template"]["spec"]
    return pod


def api_pods() -> list[tuple[str, Manifest]]:
    """The pod specs that run the serving image: the Deployment's and KServe's predictor."""
    return [
        ("Deployment/afm-api", pod_of(one("Deployment", "afm-api"))),
        ("InferenceService/afm", pod_of(one("InferenceService", "afm"))),
    ]


def literal_env(container: Manifest) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def settings_from(container: Manifest, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The service's settings as this container's environment sets them."""
    for name in list(Settings.model_fields):
        monkeypatch.delenv(f"AFM_{name.upper()}", raising=False)
    for name, value in literal_env(container).items():
        monkeypatch.setenv(name, value)
    return Settings()


def container_port(container: Manifest, port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    ports = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    assert len(ports) == 1, f"no container port named {port!r}"
    return int(ports[0])


@pytest.mark.parametrize(
    ("source", "manifest"),
    list(all_manifests()),
    ids=[f"{source}:{m['kind']}/{m['metadata']['name']}" for source, m in all_manifests()],
)
def test_manifest_is_valid_against_the_kubernetes_schemas(source: str, manifest: Manifest) -> None:
    if manifest["apiVersion"].startswith(CUSTOM_GROUPS):
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        return
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_validation_refuses_a_field_kubernetes_does_not_know() -> None:
    deployment = one("Deployment", "afm-api")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_the_volumes_and_the_api() -> None:
    (kustomization,) = load("kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["resources"] == ["storage.yaml", "api.yaml"]
    assert all((K8S / name).is_file() for name in kustomization["resources"])


@pytest.mark.parametrize(("what", "pod"), api_pods(), ids=[what for what, _ in api_pods()])
def test_probes_and_ports_are_the_services(
    what: str, pod: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    (container,) = pod["containers"]
    settings = settings_from(container, monkeypatch)
    routes = {getattr(route, "path", None) for route in router.routes}
    assert settings.host == "0.0.0.0"
    liveness, readiness = container["livenessProbe"], container["readinessProbe"]
    assert liveness["httpGet"]["path"] == "/healthz" and "/healthz" in routes
    assert readiness["httpGet"]["path"] == "/readyz" and "/readyz" in routes
    for probe in (liveness, readiness, container.get("startupProbe")):
        if probe is not None:
            assert container_port(container, probe["httpGet"]["port"]) == settings.port, what


def test_the_service_sends_to_the_api_port(monkeypatch: pytest.MonkeyPatch) -> None:
    deployment, service = one("Deployment", "afm-api"), one("Service", "afm-api")
    (container,) = pod_of(deployment)["containers"]
    settings = settings_from(container, monkeypatch)
    (port,) = service["spec"]["ports"]
    assert container_port(container, port["targetPort"]) == settings.port
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    budget = one("PodDisruptionBudget", "afm-api")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    autoscaler = one("HorizontalPodAutoscaler", "afm-api")
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "afm-api")
    assert autoscaler["spec"]["minReplicas"] > budget["spec"]["maxUnavailable"]
    assert container["resources"]["requests"]["cpu"], "CPU utilisation needs a CPU request"


@pytest.mark.parametrize(("what", "pod"), api_pods(), ids=[what for what, _ in api_pods()])
def test_environment_names_settings_of_the_service(
    what: str, pod: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    (container,) = pod["containers"]
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), names
    unknown = [n for n in names if n.removeprefix("AFM_").lower() not in Settings.model_fields]
    assert all(n.startswith("AFM_") for n in names) and not unknown, (what, unknown)
    settings = settings_from(container, monkeypatch)  # every value parses as the service reads it
    assert settings.workers == 1, "one process per pod: the default counts the node's cores"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    models = volumes[mounts[str(settings.models_dir)]]["persistentVolumeClaim"]
    assert models == {"claimName": "afm-models", "readOnly": True}


@pytest.mark.parametrize(("what", "pod"), api_pods(), ids=[what for what, _ in api_pods()])
def test_grace_period_covers_deregistration_drain_and_shutdown(
    what: str, pod: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    (container,) = pod["containers"]
    settings = settings_from(container, monkeypatch)
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 1, "endpoints and proxies need time to stop sending before SIGTERM"
    assert settings.drain_seconds >= 1, "keep-alive clients need time to reconnect elsewhere"
    assert settings.request_deadline_seconds <= GRACEFUL_SHUTDOWN_SECONDS
    needed = pre_stop + settings.drain_seconds + GRACEFUL_SHUTDOWN_SECONDS + MARGIN_SECONDS
    assert pod["terminationGracePeriodSeconds"] >= needed, what
    readiness = container["readinessProbe"]
    assert readiness["periodSeconds"] * readiness.get("failureThreshold", 3) <= (
        settings.drain_seconds
    ), "a draining pod must fail readiness within the drain"


def test_the_inference_service_runs_the_serving_image_as_the_deployment_does() -> None:
    service = one("InferenceService", "afm")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == (
        "RawDeployment"
    )
    predictor = service["spec"]["predictor"]
    assert predictor["minReplicas"] >= 2 and predictor["maxReplicas"] >= predictor["minReplicas"]
    (container,) = predictor["containers"]
    (api,) = pod_of(one("Deployment", "afm-api"))["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"] == api["image"]
    assert container["ports"] == api["ports"]
    assert literal_env(container).items() <= literal_env(api).items()
    # The parts of the pod that the Kubernetes schemas can check, checked as in a Deployment.
    pod = {"containers": predictor["containers"], "volumes": predictor["volumes"]}
    template = {"metadata": {"labels": {"app": "afm"}}, "spec": pod}
    wrapped = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "afm"},
        "spec": {"selector": {"matchLabels": {"app": "afm"}}, "template": template},
    }
    kubernetes_validate.validate(wrapped, KUBERNETES_VERSION, strict=True)


def test_training_jobs_publish_into_the_models_volume() -> None:
    claims = {m["metadata"]["name"] for m in load("storage.yaml")}
    for name in ("afm-train", "afm-train-ddp"):
        pod = pod_of(one("Job", name))
        (container,) = pod["containers"]
        assert container["image"].startswith("afm-train:")
        args = container["args"]
        out = args[args.index("--out") + 1]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"] if "persistentVolumeClaim" in v}
        assert volumes[mounts[out]]["persistentVolumeClaim"]["claimName"] == "afm-models"
        assert {v["persistentVolumeClaim"]["claimName"] for v in volumes.values()} <= claims
    (trainer,) = pod_of(one("Job", "afm-train"))["containers"]
    assert trainer["args"][0] == "train", "the image's entry point is `python -m training`"


def test_distributed_training_is_an_indexed_job_of_torchrun_nodes() -> None:
    job, headless = one("Job", "afm-train-ddp"), one("Service", "afm-train-ddp")
    spec, pod = job["spec"], pod_of(job)
    (container,) = pod["containers"]
    assert spec["completionMode"] == "Indexed"
    assert container["command"] == ["torchrun"]
    options = dict(a.removeprefix("--").split("=", 1) for a in container["args"] if "=" in a)
    assert int(options["nnodes"]) == spec["completions"] == spec["parallelism"]
    assert options["rdzv-backend"] == "c10d"
    host, port = options["rdzv-endpoint"].split(":")
    assert host == f"{job['metadata']['name']}-0.{pod['subdomain']}"
    assert pod["subdomain"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    assert int(port) in {p["port"] for p in headless["spec"]["ports"]}
    module = container["args"].index("-m")
    assert container["args"][module + 1 : module + 3] == ["training", "train"]
