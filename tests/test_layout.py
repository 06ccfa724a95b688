"""The package layout: the import graph of src/ckptguard is acyclic (module-level and
function-level imports alike; only ``if TYPE_CHECKING:`` blocks are left out), so every
module can be read knowing only the modules below it (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ckptguard"


def _modules(root: Path) -> dict[str, tuple[Path, bool]]:
    out: dict[str, tuple[Path, bool]] = {}
    for p in sorted(root.rglob("*.py")):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (p, is_pkg)
    return out


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body (a package's
    ``__init__`` is the package's own name; ``from . import x`` names the submodule)."""
    mods = _modules(root)
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        pkg = name if is_pkg else name.rpartition(".")[0]
        out: set[str] = set()

        def visit(node: ast.AST, pkg: str = pkg, out: set[str] = out) -> None:
            for child in ast.iter_child_nodes(node):
                if _type_checking(child):
                    assert isinstance(child, ast.If)
                    for stmt in child.orelse:
                        visit(stmt)
                    continue
                if isinstance(child, ast.Import):
                    out.update(a.name for a in child.names if a.name in mods)
                elif isinstance(child, ast.ImportFrom):
                    if child.level:
                        base = pkg.split(".")[: len(pkg.split(".")) - (child.level - 1)]
                        mod = ".".join(base + ([child.module] if child.module else []))
                    else:
                        mod = child.module or ""
                    subs = {f"{mod}.{a.name}" for a in child.names} & mods.keys()
                    out.update(subs)
                    if mod in mods and len(subs) < len(child.names):
                        out.add(mod)  # a name defined in the package itself
                visit(child)

        visit(ast.parse(path.read_text(encoding="utf-8")))
        out.discard(name)
        graph[name] = out
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def strong(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_the_package_import_graph_is_acyclic() -> None:
    graph = import_graph(PACKAGE)
    assert len(graph) > 50 and "ckptguard.analysis.engine" in graph
    assert "ckptguard.analysis.torchfile" in graph["ckptguard.analysis.engine"]  # in a function
    assert cycles(graph) == []


def test_the_cycle_check_sees_module_and_function_level_cycles(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import x\n    return x\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\n"
                              "if TYPE_CHECKING:\n    from . import d\n")
    (pkg / "d.py").write_text("from . import c\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"}  # a submodule, not its package's names
    assert graph["pkg.sub.b"] == {"pkg.a"}
    assert graph["pkg.c"] == set()  # a TYPE_CHECKING import is no runtime edge
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]


def test_the_engine_audits_one_file_and_never_imports_the_folder_layer() -> None:
    graph = import_graph(PACKAGE)

    def below(start: str) -> set[str]:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for m in graph[todo.pop()]:
                if m not in seen:
                    seen.add(m)
                    todo.append(m)
        return seen

    engine = below("ckptguard.analysis.engine")
    for upper in ("ckptguard.analysis.folder", "ckptguard.analysis.dcp_folder",
                  "ckptguard.scan_api", "ckptguard.remote.scan", "ckptguard"):
        assert upper not in engine
    assert "ckptguard.analysis.engine" in below("ckptguard.scan_api")


def test_parsers_record_no_findings() -> None:
    """readers/ parse; analysis/ audits. A pure parser never sees the AuditContext (it
    raises a typed error or LimitExceeded), nor the rule registry or the policy."""
    graph = import_graph(PACKAGE)
    for parser in ("ckptguard.readers.jsonfile", "ckptguard.readers.npy",
                   "ckptguard.readers.safetensors"):
        assert graph[parser] & {"ckptguard.rules", "ckptguard.policy"} == set(), parser
        text = _modules(PACKAGE)[parser][0].read_text(encoding="utf-8")
        assert "AuditContext" not in text and "ctx." not in text, parser
    for module in graph:
        if module.startswith("ckptguard.readers"):
            assert not any(m.startswith(("ckptguard.analysis", "ckptguard.loaders"))
                           for m in graph[module]), module


def test_the_version_is_a_leaf_read_by_pyproject() -> None:
    import tomllib

    graph = import_graph(PACKAGE)
    assert graph["ckptguard._version"] == set()
    # only the package root re-exports it; deep modules import the leaf, never the root
    assert [m for m in graph if "ckptguard" in graph[m]] == []
    meta = tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" in meta["project"]["dynamic"] and "version" not in meta["project"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "ckptguard._version.__version__"}


def test_report_formats_and_commands_are_enums_with_explicit_imports() -> None:
    import click

    from ckptguard.cli import Command, LazyGroup, cli, load_command
    from ckptguard.report import FORMATTERS, ReportFormat, formatter
    from ckptguard.report.jsonreport import format_json
    from ckptguard.report.sarif import format_sarif
    from ckptguard.report.text import format_text

    # both directions: every enum member has its formatter, every formatter its member
    assert {f: formatter(f) for f in ReportFormat} == {
        ReportFormat.TEXT: format_text, ReportFormat.JSON: format_json,
        ReportFormat.SARIF: format_sarif}
    assert list(FORMATTERS) == ["text", "json", "sarif"]
    assert FORMATTERS["sarif"] is format_sarif and "xml" not in FORMATTERS
    assert isinstance(cli, LazyGroup)
    ctx = click.Context(cli)
    assert cli.list_commands(ctx) == sorted(c.value for c in Command)
    assert {c.value: load_command(c).name for c in Command} == {
        "scan": "scan", "inspect": "inspect", "explain": "explain", "convert": "convert"}
    assert cli.get_command(ctx, "nosuch") is None
    for tree in (PACKAGE / "report" / "__init__.py", PACKAGE / "cli" / "__init__.py",
                 PACKAGE / "__init__.py"):
        assert "importlib" not in tree.read_text(encoding="utf-8"), tree


def test_a_file_scan_imports_only_what_it_needs() -> None:
    import subprocess
    import sys

    fixture = PACKAGE.parents[1] / "fixtures" / "benign" / "linear.pt"
    code = ("import sys, ckptguard; r = ckptguard.scan(sys.argv[1]); "
            "print(r.verdict.value); print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code, str(fixture)], capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": str(PACKAGE.parent)},
                         ).stdout.split("\n")
    assert out[0] == "SAFE"
    mods = set(out[1].split())
    assert "ckptguard.analysis.vm" in mods and "ckptguard.analysis.tensors" in mods
    for unneeded in ("torch", "numpy", "safetensors", "httpx", "rich", "click",
                     "ckptguard.loaders", "ckptguard.analysis.folder",
                     "ckptguard.analysis.dcp_folder", "ckptguard.remote.scan",
                     "ckptguard.report", "ckptguard.cli"):
        assert unneeded not in mods, unneeded
