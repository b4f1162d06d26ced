"""The layout's rules, asserted on the real import graph (docs/architecture.md: "How it works", "The import rules").

Every module under ``actors/``, ``shm/``, ``config/`` and ``supervisor.py`` is parsed with ``ast``;
every import counts, wherever it is written: module level, inside a function (the lazy imports that
keep the audio consumer light), under ``if TYPE_CHECKING:``, and ``importlib.import_module("x")``
with a literal name. Imports are resolved to project modules (``from actors import wire`` is the
module ``actors.wire``; ``from actors.tts import create_engine`` is the package ``actors.tts``).
Importing ``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``; those implicit edges are
not drawn, because a package that re-exports its own submodules would otherwise always be a circle.

The rules:

1. ``shm/`` imports nothing of ``actors/`` or ``supervisor.py``: the ring knows no actor.
2. The domain rooms (``actors/text``, ``actors/tts``, ``actors/audio``, ``actors/gpu``) are libraries,
   importable and testable without ZeroMQ: nothing they reach, directly or through other project
   modules, imports ``zmq`` or anything of the process side (``actors.runtime``, ``actors.wire``,
   the process modules, ``actors.client``, ``actors.cli``, ``supervisor``).
3. ``actors/wire.py`` imports nothing of the project: the protocol stands alone.
4. Only ``supervisor.py`` starts actor processes: no other module calls ``Process(...)``/
   ``get_context(...)`` of ``multiprocessing`` or refers to another module's ``run_<role>_process``.
5. No import circles among project modules (strongly connected components of the graph).
6. The audio consumer's process imports no engine: in a spawned interpreter, importing
   ``actors.audio_consumer`` and building an ``AudioConsumer`` (null sink) leaves none of torch,
   onnxruntime, piper, TTS (coqui), soxr or ``actors.tts`` in ``sys.modules``.
7. No library module in ``actors/`` (everything but the process rooms ``runtime``, ``wire``,
   ``text_source``, ``tts_worker``, ``audio_consumer``, ``client`` and the ``cli`` package) is over
   600 lines unless the first paragraph of its docstring says why: a line ``Size: <reason>``, or a
   reason that uses the word "lines".

The checker itself is tested first, on small trees written to a temporary directory, so a rule
that passes on the real tree passes because the tree obeys it, not because the checker saw nothing.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("actors", "shm", "config", "supervisor.py")

# Rule 7: the process rooms and what every process shares are exempt from the size rule.
PROCESS_ROOMS = (
    "actors.runtime",
    "actors.wire",
    "actors.text_source",
    "actors.tts_worker",
    "actors.audio_consumer",
    "actors.client",
    "actors.cli",
)
MAX_LIBRARY_LINES = 600
# Rule 2: the domain rooms are libraries; nothing of the process side may be reached from them.
DOMAIN_ROOMS = ("actors.text", "actors.tts", "actors.audio", "actors.gpu")
PROCESS_SIDE = (*PROCESS_ROOMS, "supervisor")
# Rule 6: what the audio consumer's process must never load (top-level names and prefixes).
CONSUMER_FORBIDDEN = ("torch", "onnxruntime", "piper", "TTS", "soxr", "actors.tts")
MP_STARTERS = {"Process", "SpawnProcess", "ForkProcess", "ForkServerProcess", "get_context"}
RUN_PROCESS = re.compile(r"run_\w+_process")


# ------------------------------------------------------------------------------------------------
# The import graph


@dataclass(frozen=True)
class Import:
    """One import statement (or ``importlib.import_module`` call) in ``importer``."""

    importer: str
    target: str  # a project module when ``internal``, else the dotted external module name
    internal: bool
    line: int
    source: str  # the statement as written, for failure messages
    where: str  # "module level", "in function f", "TYPE_CHECKING"

    def describe(self) -> str:
        return f"{self.importer} line {self.line} ({self.where}): `{self.source}`"


@dataclass
class ModuleInfo:
    name: str
    path: Path
    tree: ast.Module
    lines: int
    imports: list[Import] = field(default_factory=list)


@dataclass
class Graph:
    root: Path
    modules: dict[str, ModuleInfo]

    def internal_edges(self) -> dict[str, set[str]]:
        edges: dict[str, set[str]] = {m: set() for m in self.modules}
        for info in self.modules.values():
            for imp in info.imports:
                if imp.internal and imp.target != info.name:
                    edges[info.name].add(imp.target)
        return edges

    def first_import(self, importer: str, target: str) -> Import:
        return next(i for i in self.modules[importer].imports if i.internal and i.target == target)


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def discover(root: Path, scanned: Iterable[str] = SCANNED) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for entry in scanned:
        path = root / entry
        files = [path] if path.is_file() else sorted(path.rglob("*.py"))
        for f in files:
            if "__pycache__" not in f.parts:
                found[module_name(root, f)] = f
    return found


class _ImportCollector(ast.NodeVisitor):
    def __init__(self, name: str, is_package: bool, known: set[str], source: str) -> None:
        self.name = name
        self.package = name if is_package else name.rpartition(".")[0]
        self.known = known
        self.lines = source.splitlines()
        self.scope: list[str] = []
        self.type_checking = 0
        self.found: list[Import] = []

    # where we are ---------------------------------------------------------------------------
    def _where(self) -> str:
        if self.type_checking:
            return "TYPE_CHECKING"
        return f"in function {self.scope[-1]}" if self.scope else "module level"

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        is_tc = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )
        if not is_tc:
            self.generic_visit(node)
            return
        self.type_checking += 1
        for stmt in node.body:
            self.visit(stmt)
        self.type_checking -= 1
        for stmt in node.orelse:
            self.visit(stmt)

    # resolution -----------------------------------------------------------------------------
    def _project_module(self, dotted: str) -> str | None:
        """The longest prefix of ``dotted`` that is a project module."""
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            candidate = ".".join(parts[:n])
            if candidate in self.known:
                return candidate
        return None

    def _add(self, node: ast.AST, dotted: str, internal_hint: str | None = None) -> None:
        target = internal_hint or self._project_module(dotted)
        line = getattr(node, "lineno", 0)
        source = self.lines[line - 1].strip() if 0 < line <= len(self.lines) else dotted
        if any(f.line == line and f.target == (target or dotted) for f in self.found):
            return  # `from x import a, b`: one import of x
        self.found.append(
            Import(
                importer=self.name,
                target=target or dotted,
                internal=target is not None,
                line=line,
                source=source,
                where=self._where(),
            )
        )

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base_parts = self.package.split(".") if self.package else []
            if node.level > 1:
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
            base = ".".join([*base_parts, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        for alias in node.names:
            sub = f"{base}.{alias.name}" if base else alias.name
            if sub in self.known:  # `from actors import wire`: the submodule
                self._add(node, sub, sub)
            else:  # `from actors.tts import create_engine`: the module itself
                self._add(node, base)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in ("import_module", "__import__") and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
                self._add(node, arg.value)
        self.generic_visit(node)


def build_graph(root: Path, scanned: Iterable[str] = SCANNED) -> Graph:
    paths = discover(root, scanned)
    known = set(paths)
    modules: dict[str, ModuleInfo] = {}
    for name, path in paths.items():
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        collector = _ImportCollector(name, path.name == "__init__.py", known, source)
        collector.visit(tree)
        modules[name] = ModuleInfo(name, path, tree, len(source.splitlines()), collector.found)
    return Graph(root, modules)


@cache
def real_graph() -> Graph:
    return build_graph(ROOT)


def in_room(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


# ------------------------------------------------------------------------------------------------
# The rules: each returns one line per violation, naming the module and the import


def shm_imports_no_actor(graph: Graph) -> list[str]:
    return [
        f"shm must not import actors or the supervisor: {imp.describe()}"
        for info in graph.modules.values()
        if in_room(info.name, "shm")
        for imp in info.imports
        if imp.internal and (in_room(imp.target, "actors") or imp.target == "supervisor")
    ]


def chains_to(graph: Graph, start: str, bad: Callable[[Import], bool], stop: Iterable[str] = ()) -> list[str]:
    """Breadth-first from ``start`` over project imports: each import ``bad`` says yes to, with the
    chain of modules that reaches it (not descending into ``stop``)."""
    edges = graph.internal_edges()
    stop = set(stop)
    parent: dict[str, str | None] = {start: None}
    queue = [start]
    found: list[str] = []
    while queue:
        mod = queue.pop(0)
        for imp in graph.modules[mod].imports:
            if bad(imp):
                chain: list[str] = []
                at: str | None = mod
                while at is not None:
                    chain.append(at)
                    at = parent[at]
                found.append(f"{start} reaches {imp.target} via {' -> '.join(reversed(chain))}: {imp.describe()}")
        for nxt in sorted(edges[mod]):
            if nxt not in parent and nxt not in stop:
                parent[nxt] = mod
                queue.append(nxt)
    return found


def domain_rooms_stay_libraries(graph: Graph) -> list[str]:
    """Rule 2, transitively: each offending import with the chain that reaches it from a domain room."""

    def above(target: str) -> bool:
        return any(in_room(target, m) for m in PROCESS_SIDE)

    def bad(imp: Import) -> bool:
        return (imp.internal and above(imp.target)) or (not imp.internal and imp.target.split(".")[0] == "zmq")

    stop = [m for m in graph.modules if above(m)]  # reported once, at its door
    problems: list[str] = []
    for start in sorted(m for m in graph.modules if any(in_room(m, room) for room in DOMAIN_ROOMS)):
        problems += chains_to(graph, start, bad, stop=stop)
    return problems


def wire_stands_alone(graph: Graph) -> list[str]:
    info = graph.modules.get("actors.wire")
    if info is None:
        return ["actors/wire.py not found"]
    return [f"actors.wire must import nothing of the project: {imp.describe()}" for imp in info.imports if imp.internal]


def _psutil_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname or a.name for a in node.names if a.name == "psutil"}
        elif isinstance(node, ast.ImportFrom) and node.module == "psutil":
            names |= {a.asname or a.name for a in node.names}
    return names


def _root_name(expr: ast.expr) -> str:
    while isinstance(expr, (ast.Attribute, ast.Call, ast.Subscript)):
        expr = expr.func if isinstance(expr, ast.Call) else expr.value
    return expr.id if isinstance(expr, ast.Name) else ""


def only_supervisor_starts_processes(graph: Graph) -> list[str]:
    """Rule 4: ``X.Process(...)``/``Process(...)``/``get_context(...)`` (psutil's excepted), or a
    reference to a ``run_<role>_process`` defined in another module, outside ``supervisor.py``."""
    problems: list[str] = []
    for info in graph.modules.values():
        if info.name == "supervisor":
            continue
        psutil_names = _psutil_names(info.tree)
        defined = {n.name for n in ast.walk(info.tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        lines = info.path.read_text(encoding="utf-8").splitlines()

        def report(node: ast.AST, why: str, info: ModuleInfo = info, lines: list[str] = lines) -> None:
            line = getattr(node, "lineno", 0)
            problems.append(f"{info.name} line {line}: {why}: `{lines[line - 1].strip()}`")

        for node in ast.walk(info.tree):
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr in MP_STARTERS:
                    if _root_name(func) not in psutil_names:
                        report(node, f"starts a process ({func.attr}); only supervisor.py starts actors")
                elif isinstance(func, ast.Name) and func.id in MP_STARTERS and func.id not in psutil_names:
                    report(node, f"starts a process ({func.id}); only supervisor.py starts actors")
            elif isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if RUN_PROCESS.fullmatch(alias.name):
                        report(node, f"imports the entry point {alias.name}; only supervisor.py starts actors")
            elif isinstance(node, (ast.Name, ast.Attribute)):
                ident = node.id if isinstance(node, ast.Name) else node.attr
                if RUN_PROCESS.fullmatch(ident) and ident not in defined:
                    report(node, f"refers to the entry point {ident}; only supervisor.py starts actors")
    return sorted(set(problems))


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; returns the components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in edges:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                if len(comp) > 1:
                    components.append(sorted(comp))
    return sorted(components)


def shortest_circle(edges: dict[str, set[str]], members: set[str]) -> list[str]:
    """The shortest path from the first member back to itself inside one component."""
    start = min(members)
    parent: dict[str, str] = {}
    queue = [start]
    while queue:
        mod = queue.pop(0)
        for nxt in sorted(edges[mod] & members):
            if nxt == start:
                path = [mod]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if nxt not in parent:
                parent[nxt] = mod
                queue.append(nxt)
    raise AssertionError(f"no circle through {start}")  # a component of more than one always has one


def import_circles(graph: Graph) -> list[str]:
    edges = graph.internal_edges()
    problems = []
    for comp in strongly_connected(edges):
        circle = shortest_circle(edges, set(comp))
        steps = [graph.first_import(a, b).describe() for a, b in itertools.pairwise(circle)]
        problems.append(
            f"import circle {' -> '.join(circle)}:\n      "
            + "\n      ".join(steps)
            + (f"\n    (one of the circles among {', '.join(comp)})" if len(comp) > len(circle) - 1 else "")
        )
    return problems


def first_paragraph(tree: ast.Module) -> str:
    doc = ast.get_docstring(tree) or ""
    return re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0]


def size_reason(tree: ast.Module) -> str | None:
    para = first_paragraph(tree)
    for line in para.splitlines():
        m = re.match(r"\s*Size:\s*(\S.*)", line)
        if m:
            return m.group(1)
    return para if re.search(r"\blines\b", para) else None


def oversized_libraries(graph: Graph) -> list[str]:
    return [
        f"{info.name} ({info.path.relative_to(graph.root)}) is {info.lines} lines (> {MAX_LIBRARY_LINES}) and its "
        f"docstring's first paragraph gives no reason (a `Size: <reason>` line, or a reason naming its lines)"
        for info in sorted(graph.modules.values(), key=lambda i: i.name)
        if in_room(info.name, "actors")
        and not any(in_room(info.name, room) for room in PROCESS_ROOMS)
        and info.lines > MAX_LIBRARY_LINES
        and size_reason(info.tree) is None
    ]


RULES = {
    "shm imports nothing of actors": shm_imports_no_actor,
    "domain rooms import no zmq and nothing of the processes": domain_rooms_stay_libraries,
    "actors.wire imports nothing of the project": wire_stands_alone,
    "only supervisor.py starts actor processes": only_supervisor_starts_processes,
    "no import circles": import_circles,
    "library modules stay under 600 lines or say why": oversized_libraries,
}


def failure(rule: str, problems: list[str]) -> str:
    return f"layout rule broken: {rule}\n  - " + "\n  - ".join(problems)


# ------------------------------------------------------------------------------------------------
# The checker, on small trees with known answers


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return root


BAD_TREE = {
    "supervisor.py": """
        import multiprocessing
        from actors.role import run_role_process
        def start():
            return multiprocessing.get_context("spawn").Process(target=run_role_process)
    """,
    "actors/__init__.py": "",
    "actors/wire.py": "from config import settings\n",
    "actors/runtime.py": "import zmq\n",
    "actors/role.py": """
        import psutil
        def run_role_process():
            return psutil.Process().pid
    """,
    "actors/rogue.py": """
        import multiprocessing as mp
        from actors.role import run_role_process
        def go():
            mp.get_context("spawn")
            return run_role_process
    """,
    "actors/tts/__init__.py": "from .base import Engine\n",
    "actors/tts/base.py": """
        class Engine:
            def voices(self):
                from actors.tts import voices
                return voices
    """,
    "actors/tts/voices.py": """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from ..tts.base import Engine
        def load():
            from actors.helper import send
            return send
    """,
    "actors/helper.py": "from actors import runtime\ndef send(): ...\n",
    "actors/big.py": '"""A big library."""\n' + "x = 1\n" * 700,
    "actors/big_ok.py": '"""A big library.\nSize: one state machine; splitting it would scatter its invariants."""\n'
    + "x = 1\n" * 700,
    "actors/big_lines.py": '"""Long: its 700 lines are one table."""\n' + "x = 1\n" * 700,
    "shm/__init__.py": "",
    "shm/ring.py": "def f():\n    from actors.wire import X\n",
    "config/__init__.py": "",
    "config/settings.py": "import importlib\nimportlib.import_module('supervisor')\n",
}


def test_checker_resolves_imports(tmp_path: Path) -> None:
    graph = build_graph(write_tree(tmp_path, BAD_TREE))
    edges = graph.internal_edges()
    assert edges["actors.tts.voices"] == {"actors.tts.base", "actors.helper"}  # relative + TYPE_CHECKING + lazy
    assert edges["actors.tts.base"] == {"actors.tts.voices"}  # `from actors.tts import voices`: the submodule
    assert graph.first_import("actors.tts.base", "actors.tts.voices").where == "in function voices"
    assert edges["actors.tts"] == {"actors.tts.base"}
    assert edges["actors.helper"] == {"actors.runtime"}  # `from actors import runtime` is the submodule
    assert edges["config.settings"] == {"supervisor"}  # importlib.import_module with a literal
    assert graph.first_import("shm.ring", "actors.wire").where == "in function f"


def test_checker_finds_each_kind_of_violation(tmp_path: Path) -> None:
    graph = build_graph(write_tree(tmp_path, BAD_TREE))
    assert shm_imports_no_actor(graph) == [
        "shm must not import actors or the supervisor: shm.ring line 2 (in function f): `from actors.wire import X`"
    ]
    tts = domain_rooms_stay_libraries(graph)
    assert any(
        p.startswith("actors.tts.voices reaches actors.runtime via actors.tts.voices -> actors.helper:") for p in tts
    ), tts
    assert all("zmq" not in p for p in tts), tts  # runtime imports zmq, but the search stops at runtime
    assert wire_stands_alone(graph) == [
        "actors.wire must import nothing of the project: "
        "actors.wire line 1 (module level): `from config import settings`"
    ]
    starts = only_supervisor_starts_processes(graph)
    assert any(p.startswith("actors.rogue line 4: starts a process (get_context)") for p in starts), starts
    assert any(p.startswith("actors.rogue line 2: imports the entry point run_role_process") for p in starts), starts
    assert not any(p.startswith("actors.role") for p in starts), starts  # psutil.Process, own entry point
    circles = import_circles(graph)
    assert len(circles) == 1, circles
    assert circles[0].startswith("import circle actors.tts.base -> actors.tts.voices -> actors.tts.base:"), circles
    assert "actors.tts.base line 3 (in function voices)" in circles[0]  # function-level imports count
    assert "actors.tts.voices line 3 (TYPE_CHECKING)" in circles[0]  # and type-only ones
    big = oversized_libraries(graph)
    assert len(big) == 1 and big[0].startswith("actors.big (actors/big.py) is 701 lines"), big


def test_strongly_connected_components() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}, "g": set()}
    assert strongly_connected(edges) == [["a", "b", "c"], ["d", "e"]]
    chain = {str(i): {str(i + 1)} for i in range(3000)} | {"3000": {"0"}}  # deep: no recursion limit
    assert len(strongly_connected(chain)[0]) == 3001


# ------------------------------------------------------------------------------------------------
# The rules, on the real tree


def test_the_real_graph_is_seen() -> None:
    """Guards the rules below from passing on an empty or misread tree."""
    graph = real_graph()
    for expected in ("supervisor", "actors.wire", "actors.runtime", "actors.audio_consumer", "shm.ring"):
        assert expected in graph.modules, f"{expected} not found under {ROOT}"
    edges = graph.internal_edges()
    assert "actors.wire" in edges["supervisor"]
    assert any(in_room(t, "shm") for t in edges["actors.audio_consumer"])
    assert any(i.where.startswith("in function") for i in graph.modules["supervisor"].imports if i.internal)


@pytest.mark.parametrize("rule", list(RULES))
def test_layout_rule(rule: str) -> None:
    problems = RULES[rule](real_graph())
    assert not problems, failure(rule, problems)


CONSUMER_PROBE = """
import json, os, sys
sys.path.insert(0, os.getcwd())
os.environ["SKALD_AUDIO_SINK"] = "null"
import actors.audio_consumer as ac
from config.settings import load_settings
from shm import PcmRing

settings = load_settings()
name = f"skaldlayout-{os.getpid()}"
owner = PcmRing.create(name, 1 << 14, 22050, 0.5)  # the supervisor's part
try:
    ring = PcmRing.attach(name, "consumer")  # the consumer process's part, as in production
    try:
        consumer = ac.AudioConsumer(settings, ring, lambda msg: None)
        consumer.close()
    finally:
        ring.close()
finally:
    owner.close()
    owner.unlink()
forbidden = FORBIDDEN
print(json.dumps(sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden))))
"""


def test_audio_consumer_process_imports_no_engine() -> None:
    """Rule 6, in a fresh interpreter (as the spawn context gives the real process)."""
    code = CONSUMER_PROBE.replace("FORBIDDEN", repr(CONSUMER_FORBIDDEN))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKALD_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"building the audio consumer failed:\n{out.stderr[-3000:]}"
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    if loaded:
        # Name the imports that bring each one in, from the static graph.
        culprits = chains_to(
            real_graph(),
            "actors.audio_consumer",
            lambda imp: any(imp.target == m or imp.target.startswith(m + ".") for m in loaded),
        )
        pytest.fail(
            "the audio consumer's process loaded "
            + ", ".join(loaded)
            + "\n  imports of them that actors.audio_consumer reaches:\n  - "
            + "\n  - ".join(culprits or ["(none found statically: a dependency imports it)"])
        )


def test_architecture_doc_lists_every_module() -> None:
    """docs/architecture.md's module map stays the map of the tree: every module in it, no module
    that is gone."""
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    graph = real_graph()
    paths = {str(info.path.relative_to(ROOT)) for info in graph.modules.values()}
    listed = set(re.findall(r"^\| `([\w/]+\.py)` \|", doc, flags=re.MULTILINE))
    missing, gone = sorted(paths - listed), sorted(listed - paths)
    assert not missing, f"modules missing from docs/architecture.md's map (add a line each): {missing}"
    assert not gone, f"docs/architecture.md's map lists modules that are gone: {gone}"
