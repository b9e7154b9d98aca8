"""Which cells of which table moved between two results, and which params differ.

A side is what `mimrepro diff` read for one revision: its `results/results.json` (the flat
`<task>/<student>/<metric>` and `diversity/<teacher>/<metric>` values the tables stage writes)
and its params (the active profile's file, flattened to dotted keys).  Several revisions that
differ only in their seed pool into one side (`pool`): each cell is then the mean, with the sample
std and the count n, and a move between two pooled sides is called seed noise when it is within
two standard errors of the difference, 2 * sqrt(sA^2/nA + sB^2/nB).  Everything here works on that
plain data; stages/diff.py finds and reads the sides (folders, git revisions, experiments).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

MISSING = "-"  # a cell or param one side does not have

# The tables of results/, by the first part of a key: results.md holds every task but the teacher table's.
TABLES = {"diversity": "teacher table (results/teachers.md)"}
MAIN_TABLE = "main table (results/results.md)"
# Where the cells of a task come from, when not from metrics/<task>/<name>.json (dvc.yaml's paths).
CELL_FILES = {"pretrain": "models/{1}/encoder.safetensors"}


@dataclass(frozen=True)
class Side:
    name: str  # how the user named it: a folder, a revision, an experiment, "workspace"
    values: dict[str, float]  # results.json
    params: dict[str, Any] = field(default_factory=dict)  # flattened params of its profile
    lock: dict[str, Any] | None = None  # its dvc.lock `stages` (which params each cell depends on), when known
    std: dict[str, float] = field(default_factory=dict)  # pooled sides: the sample std of each cell
    n: dict[str, int] = field(default_factory=dict)  # pooled sides: how many revisions had the cell (else 1)

    def cell(self, key: str) -> str:
        v = self.values.get(key)
        if v is None or self.n.get(key, 1) < 2:
            return _num(v)
        return f"{_num(v)} ± {_num(self.std[key])} ({self.n[key]})"


VARIES = "varies"  # a pooled side's param whose revisions disagree (the seed)


def pool(name: str, sides: list[Side]) -> Side:
    """Mean, sample std and n of each cell over `sides` (e.g. the seeds of one experiment)."""
    values, std, n = {}, {}, {}
    for key in sorted({k for s in sides for k in s.values}):
        xs = [s.values[key] for s in sides if key in s.values]
        # statistics' exact arithmetic: equal values pool to themselves with std 0, not 1e-18 (a cell that "varies")
        values[key], n[key] = statistics.mean(xs), len(xs)
        std[key] = statistics.stdev(xs) if len(xs) > 1 else 0.0
    keys = {k for s in sides for k in s.params}
    params = {k: sides[0].params.get(k, MISSING) if len({repr(s.params.get(k, MISSING)) for s in sides}) == 1 else VARIES
              for k in sorted(keys)}
    return Side(name, values, params, sides[0].lock, std, n)


@dataclass(frozen=True)
class Cell:
    key: str
    a: float | None
    b: float | None
    noise: float | None = None  # two standard errors of the change, when a side pools seeds

    @property
    def change(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a

    def moved(self, threshold: float) -> bool:
        """Changed by more than `threshold` (or present on one side only)."""
        if self.a is None or self.b is None:
            return True
        if math.isnan(self.a) or math.isnan(self.b):
            return math.isnan(self.a) != math.isnan(self.b)
        return abs(self.b - self.a) > threshold

    def within_noise(self) -> bool:
        change = self.change
        return self.noise is not None and change is not None and abs(change) <= self.noise


def _noise(a: Side, b: Side, key: str) -> float | None:
    na, nb = a.n.get(key, 1), b.n.get(key, 1)
    if max(na, nb) < 2:
        return None
    # a side of one revision takes the other's spread as its own: the same seed noise applies to it
    sa = a.std.get(key) if na > 1 else b.std.get(key)
    sb = b.std.get(key) if nb > 1 else a.std.get(key)
    return 2 * math.sqrt((sa or 0.0) ** 2 / na + (sb or 0.0) ** 2 / nb)


def table_of(key: str) -> str:
    return TABLES.get(key.split("/", 1)[0], MAIN_TABLE)


def compare(a: Side, b: Side) -> dict[str, list[Cell]]:
    """Table title -> its cells (every key of either side), in key order."""
    tables: dict[str, list[Cell]] = {}
    for key in sorted(set(a.values) | set(b.values)):
        tables.setdefault(table_of(key), []).append(Cell(key, a.values.get(key), b.values.get(key), _noise(a, b, key)))
    return dict(sorted(tables.items(), key=lambda kv: kv[0] != MAIN_TABLE))


def params_diff(a: Side, b: Side) -> list[tuple[str, Any, Any]]:
    """(key, A's value, B's value) of every param that differs, MISSING where a side lacks it."""
    keys = sorted(set(a.params) | set(b.params))
    return [(k, a.params.get(k, MISSING), b.params.get(k, MISSING)) for k in keys if a.params.get(k, MISSING) != b.params.get(k, MISSING)]


def depends_on(lock: dict[str, Any], cells: list[str]) -> set[str]:
    """The params keys (as dvc.lock lists them: `mae`, `run.seed`) that the stages behind `cells` read,
    through every stage upstream of them.  A cell `<task>/<name>/<metric>` comes from the stage whose
    outputs hold `metrics/<task>/<name>.json` (`pretrain` cells: `models/<name>/encoder.safetensors`,
    mim/report/tables.encoder_values); a stage is upstream when one of its outputs is a dep."""
    producer = {o["path"].rstrip("/"): name for name, st in lock.items() for o in st.get("outs", [])}
    files = {CELL_FILES.get(k[0], "metrics/{}/{}.json").format(*k[:2]) for k in (c.split("/") for c in cells) if len(k) >= 3}
    todo = [producer[p] for p in files if p in producer]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for d in lock[name].get("deps", []):
            path = d["path"].rstrip("/")
            # a dep is an output of the stage that wrote it, or lies inside an output folder (data/manifest.json)
            up = producer.get(path) or next((s for o, s in producer.items() if path.startswith(o + "/")), None)
            if up is not None:
                todo.append(up)
    return {k for name in seen for keys in lock[name].get("params", {}).values() for k in keys}


def _reads(key: str, keys: set[str]) -> bool:
    return any(key == k or key.startswith(k + ".") for k in keys)


def _num(x: float | None, signed: bool = False) -> str:
    if x is None:
        return MISSING
    return f"{x:+.4g}" if signed else f"{x:.4g}"


def render(a: Side, b: Side, threshold: float = 0.0, markdown: bool = False, all_cells: bool = False) -> str:
    """Each table's cells with A, B and the change; `*` marks a cell that moved more than `threshold`
    and, where a side pools seeds, more than the seed noise (`~`: moved, but within it).

    Unless `all_cells`, a table lists only its moved cells (and says how many did not move)."""
    lines = [f"A: `{a.name}`  ", f"B: `{b.name}`", ""] if markdown else [f"A: {a.name}", f"B: {b.name}", ""]
    moved_cells: list[str] = []
    for title, cells in compare(a, b).items():
        moved = [c for c in cells if c.moved(threshold)]
        moved_cells += [c.key for c in moved]
        shown = cells if all_cells else moved
        still = len(cells) - len(moved)
        lines.append(f"## {title}" if markdown else title)
        lines.append(f"{len(moved)} of {len(cells)} cells moved" + (f" by more than {threshold:g}" if threshold else "")
                     + (f"; {still} did not" if still and not all_cells else "") + ".")
        if shown:
            rows = [(c.key, a.cell(c.key), b.cell(c.key), _num(c.change, signed=True), _mark(c, threshold)) for c in shown]
            lines += _grid(("cell", "A", "B", "change", "moved"), rows, markdown)
            if any(c.noise is not None for c in shown):
                lines.append("mean ± std (n) over seeds; `~`: moved, but within two standard errors (seed noise); "
                             "`*`: moved by more.")
        only = [f"{c.key} (only in {'B' if c.a is None else 'A'})" for c in cells if c.a is None or c.b is None]
        if only:
            lines.append("On one side only: " + ", ".join(only) + ".")
        lines.append("")
    diffs = params_diff(a, b)
    lines.append("## params that differ" if markdown else "params that differ")
    lock = b.lock if b.lock is not None else a.lock
    keys = depends_on(lock, moved_cells) if lock is not None and moved_cells else None

    def show(x: Any) -> str:
        return repr(x) if isinstance(x, str) and x != MISSING else str(x)

    if diffs and keys is not None:  # which of them the moved cells read, through the stages upstream of them
        rows = [(k, show(x), show(y), "yes" if _reads(k, keys) else "no") for k, x, y in diffs]
        lines += _grid(("param", "A", "B", "moved cells read it"), rows, markdown)
    elif diffs:
        lines += _grid(("param", "A", "B"), [(k, show(x), show(y)) for k, x, y in diffs], markdown)
    else:
        lines.append("none")
    if not moved_cells:
        lines += ["", "No cell moved" + (f" by more than {threshold:g}" if threshold else "") + "."]
    return "\n".join(lines) + "\n"


def _mark(c: Cell, threshold: float) -> str:
    if not c.moved(threshold):
        return ""
    return "~" if c.within_noise() else "*"


def group_by(sides: list[Side], over: tuple[str, ...]) -> list[Side]:
    """Sides whose params agree on everything but the keys `over` (e.g. run.seed), pooled."""
    groups: dict[str, list[Side]] = {}
    for s in sides:
        groups.setdefault(repr(sorted((k, repr(v)) for k, v in s.params.items() if k not in over)), []).append(s)
    return [g[0] if len(g) == 1 else pool(" + ".join(s.name.split(" (")[0] for s in g), g) for g in groups.values()]


def render_many(sides: list[Side], sort_by: str | None = None, markdown: bool = False) -> str:
    """One row per side, a column per param that differs across them and per cell that does, or that
    varies within a pooled side (one recipe over seeds is one row: its cells that the seed moves);
    a pooled side's cells read mean ± std (n)."""
    params = sorted(k for k in {k for s in sides for k in s.params} if len({repr(s.params.get(k, MISSING)) for s in sides}) > 1)
    cells = sorted(k for k in {k for s in sides for k in s.values}
                   if len({s.cell(k) for s in sides}) > 1 or any(s.n.get(k, 1) > 1 and s.std.get(k, 0.0) > 0 for s in sides))
    if sort_by is not None:
        sides = sorted(sides, key=lambda s: (s.values.get(sort_by) is None, -(s.values.get(sort_by) or 0.0)))
    rows = [(s.name, *(str(s.params.get(k, MISSING)) for k in params), *(s.cell(k) for k in cells)) for s in sides]
    header = ("experiment", *params, *cells)
    return "\n".join(_grid(header, rows, markdown)) + "\n" + ("" if cells else "\nNo cell differs across them.\n")


def _grid(header: tuple[str, ...], rows: list[tuple[str, ...]], markdown: bool) -> list[str]:
    if markdown:
        from mim.report.tables import to_markdown  # the results table's own Markdown

        return to_markdown(list(header), [list(r) for r in rows]).splitlines()
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    def line(r: tuple[str, ...]) -> str:
        return "  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w) for i, (x, w) in enumerate(zip(r, widths, strict=True))).rstrip()
    return [line(header)] + [line(r) for r in rows]
