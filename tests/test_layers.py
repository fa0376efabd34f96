"""The package's layers as a contract (import-linter, configured in pyproject.toml) and no cycles.

``stats`` and ``data`` import nothing above them, ``plots`` imports only statistics and result
types, ``config`` never imports torch or the training code.  The contract is shown to bite: the
same check on a copy of the package with one forbidden import fails and names it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytest.importorskip("importlinter")
grimp = pytest.importorskip("grimp")

LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())"]  # fmt: skip


def lint(src: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [*LINT, str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_contracts_hold():
    out = lint(REPO / "src")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "broken" not in out.stdout.lower().replace("0 broken", "")


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("stats/metrics.py", "import vhbb.ml.train", "Layers"),
        ("data/keys.py", "from vhbb.config import loading", "Statistics and data import nothing"),
        ("config/params.py", "import torch", "Configuration never imports torch"),
        ("plots/style.py", "from vhbb.data import cache", "Plots import only"),
    ],
)
def test_a_forbidden_import_breaks_the_contract(tmp_path, module, line, contract):
    copy = tmp_path / "src"
    shutil.copytree(REPO / "src" / "vhbb", copy / "vhbb", ignore=shutil.ignore_patterns("*.pyc"))
    path = copy / "vhbb" / module
    path.write_text(path.read_text() + f"\n{line}  # planted by the test\n")
    out = lint(copy)
    assert out.returncode != 0, out.stdout
    broken = out.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, out.stdout
    assert module.replace("/", ".").removesuffix(".py") in broken


def _cycles(graph) -> list[list[str]]:  # type: ignore[no-untyped-def]
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    modules = sorted(m for m in graph.modules if m.startswith("vhbb"))
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            for nxt in it:
                if not nxt.startswith("vhbb"):
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.find_modules_directly_imported_by(nxt)))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_no_import_cycles_between_modules():
    """Function-level (lazy) imports count too: a cycle is a cycle."""
    graph = grimp.build_graph("vhbb", cache_dir=None)
    # a package's __init__ re-exporting its own modules is not a cycle between modules
    for pkg in [m for m in graph.modules if graph.find_children(m)]:
        for child in graph.find_children(pkg):
            if graph.direct_import_exists(importer=pkg, imported=child):
                graph.remove_import(importer=pkg, imported=child)
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_planted_cycle():
    graph = grimp.build_graph("vhbb", cache_dir=None)
    graph.add_import(importer="vhbb.core.io", imported="vhbb.core.checks")
    assert ["vhbb.core.checks", "vhbb.core.io"] in _cycles(graph)
