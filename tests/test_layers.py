"""The import graph of the code, read from its source with ``ast`` (nothing is imported).

Top-level packages, bottom first; each imports only those below it, so no
two import each other, however indirectly:

1. ``connectors`` — MQTT and file connectors, apart from the product: it
   imports nothing of the others, and neither do its tests (nor the conftest
   they load);
2. ``driver_stats`` — contract, settings, domain, traffic model, test harness;
3. ``flows`` — the Bytewax dataflow, its metrics, logs and live process;
4. ``cli`` — the ``driver-stats`` command.

Layers of the product, bottom first; a module imports its own layer and those
below it, never one above:

1. ``driver_stats.contract`` — messages, codecs, topics, reasons;
2. ``driver_stats.settings``;
3. ``driver_stats.core`` — the domain;
4. ``driver_stats.traffic`` — generated input traffic (plain Python);
5. ``flows``;
6. ``cli``;
7. ``driver_stats.testing`` — the live flow and paced traffic for tests and
   benchmarks (within the package rule: it runs the flow as a subprocess).

Layers 1-4 import no Bytewax, paho or Prometheus (nor the connectors).

The graph is the real one: ``from X import name`` is an import of the module
``X.name`` where that module exists, else of ``X``. Importing a module runs
its packages' ``__init__`` first, so one without a layer of its own
(``driver_stats/__init__.py``) counts as the lowest layer among its modules.

The benchmarks import no tests, and no test module imports another test module.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PACKAGES = ("connectors", "driver_stats", "flows", "cli")
LAYERS = (
    "driver_stats.contract",
    "driver_stats.settings",
    "driver_stats.core",
    "driver_stats.traffic",
    "flows",
    "cli",
    "driver_stats.testing",
)
PURE = LAYERS[:4]
NOT_IN_PURE = ("bytewax", "paho", "prometheus_client", "connectors")
PRODUCT = PACKAGES[1:]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path, modules: frozenset[str] = frozenset()) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, nested ones too.

    ``from X import name`` is ``X.name`` where ``modules`` has it, else ``X``.
    """
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.append((node.lineno, submodule if submodule in modules else target))
    return found


def layer_of(module: str) -> int | None:
    ranks = [i for i, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + ".")]
    return ranks[0] if ranks else None


def rank_of(module: str, modules: frozenset[str]) -> int | None:
    """The layer of ``module``; for a package without one, the lowest layer of its modules."""
    own = layer_of(module)
    if own is not None or module not in modules:
        return own
    inside = [layer_of(m) for m in modules if m.startswith(module + ".")]
    return min((rank for rank in inside if rank is not None), default=None)


def _top(module: str) -> str:
    return module.partition(".")[0]


def _layer_violations(source: str, target: str, modules: frozenset[str]) -> list[str]:
    own, rank = rank_of(source, modules), rank_of(target, modules)
    if own is None or rank is None or rank <= own:
        return []
    who = LAYERS[own] if layer_of(source) is not None else f"{source} (run by {LAYERS[own]})"
    return [f"{who} imports {target} from a higher layer"]


def _package_violations(source: str, target: str, modules: frozenset[str]) -> list[str]:
    found = []
    own = rank_of(source, modules)
    if own is not None and LAYERS[own] in PURE and _top(target) in NOT_IN_PURE:
        found.append(f"{LAYERS[own]} imports {target}")
    if _top(source) != _top(target) and _top(target) in PACKAGES:
        allowed = PACKAGES[: PACKAGES.index(_top(source))]
        if _top(target) not in allowed:
            found.append(f"the package {_top(source)} imports {target}: it may import "
                         f"{', '.join(allowed) or 'none of the others'}")
    return found


