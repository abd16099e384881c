"""Deploy: the bento archive and its image, the Kubernetes manifests, and monitoring with the real
tools: promtool for the alert rules, a real prometheus scraping a real server for the series and
every dashboard query."""

import contextlib
import glob
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import tomllib

import psutil
import pytest
import requests
import yaml

from conftest import ROOT
from load_tests.server import free_port, stop, wait_ready
from modelspec import sha256_file
from service.guard import Settings

DEPLOY = os.path.join(ROOT, "deploy")
REQUEST_TIMEOUT_SECONDS = Settings().request_timeout_s  # the guard's default (MODELSERVE_REQUEST_TIMEOUT_S)
CLASSIFY_BODY = {"images": [[[0.0] * 28] * 28], "model": "cnn"}
SENTIMENT_BODY = {"texts": ["很好"]}


def run(command: list[str], timeout: float, **kwargs) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{' '.join(command)} exited with {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def requirement_name(line: str) -> str:
    return re.split(r"[\s<>=!~;\[]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


# --- the bento ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bento(smoke_store, tmp_path_factory) -> str:
    """`make bento` on the test store (setup is the test's own venv), its archive unpacked."""
    folder = tmp_path_factory.mktemp("bento")
    archive = folder / "modelserve.bento"
    run(["make", "-o", "setup", "bento", f"VENV={sys.prefix}", f"BENTO_ARCHIVE={archive}"], timeout=600, cwd=ROOT)
    unpacked = folder / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    return str(unpacked)


def test_bentofile_ships_every_model_of_modelspec():
    from modelspec import EXPORT_ORDER

    with open(os.path.join(ROOT, "bentofile.yaml"), encoding="utf-8") as f:
        models = yaml.safe_load(f)["models"]
    assert models == [f"{name}:latest" for name in EXPORT_ORDER]


def test_bento_has_the_service_code_and_nothing_from_training(bento):
    with open(os.path.join(bento, "bento.yaml")) as f:
        assert yaml.safe_load(f)["service"] == "service.service:ModelServe"
    for path in ("src/service/service.py", "src/service/runtime.py", "src/modelspec/__init__.py", "src/bentofile.yaml"):
        assert os.path.isfile(os.path.join(bento, path)), path
    assert not os.path.exists(os.path.join(bento, "src/export"))
    assert not os.path.exists(os.path.join(bento, "src/models"))


def test_bento_requirements_are_the_serving_ones_without_torch(bento):
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        serving = {requirement_name(r) for r in tomllib.load(f)["project"]["dependencies"]}
    with open(os.path.join(bento, "env/python/requirements.txt")) as f:
        lines = [line for line in f.read().splitlines() if line.strip() and not line.startswith("#")]
    assert {requirement_name(line) for line in lines} == serving
    assert not any("torch" in line for line in lines)


def test_bento_holds_every_stored_model_with_matching_sha256(bento, smoke_store):
    import bentoml

    with open(os.path.join(bento, "bento.yaml")) as f:
        tags = {model["tag"] for model in yaml.safe_load(f)["models"]}
    assert tags == {result.tag for result in smoke_store.values()}
    for result in smoke_store.values():
        name, version = result.tag.split(":")
        folder = os.path.join(bento, "models", name, version)
        with open(os.path.join(folder, "model.yaml")) as f:
            onnx_files = yaml.safe_load(f)["metadata"]["onnx_files"]
        assert onnx_files == bentoml.models.get(result.tag).info.metadata["onnx_files"]
        for filename, info in onnx_files.items():
            assert sha256_file(os.path.join(folder, filename)) == info["sha256"], f"{result.tag} {filename}"


def test_bento_dockerfile_installs_the_serving_requirements(bento):
    with open(os.path.join(bento, "env/docker/Dockerfile")) as f:
        dockerfile = f.read()
    assert "pip install -r $BENTO_PATH/env/python/requirements.txt" in dockerfile
    assert "torch" not in dockerfile
    assert re.search(r"^ENV BENTOML_DO_NOT_TRACK=", dockerfile, flags=re.M)
    assert re.search(r"^EXPOSE 3000$", dockerfile, flags=re.M)
    assert re.search(r"^COPY .* \. \./$", dockerfile, flags=re.M)  # the bento, with its models


# --- the container --------------------------------------------------------------------------
# No Docker engine on this machine: buildah builds the bento's own Dockerfile (chroot isolation,
# no daemon) and runs the image. Docker Hub is out of reach here, so its base image is replaced
# by a stand-in built from Debian packages: Debian bookworm's Python 3.11, plus this machine's CA
# bundle so that pip and uv reach PyPI through the network in front of it.

DOCKERFILE_BASE = "FROM python:3.11-slim AS base-container"
STAND_IN_BASE = "localhost/modelserve-test-base:bookworm-py3.11"
STAND_IN_CONTAINERFILE = """\
FROM scratch
ADD rootfs.tar /
COPY host-ca.pem /etc/ssl/host-ca.pem
ENV SSL_CERT_FILE=/etc/ssl/host-ca.pem PIP_CERT=/etc/ssl/host-ca.pem REQUESTS_CA_BUNDLE=/etc/ssl/host-ca.pem \\
    PIP_BREAK_SYSTEM_PACKAGES=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y -q --no-install-recommends python3 python3-pip python3-venv \\
    && ln -sf /usr/bin/python3 /usr/local/bin/python && rm -rf /var/lib/apt/lists/*
"""
IMAGE = "localhost/modelserve:test"


def image_exists(name: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", name], capture_output=True).returncode == 0


def debian_mirror() -> str:
    """The mirror this machine's apt uses for Debian's main archive (deb822 or one-line sources)."""
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")) + ["/etc/apt/sources.list"]:
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        for deb822, one_line in re.findall(r"^URIs:\s*(\S+)|^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, flags=re.M):
            uri = deb822 or one_line
            if uri.rstrip("/").endswith("/debian"):
                return uri
    pytest.fail("no Debian mirror in /etc/apt/sources.list[.d]: debootstrap needs one")


def build_stand_in_base(workdir: str) -> None:
    rootfs = os.path.join(workdir, "rootfs")
    run(["debootstrap", "--variant=minbase", "bookworm", rootfs, debian_mirror()], timeout=900)
    context = os.path.join(workdir, "base")
    os.makedirs(context)
    run(["tar", "-C", rootfs, "-cf", os.path.join(context, "rootfs.tar"), "."], timeout=300)
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", os.path.join(context, "host-ca.pem"))
    with open(os.path.join(context, "Containerfile"), "w") as f:
        f.write(STAND_IN_CONTAINERFILE)
    run(["buildah", "bud", "--isolation", "chroot", "-t", STAND_IN_BASE, context], timeout=900)


def stop_container(process: subprocess.Popen) -> None:
    """SIGTERM to the bentoml server in the container first: `buildah run` ends its child abruptly,
    which would leave the server's workers (their own sessions) running."""
    for found in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(found.pid) == process.pid and "bentoml serve" in " ".join(found.info["cmdline"] or []):
                found.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    stop(process)


def test_the_image_built_from_the_bento_serves(bento, smoke_store, tmp_path):
    for tool in ("buildah", "debootstrap"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} not found: apt-get install -y buildah debootstrap (.ci/run installs them)")
    if not image_exists(STAND_IN_BASE):
        build_stand_in_base(str(tmp_path))
    context = shutil.copytree(bento, tmp_path / "context")
    dockerfile = context / "env/docker/Dockerfile"
    text = dockerfile.read_text()
    assert DOCKERFILE_BASE in text, "the bento's base image changed: update the stand-in"
    dockerfile.write_text(text.replace(DOCKERFILE_BASE, f"FROM {STAND_IN_BASE} AS base-container"))
    run(["buildah", "bud", "--isolation", "chroot", "-f", str(dockerfile), "-t", IMAGE, str(context)], timeout=1500)

    container = run(["buildah", "from", IMAGE], timeout=120).strip()
    port = free_port()
    log = open(tmp_path / "container.log", "wb")
    process = subprocess.Popen(
        ["buildah", "run", "--isolation", "chroot", container, "--",
         "/home/bentoml/bento/env/docker/entrypoint.sh", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    process.log_path = log.name
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, url, seconds=180)
        classified = requests.post(f"{url}/classify", json=CLASSIFY_BODY, timeout=30)
        assert classified.status_code == 200, classified.text
        assert f"cnn:{classified.json()['version']}" == smoke_store["cnn"].tag
        sentiment = requests.post(f"{url}/sentiment", json=SENTIMENT_BODY, timeout=30)
        assert sentiment.status_code == 200, sentiment.text
        assert f"sentiment:{sentiment.json()['version']}" == smoke_store["sentiment"].tag
    finally:
        stop_container(process)
        subprocess.run(["buildah", "rm", container], capture_output=True)
        subprocess.run(["buildah", "rmi", IMAGE], capture_output=True)


# --- Kubernetes -----------------------------------------------------------------------------

def manifests() -> dict[str, dict]:
    """{kind: manifest} of deploy/k8s/*.yaml."""
    found = {}
    for path in sorted(glob.glob(os.path.join(DEPLOY, "k8s", "*.yaml"))):
        with open(path) as f:
            for document in yaml.safe_load_all(f):
                found[document["kind"]] = document
    return found


@pytest.mark.parametrize("version", ["1.27", "1.37"])
def test_manifests_match_the_kubernetes_schemas(version):
    from kubernetes_validate import utils

    built_in = {kind: m for kind, m in manifests().items() if kind != "ServiceMonitor"}
    assert set(built_in) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    for kind, manifest in built_in.items():
        try:
            utils.validate(manifest, version, strict=True)
        except utils.ValidationError as e:
            pytest.fail(f"{kind}: {e}")


def test_manifests_fit_together():
    m = manifests()
    deployment, service, hpa, monitor = m["Deployment"], m["Service"], m["HorizontalPodAutoscaler"], m["ServiceMonitor"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 3000}
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]

    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    assert pod["spec"]["terminationGracePeriodSeconds"] > int(sleep[1]) + REQUEST_TIMEOUT_SECONDS

    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    assert annotations["prometheus.io/path"] == "/metrics"

    # The ServiceMonitor is a CRD (no schema offline): it must select the Service and name its port.
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports and endpoint["path"] == "/metrics"
    assert monitor["metadata"]["name"] == service["metadata"]["name"] == "modelserve"  # the job label


# --- monitoring -----------------------------------------------------------------------------

RULES = os.path.join(DEPLOY, "prometheus", "rules.yml")
DASHBOARD = os.path.join(DEPLOY, "grafana", "modelserve-dashboard.json")


def prometheus_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: apt-get install -y prometheus (Debian's package; .ci/run installs it)")
    return path


def test_alert_rules_pass_promtool():
    promtool = prometheus_tool("promtool")
    run([promtool, "check", "rules", RULES], timeout=60)
    run([promtool, "test", "rules", "rules.test.yml"], timeout=120, cwd=os.path.dirname(RULES))


def dashboard_queries() -> dict[str, list[str]]:
    """{panel title: [expr, ...]} of the Grafana dashboard."""
    with open(DASHBOARD) as f:
        panels = json.load(f)["panels"]
    return {panel["title"]: [target["expr"] for target in panel["targets"]] for panel in panels}


@contextlib.contextmanager
def running_prometheus(target: str, folder):
    """A prometheus of our own on a free loopback port, scraping `target` every second."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [RULES],
        "scrape_configs": [{"job_name": "modelserve", "static_configs": [{"targets": [target]}]}],
    }
    config_path = folder / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    log = open(folder / "prometheus.log", "wb")
    process = subprocess.Popen(
        [prometheus_tool("prometheus"), f"--config.file={config_path}", f"--storage.tsdb.path={folder / 'data'}",
         f"--web.listen-address={url.removeprefix('http://')}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    process.log_path = log.name
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, open(log.name).read()[-3000:]
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "prometheus was not ready within 60 s:\n" + open(log.name).read()[-3000:]
            time.sleep(0.2)
        yield url
    finally:
        stop(process)


def query(prometheus: str, expr: str) -> list[dict]:
    answer = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", f"{expr}: {answer}"
    return answer["data"]["result"]


def values_by(results: list[dict], label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in results}


def served(values: dict[str, float], *keys: str, at_least: float = 0.0) -> bool:
    return all(math.isfinite(values.get(k, math.nan)) and values[k] > at_least for k in keys)


def test_prometheus_scrapes_the_series_and_answers_every_dashboard_query(server, tmp_path):
    queries = dashboard_queries()
    (request_rate,) = queries["Requests per second by endpoint and status"]
    p95 = queries["Latency p95 / p99 by endpoint"][0]
    compute_mean, compute_p95 = queries["ONNX Runtime compute time per batch, by model"]
    (rows_per_batch,) = queries["Rows per executed batch, by model"]
    assert "histogram_quantile(0.95" in p95 and "bentoml_service_request_duration_seconds_bucket" in p95

    with running_prometheus(server.removeprefix("http://"), tmp_path) as prometheus:
        checks, without_data = {}, []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for _ in range(3):
                requests.post(f"{server}/classify", json=CLASSIFY_BODY, timeout=30).raise_for_status()
                requests.post(f"{server}/sentiment", json=SENTIMENT_BODY, timeout=30).raise_for_status()
            assert requests.post(f"{server}/sentiment", json={"texts": []}, timeout=30).status_code == 400
            rates = {f"{r['metric']['endpoint']} {r['metric']['http_response_code']}": float(r["value"][1])
                     for r in query(prometheus, request_rate)}
            rules = requests.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
            # Every panel's query parses (query() asserts) and finds its series: a misspelt name finds none.
            without_data = [f"{title}: {expr}" for title, exprs in queries.items() for expr in exprs if not query(prometheus, expr)]
            checks = {
                "request rate": served(rates, "/classify 200", "/sentiment 200"),
                "p95 latency": served(values_by(query(prometheus, p95), "endpoint"), "/classify", "/sentiment"),
                "compute mean": served(values_by(query(prometheus, compute_mean), "model"), "cnn", "sentiment"),
                "compute p95": served(values_by(query(prometheus, compute_p95), "model"), "cnn", "sentiment"),
                "rows per batch": served(values_by(query(prometheus, rows_per_batch), "model"), "cnn", "sentiment", at_least=0.99),
                "alert rules evaluated": bool(rules) and all(r["health"] == "ok" for g in rules for r in g["rules"]),
                "every dashboard query has data": not without_data,
            }
            if all(checks.values()):
                break
            time.sleep(1)
        missing = [name for name, ok in checks.items() if not ok]
        assert not missing, f"not seen within 120 s: {missing}; dashboard queries without data: {without_data}"
