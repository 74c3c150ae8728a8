"""The import rule of docs/architecture.md: packages form layers, and a module imports only its own
package or a lower layer (server -> engine -> chat -> kvcache -> models -> kernels). Every import statement of
every module is parsed (lazy, in-function imports too), so a new upward edge fails here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("kernels", "models", "kvcache", "chat", "engine", "server")  # bottom -> top
RANK = {p: i for i, p in enumerate(LAYERS)}

# Known upward edges still to remove, as "importer -> imported module" (none left since issue 15). The
# list must be exact: an edge that is gone has to leave it too, so it only shrinks.
KNOWN_UPWARD: set[str] = set()


def _imported(path: Path, root: Path = ROOT) -> set[str]:
    rel = path.relative_to(root)
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importer's package
                base = list(rel.parts[:-1])[:len(rel.parts) - node.level]
                out.add(".".join(base + ([node.module] if node.module else [])))
            else:
                out.add(node.module)
    return out


def upward_edges(root: Path = ROOT) -> set[str]:
    edges = set()
    for pkg in LAYERS:
        for path in sorted((root / pkg).rglob("*.py")):
            for mod in _imported(path, root):
                top = mod.split(".")[0]
                if top in RANK and RANK[top] > RANK[pkg]:
                    edges.add(f"{path.relative_to(root).as_posix()} -> {mod}")
    return edges


def test_imports_run_one_way():
    edges = upward_edges()
    new = sorted(edges - KNOWN_UPWARD)
    assert not new, "imports against the layer rule (docs/architecture.md, 'Import rule'):\n" + "\n".join(new)
    gone = sorted(KNOWN_UPWARD - edges)
    assert not gone, "fixed upward imports: drop them from KNOWN_UPWARD:\n" + "\n".join(gone)


def test_the_rule_sees_an_upward_import(tmp_path):
    """The parser catches absolute, relative and lazy upward imports (guards the test itself)."""
    for pkg, body in (("kernels", "def f():\n    from models.state import AttnMeta\n"),
                      ("engine", "import server.app\n"), ("kvcache", "from engine import LLM\n")):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "m.py").write_text(body)
    for pkg in set(LAYERS) - {"kernels", "engine", "kvcache"}:
        (tmp_path / pkg).mkdir()
    (tmp_path / "models" / "ok.py").write_text("from ..kernels import x\nfrom .state import y\n")
    assert upward_edges(tmp_path) == {"kernels/m.py -> models.state", "engine/m.py -> server.app",
                                      "kvcache/m.py -> engine"}


def _module_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> modules it imports (lazy imports too), over the layered packages."""
    files = {}
    for pkg in LAYERS:
        for path in (root / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            files[name.removesuffix(".__init__")] = path

    def resolve(mod: str) -> str:  # "pkg.mod.name" -> the module file that defines it
        while mod and mod not in files:
            mod = mod.rpartition(".")[0]
        return mod

    return {m: {r for r in map(resolve, _imported(p, root)) if r and r != m} for m, p in files.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    seen, done, cycles = [], set(), []

    def visit(m: str) -> None:
        seen.append(m)
        for n in sorted(graph[m]):
            if n in seen:
                cycles.append(seen[seen.index(n):] + [n])
            elif n not in done:
                visit(n)
        seen.pop()
        done.add(m)

    for m in sorted(graph):
        if m not in done:
            visit(m)
    return cycles


def test_no_import_cycles():
    """No two modules import each other, directly or around a loop (e.g. executor <-> worker once)."""
    cycles = import_cycles(_module_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_sees_a_lazy_cycle(tmp_path):
    for pkg in LAYERS:
        (tmp_path / pkg).mkdir()
    (tmp_path / "engine" / "a.py").write_text("from .b import f\n")
    (tmp_path / "engine" / "b.py").write_text("def f():\n    from .a import g\n")
    assert import_cycles(_module_graph(tmp_path)) == [["engine.a", "engine.b", "engine.a"]]
