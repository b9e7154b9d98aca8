"""The code dependencies of dvc.yaml's stages, from the import graph of each stage's command.

    python scripts/dvc_deps.py           # rewrite the code entries of every stage's deps
    python scripts/dvc_deps.py --check   # list where dvc.yaml differs (exit 1), change nothing

A stage's code is the `stages/` module of its `mimrepro` command and every project module
(mim/, stages/, downstream/) that it imports, transitively: imports inside functions count,
`if TYPE_CHECKING:` ones do not, and a module brings its packages' __init__.py.  A command that
imports a module chosen at run time says which in a `RUNTIME_IMPORTS(args)` function beside it
(pretrain-student: the module of --method).  stages/cli.py only registers the commands and is
not counted.

For a foreach stage the code is checked per item: each item's rendered deps must cover its
code (a folder covers the files in it), and every written code file must be code of some item.
Entries with `${...}` (mim/methods/${item.method}.py) and data entries are kept as written;
`--write` replaces the plain code entries by the union over the items, less what the
interpolated and folder entries already cover.
"""
from __future__ import annotations

import argparse
import ast
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mim", "stages", "downstream")
NOT_COUNTED = {"stages/cli.py"}


# --- the import graph ---------------------------------------------------------------------------
def module_path(name: str, root: Path = ROOT) -> Path | None:
    """The file of project module `name` (a package's __init__.py), or None outside the project."""
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = root.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(path: Path, name: str, root: Path = ROOT) -> set[str]:
    """Project modules imported anywhere in `path` (module `name`), except under `if TYPE_CHECKING:`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {m for m in found if module_path(m, root) is not None}


def closure(modules: list[str], root: Path = ROOT) -> set[str]:
    """Files (repo-relative) of `modules`, of everything they import, and of their packages."""
    files: set[str] = set()
    todo = list(modules)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_path(name, root)
        if path is None:
            continue
        files.add(path.relative_to(root).as_posix())
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        todo += sorted(imported_modules(path, name, root))
    return files - NOT_COUNTED


def command_code(cmd: str, root: Path = ROOT) -> set[str]:
    """Code files of one rendered `mimrepro ...` command line."""
    words = shlex.split(cmd)
    if len(words) < 2 or words[0] != "mimrepro":
        raise ValueError(f"not a mimrepro command: {cmd!r}")
    from stages.cli import main  # the commands as the CLI registers them

    command = main.commands.get(words[1])
    if command is None or command.callback is None:
        raise ValueError(f"unknown mimrepro command {words[1]!r} in {cmd!r}")
    module = command.callback.__module__
    args = dict(zip(words[2::2], words[3::2]))
    extra = getattr(sys.modules[module], "RUNTIME_IMPORTS", None)
    return closure([module, *(extra(args) if extra else [])], root)


# --- dvc.yaml -----------------------------------------------------------------------------------
VAR = re.compile(r"\$\{([^}]+)\}")


def render(text: str, context: dict[str, Any]) -> str:
    def value(m: re.Match[str]) -> str:
        node: Any = context
        for part in m.group(1).strip().split("."):
            node = node[part]
        return str(node)

    return VAR.sub(value, text)


def variables(doc: dict[str, Any], root: Path) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for entry in doc.get("vars", []):
        if isinstance(entry, str):  # a params file, e.g. params/profile.yaml
            out.update(yaml.safe_load((root / entry).read_text()))
        else:
            out.update(entry)
    return out


@dataclass
class Instance:
    """One expanded stage (`finetune@mae`): its rendered command and deps."""

    name: str
    cmd: str
    deps: list[str]
    context: dict[str, Any] = field(default_factory=dict)


def instances(name: str, stage: dict[str, Any], env: dict[str, Any]) -> list[Instance]:
    body = stage.get("do", stage)
    deps = [d if isinstance(d, str) else next(iter(d)) for d in body.get("deps", [])]
    if "foreach" not in stage:
        return [Instance(name, render(body["cmd"], env), [render(d, env) for d in deps], env)]
    items = stage["foreach"]
    if isinstance(items, str):
        items = env[VAR.fullmatch(items.strip()).group(1)]  # type: ignore[union-attr]
    pairs = items.items() if isinstance(items, dict) else ((i, i) for i in items)
    out = []
    for key, item in pairs:
        ctx = {**env, "key": key, "item": item}
        out.append(Instance(f"{name}@{key}", render(body["cmd"], ctx), [render(d, ctx) for d in deps], ctx))
    return out


def is_code(dep: str) -> bool:
    return dep.endswith(".py") and dep.split("/")[0] in PACKAGES


def covered(file: str, deps: list[str], root: Path) -> bool:
    return file in deps or any((root / d).is_dir() and file.startswith(d.rstrip("/") + "/") for d in deps)


def written_deps(stage: dict[str, Any]) -> list[str]:
    body = stage.get("do", stage)
    return [d if isinstance(d, str) else next(iter(d)) for d in body.get("deps", [])]


def analyse(names: list[str], doc: dict[str, Any], env: dict[str, Any], root: Path) -> tuple[set[str], list[str]]:
    """For stages sharing one body: (the plain code entries it needs, problems with what it lists).

    Problems: an instance imports a file its deps do not cover (a dependency missing), or a plain
    code entry is imported by no instance (a stale one)."""
    written = written_deps(doc["stages"][names[0]])
    kept = [d for d in written if "${" in d or not is_code(d)]  # interpolated and data entries stay
    needed: set[str] = set()
    imported: set[str] = set()
    problems = []
    for name in names:
        for inst in instances(name, doc["stages"][name], env):
            code = command_code(inst.cmd, root)
            imported |= code
            missing = sorted(f for f in code if not covered(f, inst.deps, root))
            if missing:
                problems.append(f"{inst.name}: imports {', '.join(missing)} but does not depend on it")
            rendered = [render(d, inst.context) for d in kept]
            needed |= {f for f in code if not covered(f, rendered, root)}
    for d in written:
        if is_code(d) and "${" not in d and d not in imported:
            problems.append(f"{'/'.join(names)}: depends on {d}, which its command does not import")
    return needed, problems


def stage_bodies(doc: dict[str, Any]) -> list[list[str]]:
    """Stage names grouped by body: stages sharing one (a YAML anchor) are one group."""
    shared: dict[int, list[str]] = {}
    for name, stage in doc["stages"].items():
        shared.setdefault(id(stage.get("do", stage)), []).append(name)
    return list(shared.values())


def check(path: Path = ROOT / "dvc.yaml", root: Path = ROOT) -> list[str]:
    """Problems of dvc.yaml's code dependencies (empty: they are exactly the import graph)."""
    import yaml

    doc = yaml.safe_load(path.read_text())
    env = variables(doc, root)
    return [p for names in stage_bodies(doc) for p in analyse(names, doc, env, root)[1]]


