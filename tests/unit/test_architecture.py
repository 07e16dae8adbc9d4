"""The shape of the package (issues 17 and 23): no import cycle between ekd's modules, no module over
500 lines, docs/architecture.md lists every module, and every import keeps to the layer table of
docs/architecture.md (the rule is written there once and read from there).

Imports are read with ``ast`` from every module under python/ekd, at any level (inside functions
too: a function-level import hides a cycle, it does not remove it); relative imports are resolved;
``from ekd.x import y`` counts as an import of ``ekd.x.y`` when that is a module, else of ``ekd.x``.

Packages: an ``__init__.py`` that re-exports its submodules' names imports them, which is no
dependency of those submodules on the package. So the edge "importing ``ekd.a.b`` imports its
package ``ekd.a``" is not drawn: a submodule that imports a name from its own package's
``__init__`` (``from . import x``, ``from ekd.a import name``) does create the edge ``ekd.a.b ->
ekd.a``, and then a cycle through ``ekd.a``'s re-exports is reported, as it should be.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "python" / "ekd"
MAX_LINES = 500


def module_names(package: Path = PACKAGE) -> dict[str, Path]:
    """{dotted module name: file} of every module under ``package`` (packages by their __init__)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of a relative import ``from <level dots><target> import ...`` in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".")
    # a package's own __init__ is "." itself; a module's "." is its package
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The ekd modules ``module`` imports anywhere in its file."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    out = set()
    for name in found:
        # "import ekd.a.b.c" where only ekd.a.b is a module (c a name): the nearest module
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.add(name)
    return out


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the ekd modules it imports}."""
    modules = module_names(package)
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _cycle_path(graph: dict[str, set[str]], component: list[str]) -> str:
    """One closed import path inside ``component`` (for the message)."""
    members = set(component)
    start = component[0]
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in members)
        back = [w for w in nxt if w == start]
        if back and len(path) > 1:
            return " -> ".join([*path, start])
        fresh = [w for w in nxt if w not in seen]
        if not fresh:
            return " -> ".join([*path, nxt[0]]) if nxt else " <-> ".join(component)
        path.append(fresh[0])
        seen.add(fresh[0])


# ------------------------------------------------------------------------------------------
# the checker itself, on small made-up packages


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_checker_sees_function_level_relative_and_submodule_imports(tmp_path):
    _write(
        tmp_path,
        {
            "ekd/__init__.py": "",
            "ekd/a.py": "def f():\n    from .data import gen\n",
            "ekd/data/__init__.py": "from .ani import read\n",
            "ekd/data/ani.py": "def read(): pass\n",
            "ekd/data/gen.py": "from ..b import x\n",
            "ekd/b.py": "import ekd.a\nx = 1\n",
            "ekd/c.py": "from ekd.data.ani import read\nfrom . import b\n",
        },
    )
    graph = import_graph(tmp_path / "ekd")
    assert graph["ekd.a"] == {"ekd.data.gen"}  # in a function; `from .data import gen` is the module
    assert graph["ekd.data"] == {"ekd.data.ani"}  # the package's re-export
    assert graph["ekd.data.gen"] == {"ekd.b"}  # two dots from a subpackage
    assert graph["ekd.c"] == {"ekd.data.ani", "ekd.b"}
    assert cycles(graph) == [["ekd.a", "ekd.b", "ekd.data.gen"]]
    assert _cycle_path(graph, ["ekd.a", "ekd.b", "ekd.data.gen"]) == "ekd.a -> ekd.data.gen -> ekd.b -> ekd.a"


# ------------------------------------------------------------------------------------------
# the package


def test_no_import_cycle_between_ekd_modules():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles (function-level imports included):\n" + "\n".join(
        f"  {_cycle_path(graph, c)}   (component: {', '.join(c)})" for c in found
    )


def test_no_module_over_500_lines():
    sizes = {m: len(p.read_text().splitlines()) for m, p in module_names().items()}
    big = {m: n for m, n in sorted(sizes.items()) if n > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}; split them along a real seam"


def test_architecture_doc_lists_every_module():
    doc = ROOT / "docs" / "architecture.md"
    if not doc.exists():
        pytest.fail(f"{doc} is missing: it lists every module of python/ekd in one line each")
    text = doc.read_text()
    missing = []
    for name, path in module_names().items():
        rel = path.relative_to(PACKAGE.parent.parent).as_posix()  # python/ekd/...
        short = path.relative_to(PACKAGE).as_posix()  # e.g. data/ani.py
        if name == "ekd":
            continue
        shown = short[: -len("/__init__.py")] + "/" if short.endswith("__init__.py") else short
        if f"`{shown}`" not in text and f"`{rel}`" not in text:
            missing.append(shown)
    assert not missing, f"docs/architecture.md does not list {missing} (write each as `path`, e.g. `data/ani.py`)"


# ------------------------------------------------------------------------------------------
# the layers: docs/architecture.md's ```layers block


def read_layers(text: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """({top-level name under ekd: its part}, {part: the parts it may import}) from the
    ```layers block: lines ``part: names : allowed parts`` (``-``: none)."""
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    if block is None:
        raise AssertionError("docs/architecture.md has no ```layers block (the import rule)")
    part_of, allowed = {}, {}
    for line in block.group(1).splitlines():
        if not line.strip():
            continue
        part, names, may = (x.strip() for x in line.split(":"))
        for name in names.split():
            part_of[name] = part
        allowed[part] = set() if may == "-" else set(may.split())
    unknown = {p for a in allowed.values() for p in a} - set(allowed)
    assert not unknown, f"the layers block names parts it does not define: {sorted(unknown)}"
    return part_of, allowed


def part_of_module(module: str, part_of: dict[str, str]) -> str | None:
    """The part of ``ekd.<top>...`` (None for the package face ``ekd`` itself)."""
    top = module.split(".")[1] if "." in module else None
    if top is None:
        return None
    if top not in part_of:
        raise AssertionError(f"{module}: ekd.{top} is in no part of docs/architecture.md's layers block")
    return part_of[top]


def layer_violations(graph: dict[str, set[str]], part_of: dict[str, str], allowed: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        src = part_of_module(module, part_of)
        if src is None:
            continue
        for target in sorted(targets):
            dst = part_of_module(target, part_of)
            if dst is None or dst == src or dst in allowed[src]:
                continue
            out.append(f"{module} ({src}) imports {target} ({dst})")
    return out


def test_layer_checker_on_a_made_up_package(tmp_path):
    _write(
        tmp_path,
        {
            "ekd/__init__.py": "from .c import z\n",
            "ekd/a.py": "x = 1\n",
            "ekd/b/__init__.py": "",
            "ekd/b/m.py": "from ..a import x\n",
            "ekd/c.py": "def f():\n    from .b import m\n",
        },
    )
    text = "```layers\nlow: a : -\nmid: b : low\ntop: c : low\n```\n"
    part_of, allowed = read_layers(text)
    graph = import_graph(tmp_path / "ekd")
    # c -> b is not allowed (top may import low only); b -> a is; the face is outside the table
    assert layer_violations(graph, part_of, allowed) == ["ekd.c (top) imports ekd.b.m (mid)"]


def test_imports_keep_to_the_layers_of_docs_architecture():
    part_of, allowed = read_layers((ROOT / "docs" / "architecture.md").read_text())
    bad = layer_violations(import_graph(), part_of, allowed)
    assert not bad, "imports that docs/architecture.md's layers block does not allow:\n  " + "\n  ".join(bad)
