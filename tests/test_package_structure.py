"""The package's shape: no import cycle, commands apart from the library, no cited document the repo lacks."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "fashioncap"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The fashioncap modules `path` imports anywhere in its body (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    graph = {name: imports_of(path, modules) - {name} for name, path in files.items()}
    for name in modules:  # importing a.b.c runs a/__init__ and a/b/__init__ first
        for edge in list(graph[name]):
            graph[name] |= {
                p for p in parents(edge) if p in modules and p != name and not name.startswith(p + ".")
            }
    return graph


def parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_library_never_imports_a_command():
    graph = import_graph()
    offenders = {
        name: sorted(m for m in deps if m.startswith("fashioncap.commands"))
        for name, deps in graph.items()
        if not name.startswith("fashioncap.commands")
        and name not in ("fashioncap.cli", "fashioncap.__main__")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_every_cited_document_is_in_the_repo():
    """Comments, docstrings and help texts cite the design notes as docs/NAME.md, and each one exists."""
    sources = [*REPO.glob("fashioncap/**/*.py"), *REPO.glob("recipes/**/*.y*ml"), *REPO.glob("recipes/*.py"),
               *REPO.glob("tests/*.py"), *REPO.glob("bench/*.py"), *REPO.glob("docs/*.md"), REPO / "README.md",
               REPO / "Makefile"]  # fmt: skip
    cited, stray = set(), []
    for path in [p for p in sources if p != Path(__file__)]:
        text = path.read_text(encoding="utf-8")
        cited |= set(re.findall(r"\bdocs/[\w-]+\.md\b", text))
        if re.search(r"(?<!docs/)\bdesign\.md|stack-notes|shared/docs", text):
            stray.append(path.relative_to(REPO).as_posix())
    assert not stray, f"cite a document outside docs/: {stray}"
    assert cited and not sorted(c for c in cited if not (REPO / c).is_file()), "cited docs/ files must exist"


def test_code_reads_nothing_beside_the_clone():
    """`make test` and `make bench` run on a clone alone: no code reads a path above the repository."""
    sources = [*REPO.glob("fashioncap/**/*.py"), *REPO.glob("bench/*.py"), *REPO.glob("tests/*.py"),
               *REPO.glob("recipes/**/*.py")]  # fmt: skip
    pattern = re.compile(r"shared/data|\.\./shared|parents\[[2-9]\]")
    outside = [
        p.relative_to(REPO).as_posix()
        for p in sources
        if p != Path(__file__) and pattern.search(p.read_text())
    ]
    assert not outside, f"reads beside the clone: {outside}"


def test_bench_records_come_from_the_repository(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    from bench.facad_records import facad_records

    records = facad_records(3000)
    assert len(records) == 3000 and len({r["id"] for r in records}) == 3000
    assert len({r["description"] for r in records}) > 0.95 * 3000  # cold caches stay (almost) cold
    assert facad_records(5) == facad_records()[:5]


# What only a model family module (fashioncap/models/<family>.py) may name: its classes and its submodules.
FAMILY_SPECIFIC = re.compile(
    r"\b(?:Blip|Florence2)[A-Z]\w*|\.(?:vision_model|text_decoder|vision_tower|language_model)\b"
)
FAMILY_NEUTRAL = [
    "fashioncap/trainer.py", "fashioncap/rl.py", "fashioncap/study.py", "fashioncap/report.py",
    "fashioncap/export.py", "fashioncap/app.py", "fashioncap/commands/caption.py", "fashioncap/inference.py",
    "fashioncap/decoding.py", "fashioncap/evaluation.py", "fashioncap/rewards", "fashioncap/metrics",
    "fashioncap/zero3.py", "fashioncap/collapse_guard.py",
]  # fmt: skip


def family_specific_names(text: str) -> list[str]:
    return FAMILY_SPECIFIC.findall(text)


def test_the_recipe_names_no_model_family_outside_the_family_modules():
    """The trainer, rewards, metrics, study, report, export, app, caption and the decoding engine go through
    `fashioncap.models` (docs/design.md, "Model families"): a second family is then a module, not edits there."""
    files = [p for entry in FAMILY_NEUTRAL for p in sorted((REPO / entry).rglob("*.py")) or [REPO / entry]]
    assert len(files) > len(FAMILY_NEUTRAL)
    offenders = {
        p.relative_to(REPO).as_posix(): names
        for p in files
        if (names := family_specific_names(p.read_text(encoding="utf-8")))
    }
    assert not offenders, f"family classes or submodules named outside fashioncap/models/: {offenders}"


def test_the_family_name_check_catches_classes_and_submodules():
    assert family_specific_names("model = BlipForConditionalGeneration(config)") == [
        "BlipForConditionalGeneration"
    ]
    assert family_specific_names("x = model.text_decoder.cls; y = m.vision_tower(p)") == [
        ".text_decoder",
        ".vision_tower",
    ]
    assert family_specific_names(
        "Florence2ForConditionalGeneration, BLIP's decoder, blip, vision_model="
    ) == ["Florence2ForConditionalGeneration"]
