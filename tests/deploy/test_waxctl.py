"""The waxctl path of k8s/README.md ("Deploy with waxctl"): Bytewax's Helm chart
running the image built by the Dockerfile's ``waxctl`` target.

There is no cluster, Helm, waxctl or Docker daemon here, so, like
tests/deploy/test_deploy.py, the pieces are checked offline:

* k8s/waxctl/values.yaml against the keys chart 0.8.1's templates read (a
  pinned list with its source: tests/deploy/data/waxctl/bytewax-chart-0.8.1.yaml),
  and the parts of the chart's StatefulSet those values feed against the
  Kubernetes schemas;
* the README's commands (docker build, kubectl create secret, waxctl
  dataflow deploy) against the Dockerfile, the values and waxctl 0.12.0's
  flags;
* the Dockerfile's ``waxctl`` stage, statically;
* the layout that stage builds: a fresh virtualenv with the project installed
  from a wheel (not editable) and nothing but its runtime dependencies. The
  file waxctl ships is copied the way the chart copies it and run the way the
  chart runs it (``cd /var/bytewax``, ``python -m bytewax.run
  /var/bytewax/<file>``, the chart's environment plus the values' ``env``),
  two processes joined by the chart's hostfile, against a private mosquitto.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

from driver_stats.settings import PREFIX, Settings
from connectors.mqtt.testing import NOT_FOUND, Mosquitto, find_mosquitto, free_port
from tests.support import stop_process_groups

REPO = Path(__file__).resolve().parents[2]
README = REPO / "k8s" / "README.md"
DOCKERFILE = REPO / "Dockerfile"
VALUES_FILE = REPO / "k8s" / "waxctl" / "values.yaml"
SHIPPED_FILE = REPO / "k8s" / "waxctl" / "driver_stats_dataflow.py"
CHART = yaml.safe_load((REPO / "tests" / "deploy" / "data" / "waxctl" / "bytewax-chart-0.8.1.yaml").read_text())
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SETTING_VARS = {PREFIX + name.upper() for name in Settings.__struct_fields__}
CREDENTIALS = {PREFIX + "MQTT_USERNAME", PREFIX + "MQTT_PASSWORD"}
K8S_VERSIONS = ["1.28.0", "latest"]


# --------------------------------------------------------------------------
# helpers: values, README commands, Dockerfile stages


def load_values() -> dict:
    return yaml.safe_load(VALUES_FILE.read_text())


def keys_not_read_by_chart(values: dict, keys: dict = CHART["values"]) -> list[str]:
    """Paths in ``values`` that no template of the chart reads, or reads differently."""
    problems: list[str] = []

    def walk(node, path: str) -> None:
        if path in keys:
            kind = keys[path]
            if kind == "scalar" and isinstance(node, (dict, list)):
                problems.append(f"{path}: the chart prints it as one value")
            elif kind == "env" and not isinstance(node, dict):
                problems.append(f"{path}: must be a map NAME: value")
            elif isinstance(kind, dict):
                for item in node if isinstance(node, list) else [node]:
                    if not isinstance(item, dict):
                        problems.append(f"{path}: items must be maps")
                        continue
                    problems.extend(f"{path}[].{k}: not read" for k in item if k not in kind["items"])
            return
        if isinstance(node, dict) and (not path or any(k.startswith(path + ".") for k in keys)):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        else:
            problems.append(f"{path}: not read by chart {CHART['chart']['version']}'s templates")

    walk(values, "")
    return problems


def readme_commands() -> list[list[str]]:
    """The commands in the ```sh blocks of the README's waxctl section, one word list each."""
    text = README.read_text()
    assert "\n## Deploy with waxctl\n" in text
    section = text.split("\n## Deploy with waxctl\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def readme_command(*prefix: str) -> list[str]:
    found = [c for c in readme_commands() if tuple(c[: len(prefix)]) == prefix]
    assert len(found) == 1, f"expected one `{' '.join(prefix)}` command in the waxctl section, found {len(found)}"
    return found[0]


def parse_flags(words: list[str], flags: dict[str, list]) -> tuple[list[str], dict[str, list[str]]]:
    """Cobra-style flags (``--long[=v]``, ``--long v``, ``-x v``, ``-xv``): (positionals, {long: [values]})."""
    short = {spec[0]: name for name, spec in flags.items() if spec[0]}
    positionals: list[str] = []
    seen: dict[str, list[str]] = {}
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
        elif word.startswith("-") and len(word) > 1:
            letter, value = word[1], word[2:]
            assert letter in short, f"unknown flag {word}"
            name, eq = short[letter], "=" if value else ""
            value = value.removeprefix("=")
        else:
            positionals.append(word)
            continue
        assert name in flags, f"--{name} is not a flag of waxctl {CHART['waxctl']['version']} dataflow deploy"
        takes_value = flags[name][1]
        if takes_value and not eq:
            assert i < len(words), f"--{name} needs a value"
            value = words[i]
            i += 1
        elif not takes_value and not eq:
            value = "true"
            # `--recovery true` would make "true" the path argument.
            assert i >= len(words) or words[i] not in ("true", "false"), f"write --{name}={words[i]}"
        seen.setdefault(name, []).append(value)
    return positionals, seen


def waxctl_command() -> tuple[list[str], dict[str, str]]:
    words = readme_command("waxctl", "dataflow", "deploy")
    positionals, flags = parse_flags(words[3:], CHART["waxctl"]["deploy_flags"])
    repeated = [name for name, v in flags.items() if len(v) > 1]
    assert not repeated, repeated
    return positionals, {name: v[0] for name, v in flags.items()}


def dockerfile_stages() -> list[dict]:
    """[{name, from, instructions: [(KEYWORD, rest)]}] with global ARG defaults substituted in FROM."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    args: dict[str, str] = {}
    stages: list[dict] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            words = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], words[0])
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            stages.append({"name": name, "from": image, "instructions": []})
        else:
            stages[-1]["instructions"].append((keyword, rest))
    return stages


def waxctl_stage() -> dict:
    stages = dockerfile_stages()
    found = [s for s in stages if s["name"] == "waxctl"]
    assert len(found) == 1, "the Dockerfile needs one stage `AS waxctl`"
    return found[0]


def stage_copies(stage: dict) -> list[tuple[list[str], str]]:
    """(sources, destination) of the stage's COPY instructions from the build context."""
    out = []
    for keyword, rest in stage["instructions"]:
        if keyword == "COPY":
            words = rest.split()
            assert not any(w.startswith("--from") for w in words), "the waxctl stage copies from the build context"
            words = [w for w in words if not w.startswith("--")]
            out.append((words[:-1], words[-1]))
    return out


def stage_install_dir(stage: dict) -> str:
    """The directory the stage installs into /venv with /venv/bin/pip install <dir>."""
    for keyword, rest in stage["instructions"]:
        if keyword != "RUN":
            continue
        for part in re.split(r"&&|;", rest):
            words = shlex.split(part)
            if words[:2] == ["/venv/bin/pip", "install"]:
                targets = [w for w in words[2:] if not w.startswith("-")]
                options = [w for w in words[2:] if w.startswith("-")]
                assert len(targets) == 1, f"one thing installed, the project: {part}"
                assert not {"-e", "--editable", "--no-deps", "-r", "--requirement"} & set(options), part
                return targets[0]
    raise AssertionError("the waxctl stage must install the project with /venv/bin/pip install <dir>")


def dockerignored(path: str) -> bool:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.startswith("#")]
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(fnmatch(p, pattern) or fnmatch(p, pattern.removeprefix("**/")) for p in prefixes):
            ignored = not negate
    return ignored


def runtime_closure() -> dict[str, importlib.metadata.Distribution]:
    """This environment's distributions of pyproject's runtime dependencies, recursively."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    todo = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    found: dict[str, importlib.metadata.Distribution] = {}
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in found:
            continue
        dist = importlib.metadata.distribution(req.name)
        assert req.specifier.contains(dist.version, prereleases=True), f"{req} but {dist.version} is installed"
        found[name] = dist
        for extra in req.extras or {""}:
            for spec in dist.requires or []:
                sub = Requirement(spec)
                if sub.marker is None or sub.marker.evaluate({"extra": extra}):
                    todo.append(sub)
    return found


def top_level_names(dist: importlib.metadata.Distribution) -> set[str]:
    return {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}


def bytewax_pin() -> str:
    pins = [r for r in PYPROJECT["project"]["dependencies"] if re.fullmatch(r"bytewax==[\w.]+", r)]
    assert len(pins) == 1, "bytewax must be pinned exactly in pyproject.toml"
    return pins[0].split("==")[1]


def chart_env(release: str, ordinal: int, values: dict) -> dict[str, str]:
    """The dataflow container's env as the chart sets it (placeholders filled), then the values' env."""
    flat = {
        "release": release,
        "ordinal": str(ordinal),
        **{f"configuration.{k}": go_print(v) for k, v in values["configuration"].items() if not isinstance(v, dict)},
        **{f"configuration.recovery.{k}": go_print(v) for k, v in values["configuration"]["recovery"].items()},
        "api.port": str(values["api"]["port"]),
    }
    env = {
        name: re.sub(r"\{([\w.]+)\}", lambda m: flat[m[1]], value)
        for name, value in CHART["dataflow_container"]["env"].items()
    }
    env.update({name: go_print(value) for name, value in values.get("env", {}).items()})
    return env


def go_print(value) -> str:
    """What the chart's `print` makes of a YAML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def merged(defaults: dict, user: dict) -> dict:
    """Helm's merge of user values over chart defaults: maps key by key, anything else replaced."""
    out = copy.deepcopy(defaults)
    for key, value in user.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# --------------------------------------------------------------------------
# values.yaml against the chart's keys


def test_values_use_only_keys_the_chart_reads():
    values = load_values()
    assert keys_not_read_by_chart(values) == []
    # waxctl's flags own these: set here, they would fight the command line.
    assert not {"image", "configuration"} & set(values), "image and configuration come from waxctl's flags"


def test_key_check_catches_keys_the_chart_ignores():
    values = load_values()
    values["envValueFrom"] = {"X": {"secretKeyRef": {"name": "s", "key": "k"}}}  # documented, never read
    values["livenessProbe"] = {"tcpSocket": {"port": 9100}}  # no probes in 0.8.1
    values["podAnnotation"] = {}  # a typo
    values["envFromSecrets"] = [{"name": "s", "key": "k"}]
    values["resources"] = {"requests": {"cpu": "1"}, "anything": "free-form"}  # toYaml'd: not a key problem
    assert sorted(p.split(":")[0] for p in keys_not_read_by_chart(values)) == [
        "envFromSecrets[].key",
        "envValueFrom",
        "livenessProbe",
        "podAnnotation",
    ]


def rendered_statefulset(values: dict, release: str, namespace: str, flags: dict[str, str]) -> dict:
    """The parts of templates/statefulset.yaml that our values feed, assembled as the template does."""
    defaults = CHART["defaults"]
    user = {**values, "configuration": {
        "processesCount": int(flags.get("processes", 1)),
        "workersPerProcess": int(flags.get("workers", 1)),
        "keepAlive": False,
        "pythonFileName": "driver_stats_dataflow.py",
        "recovery": {"snapshotInterval": flags.get("recovery-snapshot-interval", 30),
                     "backupInterval": flags.get("recovery-backup-interval", 30)},
    }}
    v = merged(defaults, user)
    env = [
        {"name": name, "value": value}
        for name, value in chart_env(release, 0, v).items()
        if name != "BYTEWAX_POD_NAME"
    ] + [{"name": "BYTEWAX_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    container = {
        "name": v["containerName"],
        "image": "registry.example.com/driver-stats:test",
        "command": CHART["dataflow_container"]["command"],
        "ports": [{"containerPort": v["service"]["port"], "name": "process"},
                  {"containerPort": v["api"]["port"], "name": "api"}],
        "env": env,
        "resources": v.get("resources", {}),
        "securityContext": v["securityContext"],
    }
    env_from = [{"secretRef": {"name": s["name"], "optional": bool(s.get("optional", False))}}
                for s in v.get("envFromSecrets", [])]
    if v.get("envFromSecret"):
        env_from.insert(0, {"secretRef": {"name": v["envFromSecret"]}})
    if env_from:
        container["envFrom"] = env_from
    labels = {"bytewax.io/dataflow-info": release, "app.kubernetes.io/name": "bytewax",
              "app.kubernetes.io/instance": release, **v.get("podLabels", {})}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": release, "namespace": namespace},
        "spec": {
            "replicas": v["configuration"]["processesCount"],
            "serviceName": release,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {k: labels[k] for k in ("bytewax.io/dataflow-info", "app.kubernetes.io/name",
                                                                 "app.kubernetes.io/instance")}},
            "template": {
                "metadata": {"labels": labels, "annotations": v.get("podAnnotations", {})},
                "spec": {"securityContext": v["podSecurityContext"], "containers": [container]},
            },
        },
    }


def test_what_the_chart_renders_from_the_values_is_valid():
    import kubernetes_validate

    (_, flags) = waxctl_command()
    values = load_values()
    # The chart writes each env value as "{{ tpl (print $value) $ }}".
    for name, value in values["env"].items():
        text = go_print(value)
        assert not re.search(r'["\\]|\{\{', name + text), f"{name}: breaks the chart's quoting or templating"
    repeated = set(values["env"]) & set(CHART["dataflow_container"]["env"])
    assert not repeated, f"values.env repeats variables the chart sets: {sorted(repeated)}"
    sts = rendered_statefulset(values, flags["name"], flags["namespace"], flags)
    for version in K8S_VERSIONS:
        if version == "latest":
            version = kubernetes_validate.utils.latest_version()
        kubernetes_validate.validate(sts, version, strict=True)

    # Helm merges these maps into the chart's defaults: every default key is
    # set here, so the result is what values.yaml says.
    for key in ("podSecurityContext", "securityContext"):
        assert set(CHART["defaults"][key]) <= set(values[key]), key
    pod = sts["spec"]["template"]["spec"]
    c = pod["containers"][0]["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["readOnlyRootFilesystem"] is True and c["allowPrivilegeEscalation"] is False
    assert "ALL" in c["capabilities"]["drop"] and not c["capabilities"].get("add")
    user = [rest for kw, rest in waxctl_stage()["instructions"] if kw == "USER"][-1]
    assert pod["securityContext"]["runAsUser"] == int(user.split(":")[0]), "the image's user"


def test_values_settings_and_credentials():
    (_, flags) = waxctl_command()
    values = load_values()
    env = {k: go_print(v) for k, v in values["env"].items()}
    unknown = set(env) - SETTING_VARS
    assert not unknown, f"not settings of driver_stats/settings.py: {sorted(unknown)}"
    assert not CREDENTIALS & set(env), "credentials come from the Secret"
    Settings.from_env(env)

    # Same settings as our manifests (k8s/base/settings.env), except where the
    # deployment differs: broker and partitions.
    base = dict(line.split("=", 1) for line in (REPO / "k8s/base/settings.env").read_text().split() if "=" in line)
    differs = {k for k in set(base) | set(env) if base.get(k) != env.get(k)}
    assert differs <= {PREFIX + "MQTT_URL", PREFIX + "PARTITIONS_PER_TOPIC"}, sorted(differs)

    workers = int(flags.get("processes", 1)) * int(flags.get("workers", 1))
    assert int(env[PREFIX + "PARTITIONS_PER_TOPIC"]) >= workers, "some workers would get no input"

    metrics_port = int(env[PREFIX + "METRICS_PORT"])
    annotations = values["podAnnotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics_port
    assert annotations["prometheus.io/path"] == "/metrics"
    assert metrics_port not in (CHART["defaults"]["service"]["port"], CHART["defaults"]["api"]["port"],
                                CHART["defaults"]["api"]["cacheport"])
    assert values["resources"]["requests"] and values["resources"]["limits"]

    # The Secret the README creates is the one the values read, with the
    # variable names as keys.
    secret = readme_command("kubectl", "-n", flags["namespace"], "create", "secret", "generic")
    name = secret[6]
    keys = {w.split("=", 2)[1] for w in secret if w.startswith("--from-literal=")}
    assert keys == CREDENTIALS
    assert [{"name": name, "optional": True}] == values["envFromSecrets"]


# --------------------------------------------------------------------------
# the README's commands


def test_readme_waxctl_command():
    positionals, flags = waxctl_command()
    assert len(positionals) == 1
    shipped = REPO / positionals[0]
    assert shipped == SHIPPED_FILE and shipped.is_file(), "the file waxctl ships, relative to the repository root"
    assert "python-file-name" not in flags, "only needed for a tar file"
    # Settings go in values.yaml: how waxctl merges -e into `env` is undocumented.
    assert "environment-variables" not in flags
    assert REPO / flags["chart-values-file"] == VALUES_FILE

    # The image is the one the README builds from the waxctl target.
    build = readme_command("docker", "build")
    assert build[build.index("--target") + 1] == waxctl_stage()["name"]
    assert build[build.index("-t") + 1] == f"{flags['image-repository']}:{flags['image-tag']}"
    assert build[-1] == "."
    push = readme_command("docker", "push")
    assert push[2] == build[build.index("-t") + 1]

    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", flags["name"])
    assert int(flags["processes"]) >= 1 and int(flags["workers"]) >= 1
    # bytewax.run refuses recovery without both intervals.
    assert flags["recovery"] == "true"
    assert int(flags["recovery-snapshot-interval"]) > 0
    assert int(flags["recovery-backup-interval"]) >= 0
    assert int(flags["recovery-parts"]) >= 1


def test_flag_parser_rejects_what_waxctl_would_misread():
    spec = CHART["waxctl"]["deploy_flags"]
    with pytest.raises(AssertionError, match="not a flag"):
        parse_flags(["x.py", "--procesess", "4"], spec)
    with pytest.raises(AssertionError, match="--recovery=true"):
        parse_flags(["x.py", "--recovery", "true"], spec)
    assert parse_flags(["-p4", "x.py", "-V", "v.yaml", "--yes"], spec) == (
        ["x.py"], {"processes": ["4"], "chart-values-file": ["v.yaml"], "yes": ["true"]}
    )


def test_readme_names_versions_and_compares_the_two_paths():
    text = README.read_text()
    section = text.split("\n## Deploy with waxctl\n", 1)[1].split("\n## ", 1)[0]
    assert f"chart {CHART['chart']['version']}" in section
    assert f"waxctl {CHART['waxctl']['version']}" in section
    table = [line for line in section.splitlines() if line.startswith("|")]
    for row in ("S3", "API cache", "OpenTelemetry", "probes", "PodDisruptionBudget", "read-only root filesystem"):
        assert any(row.lower() in line.lower() for line in table), f"decision table row: {row}"


# --------------------------------------------------------------------------
# the Dockerfile's waxctl stage (no Docker daemon here: statically)


def test_dockerfile_waxctl_stage():
    stages = dockerfile_stages()
    stage = waxctl_stage()
    # `docker build .` without --target still builds our runtime image.
    assert stages[-1] is not stage
    python = re.match(r"python:(\d+\.\d+)", stages[-1]["from"])
    assert python, stages[-1]["from"]
    assert stage["from"] == f"bytewax/bytewax:{bytewax_pin()}-python{python[1]}"

    # The project (its pyproject.toml pins the dependencies) goes into /venv.
    target = stage_install_dir(stage).rstrip("/")
    copied = []
    for sources, dest in stage_copies(stage):
        assert dest.rstrip("/") == target or dest.startswith(target + "/"), dest
        for source in sources:
            assert (REPO / source).exists(), source
            assert not dockerignored(source), f".dockerignore excludes {source}"
            copied.append(source)
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert {"pyproject.toml", PYPROJECT["project"]["readme"], *packages} <= set(copied)
    runs = " ".join(rest for kw, rest in stage["instructions"] if kw == "RUN")
    assert "/venv/bin/pip check" in runs
    assert not re.search(r"pip install [^&;]*==", runs), "versions come from pyproject.toml"

    # The chart runs `sh ./entrypoint.sh` (and ./entrypoint-recovery.sh) in
    # the image's WORKDIR: keep Bytewax's /bytewax and its entrypoint.
    keywords = [kw for kw, _ in stage["instructions"]]
    assert all(rest == "/bytewax" for kw, rest in stage["instructions"] if kw == "WORKDIR")
    assert "ENTRYPOINT" not in keywords and "CMD" not in keywords
    assert CHART["dataflow_container"]["command"][-1] == "sh ./entrypoint.sh"

    users = [rest for kw, rest in stage["instructions"] if kw == "USER"]
    assert users and keywords[-1] == "USER", "end the stage as the non-root user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric and not root (runAsNonRoot checks it)"


# --------------------------------------------------------------------------
# the /venv layout, built here


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> dict[str, Path]:
    """A virtualenv laid out like the waxctl image's /venv.

    The image runs ``/venv/bin/pip install <dir>``: a wheel built with
    isolation, dependencies resolved from PyPI at the pins. Without network,
    and to stay fast, this builds the same wheel from a copy of exactly what
    the stage COPYs (``--no-build-isolation``, this environment's setuptools),
    installs it non-editable with ``--no-deps`` into a fresh venv, and links
    in only the runtime dependencies (pyproject's, recursively) from this
    environment, at the pinned versions. Not ``--system-site-packages`` or a
    .pth to this environment: it has the project editable (its finder points
    at the repository) and the test-only packages, which would hide an import
    of the repository or of an undeclared dependency. ``pip check`` then
    proves the linked set complete.
    """
    root = tmp_path_factory.mktemp("waxctl-layout")
    stage = waxctl_stage()
    target = stage_install_dir(stage).rstrip("/")
    context = root / "context"
    context.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for sources, dest in stage_copies(stage):
        dest_dir = context / dest.rstrip("/").removeprefix(target).lstrip("/")
        for source in sources:
            src = REPO / source
            if src.is_dir():
                shutil.copytree(src, dest_dir, ignore=ignore, dirs_exist_ok=True)
            else:
                into = dest_dir / src.name if dest.endswith("/") else dest_dir
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, into)

    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheels = root / "wheels"
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels), str(context)],
                   check=True, capture_output=True, timeout=120)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    for dist in runtime_closure().values():
        for name in top_level_names(dist):
            if not (site / name).exists():  # a namespace package shared by two distributions
                (site / name).symlink_to(dist.locate_file(name))
    wheel = [str(w) for w in wheels.glob("*.whl")]
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", *wheel],
                   check=True, capture_output=True, timeout=120)
    check = subprocess.run([*pip, "--python", str(python), "check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    return {"root": root, "venv": venv, "python": python, "site": site}


def clean_env(venv: Path, home: Path, **extra: str) -> dict[str, str]:
    """What the chart's entrypoint runs with: the venv activated, no PYTHONPATH, nothing of ours."""
    return {
        "PATH": f"{venv}/bin:/usr/local/bin:/usr/bin:/bin",
        "VIRTUAL_ENV": str(venv),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONNOUSERSITE": "1",
        **extra,
    }


def test_layout_holds_the_installed_package_and_nothing_of_the_repository(layout):
    probe = (
        "import importlib.util, json, sys\n"
        "import bytewax.run, connectors.mqtt, driver_stats.settings, flows.driver_stats\n"
        "mods = ['driver_stats', 'flows', 'connectors', 'bytewax', 'paho', 'msgspec', 'google.protobuf']\n"
        "print(json.dumps({'files': {m: list(importlib.util.find_spec(m).submodule_search_locations) for m in mods},\n"
        "                  'absent': [m for m in ('pytest', 'hypothesis', 'kubernetes_validate', 'tests') "
        "if importlib.util.find_spec(m) is None], 'path': sys.path}))\n"
    )
    out = subprocess.run([str(layout["python"]), "-c", probe], cwd=layout["root"], capture_output=True, text=True,
                         env=clean_env(layout["venv"], layout["root"]), timeout=60)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    for module in ("driver_stats", "flows", "connectors"):
        (where,) = found["files"][module]
        assert Path(where) == layout["site"] / module, f"{module} from {where}"
        assert not (layout["site"] / module).is_symlink()
    assert found["absent"] == ["pytest", "hypothesis", "kubernetes_validate", "tests"]
    assert not any(p.startswith(str(REPO)) for p in found["path"])


def start_pod(layout: dict, root: Path, env: dict[str, str], file_path: str, log: Path) -> subprocess.Popen:
    """Bytewax's entrypoint.sh, in effect: cd $BYTEWAX_WORKDIR; python -m bytewax.run $BYTEWAX_PYTHON_FILE_PATH."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(layout["python"]), "-m", "bytewax.run", file_path],
            cwd=env["BYTEWAX_WORKDIR"],
            env=clean_env(layout["venv"], root, **env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def chart_paths(root: Path, env: dict[str, str]) -> dict[str, str]:
    """The chart's absolute paths (/var/bytewax, /etc/bytewax, ...) moved under ``root``."""
    out = {}
    for name, value in env.items():
        for path in CHART["dataflow_container"]["writable"]:
            if value == path or value.startswith(path + "/"):
                value = f"{root}{value}"
        out[name] = value
    return out


def ship(root: Path, source: Path, name: str) -> Path:
    """waxctl's ConfigMap, mounted at /tmp/bytewax/ and copied by init-hostfile to /var/bytewax/."""
    configmap = root / "tmp" / "bytewax"
    configmap.mkdir(parents=True)
    shutil.copy2(source, configmap / name)
    workdir = root / "var" / "bytewax"
    shutil.copytree(configmap, workdir)
    return workdir / name


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def mqtt_client(client_id: str, username: str, password: str):
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.username_pw_set(username, password)
    return client


@pytest.fixture
def broker_with_auth(tmp_path_factory):
    if find_mosquitto() is None:
        pytest.fail(NOT_FOUND, pytrace=False)
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"), users={"driver-stats": "s3cret"}).start()
    yield broker
    broker.stop()


def test_shipped_file_runs_from_the_layout_like_the_chart_runs_it(layout, broker_with_auth, tmp_path):
    """Two pods' processes, chart env and values env, the Secret's variables, recovery on."""
    broker = broker_with_auth
    _, flags = waxctl_command()
    values = load_values()
    release, processes = flags["name"], 2
    pods = []
    try:
        # Recovery as with --recovery: chart 0.8.1 mounts one volume in all
        # pods, and the init container (entrypoint-recovery.sh) creates all
        # parts there.
        recovery = tmp_path / "var" / "recovery"
        recovery.mkdir(parents=True)
        subprocess.run([str(layout["python"]), "-m", "bytewax.recovery", str(recovery), flags["recovery-parts"]],
                       check=True, capture_output=True, timeout=60, env=clean_env(layout["venv"], tmp_path))
        shipped = ship(tmp_path, SHIPPED_FILE, SHIPPED_FILE.name)

        # init-hostfile: one line per pod; 127.0.0.1 ports stand in for the
        # pods' DNS names.
        hostfile = tmp_path / "etc" / "bytewax" / "hostfile.txt"
        hostfile.parent.mkdir(parents=True)
        peers = [f"127.0.0.1:{free_port()}" for _ in range(processes)]
        hostfile.write_text("".join(p + "\n" for p in peers))
        (tmp_path / "var" / "bytewax-api-cache").mkdir()

        chart_values = {
            **CHART["defaults"],
            "configuration": {
                "pythonFileName": shipped.name,
                "processesCount": processes,
                "workersPerProcess": int(flags["workers"]),
                "keepAlive": False,
                "recovery": {"snapshotInterval": flags["recovery-snapshot-interval"],
                             "backupInterval": flags["recovery-backup-interval"]},
            },
            "env": values["env"],
        }
        ports = []
        for ordinal in range(processes):
            env = chart_paths(tmp_path, chart_env(release, ordinal, chart_values))
            # Each pod has its own IP; here each process gets its own ports.
            metrics, api = free_port(), free_port()
            ports.append((metrics, api))
            env.update({
                PREFIX + "MQTT_URL": f"mqtt://{broker.host}:{broker.port}",
                PREFIX + "METRICS_PORT": str(metrics),
                "BYTEWAX_DATAFLOW_API_PORT": str(api),
                # envFrom the Secret of the README: its keys are the names.
                PREFIX + "MQTT_USERNAME": "driver-stats",
                PREFIX + "MQTT_PASSWORD": "s3cret",
            })
            assert env["BYTEWAX_PYTHON_FILE_PATH"] == str(shipped)
            log = tmp_path / f"pod-{ordinal}.log"
            pods.append(start_pod(layout, tmp_path, env, env["BYTEWAX_PYTHON_FILE_PATH"], log))

        partitions = int(values["env"][PREFIX + "PARTITIONS_PER_TOPIC"])

        def logs() -> str:
            return "".join((tmp_path / f"pod-{i}.log").read_text(errors="replace") for i in range(processes))

        def connected() -> int:
            return sum(1 for line in logs().splitlines() if '"message":"mqtt input' in line and " connected (" in line)

        deadline = time.monotonic() + 45
        while connected() < partitions:
            assert all(p.poll() is None for p in pods), logs()[-4000:]
            assert time.monotonic() < deadline, "input partitions did not connect:\n" + logs()[-4000:]
            time.sleep(0.1)

        # One message through the dataflow: an undecodable payload comes back
        # on rejected/<topic>.
        got = threading.Event()
        topic = Settings.from_env({}).input_topics[0]
        collector = mqtt_client("waxctl-test-collector", "driver-stats", "s3cret")
        collector.on_connect = lambda c, *a: c.subscribe("rejected/#", qos=1)
        collector.on_subscribe = lambda c, *a: c.publish(topic, b"\xff not protobuf", qos=1)
        collector.on_message = lambda c, u, m: got.set()
        collector.connect(broker.host, broker.port)
        collector.loop_start()
        try:
            assert got.wait(30), "no rejection came back:\n" + logs()[-4000:]
        finally:
            collector.disconnect()
            collector.loop_stop()

        # What Prometheus scrapes: our port (the values' annotation) and
        # Bytewax's API port (the chart's PodMonitor), which includes ours.
        scraped = {name: "" for name in ("ours", "bytewax")}
        deadline = time.monotonic() + 10
        while 'reason="undecodable"' not in scraped["ours"] or "driver_stats_" not in scraped["bytewax"]:
            assert time.monotonic() < deadline, scraped
            scraped = {"ours": "".join(get(f"http://127.0.0.1:{m}/metrics") for m, _ in ports),
                       "bytewax": "".join(get(f"http://127.0.0.1:{a}/metrics") for _, a in ports)}
            time.sleep(0.2)
        assert json.loads(get(f"http://127.0.0.1:{ports[0][1]}/dataflow"))
        # Both processes formed one cluster and resumed from the shared parts.
        assert "driver_stats_" in scraped["ours"]
        assert all(p.poll() is None for p in pods), logs()[-4000:]
    finally:
        stop_process_groups(*pods, timeout=15)


def test_flows_driver_stats_py_cannot_be_shipped_as_it_is(layout, tmp_path):
    """Why the README ships k8s/waxctl/driver_stats_dataflow.py: under its own
    name the flow file is imported as `driver_stats` and hides the package."""
    shipped = ship(tmp_path, REPO / "flows" / "driver_stats.py", "driver_stats.py")
    env = chart_paths(tmp_path, {"BYTEWAX_WORKDIR": "/var/bytewax",
                                 "BYTEWAX_PYTHON_FILE_PATH": f"/var/bytewax/{shipped.name}"})
    log = tmp_path / "pod.log"
    pod = start_pod(layout, tmp_path, env, env["BYTEWAX_PYTHON_FILE_PATH"], log)
    try:
        pod.wait(60)
    finally:
        if pod.poll() is None:
            os.killpg(pod.pid, signal.SIGKILL)
            pod.wait()
    assert pod.returncode != 0
    text = log.read_text()
    # The file hides the package: which import notices first depends on the file's imports.
    assert ("partially initialized module 'driver_stats'" in text
            or "'driver_stats' is not a package" in text), text[-2000:]
