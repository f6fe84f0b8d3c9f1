"""The code's shape: ``ruff check`` passes, and the product's modules, classes
and functions stay small enough to read in one go.

Size limits hold for ``connectors/``, ``driver_stats/``, ``flows/`` and
``cli/`` (generated protobuf code is left out): a
module at most :data:`MODULE_LINES` lines, a class :data:`CLASS_LINES`, a
function :data:`FUNCTION_LINES`, decorators and docstrings included.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SIZED = ("connectors", "driver_stats", "flows", "cli")
MODULE_LINES = 400
CLASS_LINES = 200
FUNCTION_LINES = 60


def oversized(root: Path) -> list[str]:
    """``file:line: what`` for every module, class and function over its limit."""
    found = []
    for path in sorted(p for top in SIZED for p in (root / top).rglob("*.py") if not p.name.endswith("_pb2.py")):
        where = path.relative_to(root)
        text = path.read_text()
        if len(text.splitlines()) > MODULE_LINES:
            found.append(f"{where}: {len(text.splitlines())} lines (at most {MODULE_LINES})")
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                lines = node.end_lineno - first + 1
                limit = CLASS_LINES if isinstance(node, ast.ClassDef) else FUNCTION_LINES
                if lines > limit:
                    found.append(f"{where}:{node.lineno}: {node.name} has {lines} lines (at most {limit})")
    return found


def test_ruff_check_passes():
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", str(ROOT)],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr


def test_modules_classes_and_functions_stay_within_their_sizes():
    assert oversized(ROOT) == []


def test_the_size_check_sees_what_is_too_long(tmp_path):
    (tmp_path / "flows").mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(FUNCTION_LINES))
    (tmp_path / "flows" / "steps.py").write_text(f"def long():\n{body}\n\ndef short():\n    return 1\n")
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "big.py").write_text("x = 1\n" * (MODULE_LINES + 1))
    assert oversized(tmp_path) == [
        f"cli/big.py: {MODULE_LINES + 1} lines (at most {MODULE_LINES})",
        f"flows/steps.py:1: long has {FUNCTION_LINES + 1} lines (at most {FUNCTION_LINES})",
    ]