def violations(root: Path) -> list[str]:
    """Every import that breaks a rule of this module's docstring, as ``file:line: why``."""
    found = []
    production = {module_name(p, root): p for top in PACKAGES for p in (root / top).rglob("*.py")}
    modules = frozenset(production)
    for source, path in production.items():
        where = path.relative_to(root)
        for line, imported in imports(path, root, modules):
            whys = _package_violations(source, imported, modules) + _layer_violations(source, imported, modules)
            found += [f"{where}:{line}: {why}" for why in whys]
    for path in (root / "bench").rglob("*.py"):
        found += [f"{path.relative_to(root)}:{line}: a benchmark imports {target}"
                  for line, target in imports(path, root) if _top(target) == "tests"]
    for path in (root / "tests").rglob("*.py"):
        connector_side = path.name == "conftest.py" and path.parent == root / "tests"
        connector_side |= (root / "tests" / "connectors") in path.parents
        for line, target in imports(path, root, modules):
            if target.rpartition(".")[2].startswith("test_") and _top(target) == "tests":
                found.append(f"{path.relative_to(root)}:{line}: a test imports the test module {target}")
            if connector_side and (_top(target) in PRODUCT or target.startswith("tests.support")):
                found.append(f"{path.relative_to(root)}:{line}: connector tests import product code ({target})")
    return sorted(set(found))


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_code_keeps_its_import_layers():
    assert violations(ROOT) == []


def test_the_check_sees_a_lower_layer_importing_a_higher_one(tmp_path):
    files = {
        "driver_stats/__init__.py": "",
        "driver_stats/core/__init__.py": "",
        "driver_stats/core/windows.py": "import bytewax.operators\nfrom driver_stats import traffic\n",
        "driver_stats/traffic.py": "",
        "driver_stats/contract/codec.py": "def f():\n    from driver_stats.core import windows\n",
        "driver_stats/testing/__init__.py": "",
        "driver_stats/testing/paced.py": "from flows import live\nfrom cli import main\n",
        "flows/__init__.py": "",
        "flows/live.py": "",
        "flows/steps.py": "from driver_stats.testing import paced\nimport cli.common\n",
        "cli/__init__.py": "",
        "cli/common.py": "",
        "connectors/mqtt/sink.py": "from driver_stats.contract import Reason\n",
        "bench/x.py": "from tests.support import T0\n",
        "tests/flow/test_a.py": "from tests.flow.test_b import helper\n",
        "tests/connectors/test_c.py": "import flows.driver_stats\n",
    }
    write_tree(tmp_path, files)
    found = "\n".join(violations(tmp_path))
    for expected in (
        "driver_stats/core/windows.py:1: driver_stats.core imports bytewax.operators",
        "driver_stats/core/windows.py:2: driver_stats.core imports driver_stats.traffic from a higher layer",
        "driver_stats/contract/codec.py:2: driver_stats.contract imports driver_stats.core.windows from a higher layer",
        "driver_stats/testing/paced.py:1: the package driver_stats imports flows.live: it may import connectors",
        "driver_stats/testing/paced.py:2: the package driver_stats imports cli: it may import connectors",
        "flows/steps.py:1: flows imports driver_stats.testing.paced from a higher layer",
        "flows/steps.py:2: flows imports cli.common from a higher layer",
        "flows/steps.py:2: the package flows imports cli.common: it may import connectors, driver_stats",
        "connectors/mqtt/sink.py:1: the package connectors imports driver_stats.contract: it may import none",
        "bench/x.py:1: a benchmark imports tests.support",
        "tests/flow/test_a.py:1: a test imports the test module tests.flow.test_b",
        "tests/connectors/test_c.py:1: connector tests import product code",
    ):
        assert expected in found


def test_a_package_init_runs_before_its_modules(tmp_path):
    """An import in ``driver_stats/__init__.py`` reaches every module of the package: the lowest layer's rules hold."""
    files = {
        "driver_stats/__init__.py": "from driver_stats.core import windows\n",
        "driver_stats/contract/__init__.py": "",
        "driver_stats/core/__init__.py": "",
        "driver_stats/core/windows.py": "",
        "flows/steps.py": "from driver_stats.contract import Reason\n",
    }
    write_tree(tmp_path, files)
    assert violations(tmp_path) == [
        "driver_stats/__init__.py:1: driver_stats (run by driver_stats.contract) imports driver_stats.core.windows "
        "from a higher layer",
    ]