def write(path: Path = ROOT / "dvc.yaml", root: Path = ROOT) -> list[str]:
    """Rewrite the plain code entries of every stage's deps, in place: only the lines of those deps
    blocks change (comments, anchors and the rest of the file stay as written).  Returns the
    stages changed."""
    import yaml
    from ruamel.yaml import YAML

    text = path.read_text()
    plain_doc = yaml.safe_load(text)
    env = variables(plain_doc, root)
    positions = YAML().load(text)  # round-trip nodes know their line numbers
    lines = text.split("\n")
    edits = []
    for names in stage_bodies(plain_doc):
        needed, _ = analyse(names, plain_doc, env, root)
        old = written_deps(plain_doc["stages"][names[0]])
        templated = [d for d in old if "${" in d and is_code(d)]
        others = [d for d in old if not is_code(d)]
        new = templated + sorted(needed) + others
        if new == old:
            continue
        body = positions["stages"][names[0]]
        body = body.get("do", body)
        key_line, key_col = body.lc.key("deps")
        seq = body["deps"]
        last = seq.lc.item(len(seq) - 1)[0] if len(seq) else key_line
        block = [" " * key_col + "deps:"] + [" " * (key_col + 2) + f"- {d}" for d in new]
        edits.append((key_line, last, block))
        edits[-1] += ("/".join(names),)
    for first, last, block, _ in sorted(edits, reverse=True):
        lines[first : last + 1] = block
    path.write_text("\n".join(lines))
    return [e[3] for e in sorted(edits)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report differences, change nothing")
    parser.add_argument("--dvc-yaml", type=Path, default=ROOT / "dvc.yaml")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.check:
        problems = check(args.dvc_yaml)
        for p in problems:
            print(p)
        return 1 if problems else 0
    changed = write(args.dvc_yaml)
    print(f"{args.dvc_yaml}: code deps rewritten for {', '.join(changed) if changed else 'no stage (already the import graph)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
