"""The import layers of the code, read from its source with ``ast`` (nothing is imported).

Production code, bottom first; a module may import its own layer and those
below it, never one above:

1. ``driver_stats.contract`` — messages, codecs, topics, reasons;
2. ``driver_stats.settings``;
3. ``driver_stats.core`` — the domain;
4. ``flows`` — the Bytewax dataflow, its metrics, logs and live process;
5. ``driver_stats.cli`` — the ``driver-stats`` command;
6. ``driver_stats.testing`` — the live flow and traffic for tests and benchmarks.

Layers 1-3 import no Bytewax, paho or Prometheus (nor the connectors).
``connectors`` stands apart: it imports nothing of the product, and neither
do its tests (nor the conftest they load). The benchmarks import no tests,
and no test module imports another test module.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS = (
    "driver_stats.contract",
    "driver_stats.settings",
    "driver_stats.core",
    "flows",
    "driver_stats.cli",
    "driver_stats.testing",
)
PURE = LAYERS[:3]
NOT_IN_PURE = ("bytewax", "paho", "prometheus_client", "connectors")
PRODUCT = ("driver_stats", "flows")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, nested ones too.

    ``from X import name`` also yields ``X.name``, which may be a module.
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
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def layer_of(module: str) -> int | None:
    ranks = [i for i, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + ".")]
    return ranks[0] if ranks else None


def _top(module: str) -> str:
    return module.partition(".")[0]


def violations(root: Path) -> list[str]:
    """Every import that breaks a rule of this module's docstring, as ``file:line: why``."""
    found = []
    production = [p for top in ("driver_stats", "flows", "connectors") for p in (root / top).rglob("*.py")]
    for path in production:
        own = layer_of(module_name(path, root))
        where = path.relative_to(root)
        for line, target in imports(path, root):
            rank = layer_of(target)
            if own is not None and rank is not None and rank > own:
                found.append(f"{where}:{line}: {LAYERS[own]} imports {target} from a higher layer")
            if own is not None and LAYERS[own] in PURE and _top(target) in NOT_IN_PURE:
                found.append(f"{where}:{line}: {LAYERS[own]} imports {target}")
            if module_name(path, root).startswith("connectors") and _top(target) in PRODUCT:
                found.append(f"{where}:{line}: the connectors import product code ({target})")
    for path in (root / "bench").rglob("*.py"):
        found += [f"{path.relative_to(root)}:{line}: a benchmark imports {target}"
                  for line, target in imports(path, root) if _top(target) == "tests"]
    for path in (root / "tests").rglob("*.py"):
        connector_side = path.name == "conftest.py" and path.parent == root / "tests"
        connector_side |= (root / "tests" / "connectors") in path.parents
        for line, target in imports(path, root):
            if target.rpartition(".")[2].startswith("test_") and _top(target) == "tests":
                found.append(f"{path.relative_to(root)}:{line}: a test imports the test module {target}")
            if connector_side and (_top(target) in PRODUCT or target.startswith("tests.support")):
                found.append(f"{path.relative_to(root)}:{line}: connector tests import product code ({target})")
    return sorted(set(found))


def test_the_code_keeps_its_import_layers():
    assert violations(ROOT) == []


def test_the_check_sees_a_lower_layer_importing_a_higher_one(tmp_path):
    files = {
        "driver_stats/__init__.py": "",
        "driver_stats/core/__init__.py": "",
        "driver_stats/core/windows.py": "import bytewax.operators\nfrom ..cli import common\n",
        "driver_stats/contract/codec.py": "def f():\n    from driver_stats.core import windows\n",
        "flows/steps.py": "from driver_stats.testing import paced\n",
        "connectors/mqtt/sink.py": "from driver_stats.contract import Reason\n",
        "bench/x.py": "from tests.support import T0\n",
        "tests/flow/test_a.py": "from tests.flow.test_b import helper\n",
        "tests/connectors/test_c.py": "import flows.driver_stats\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = "\n".join(violations(tmp_path))
    for expected in (
        "driver_stats/core/windows.py:1: driver_stats.core imports bytewax.operators",
        "driver_stats/core/windows.py:2: driver_stats.core imports driver_stats.cli.common from a higher layer",
        "driver_stats/contract/codec.py:2: driver_stats.contract imports driver_stats.core from a higher layer",
        "flows/steps.py:1: flows imports driver_stats.testing from a higher layer",
        "connectors/mqtt/sink.py:1: the connectors import product code",
        "bench/x.py:1: a benchmark imports tests.support",
        "tests/flow/test_a.py:1: a test imports the test module tests.flow.test_b",
        "tests/connectors/test_c.py:1: connector tests import product code",
    ):
        assert expected in found
