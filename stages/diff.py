"""`mimrepro diff [A] [B]`: which table cells moved between two results, and the params that differ.

A and B are each a results folder (holding results.json), a checkout (a folder with
results/results.json), a git revision, or the name of a DVC experiment (`dvc exp run -n NAME`,
found under the git refs DVC keeps them in, refs/exps/).  `workspace` is this checkout as it is on
disk.  Default: A = HEAD, B = workspace.  A side may list several, comma-separated (the seeds of
one experiment: `base-s0,base-s1,base-s2`): its cells are then mean ± std (n), and a move within
the seed noise is marked as such.  `--all-experiments` gives one row per experiment of HEAD (and
one for HEAD itself); with `--over run.seed` the experiments that differ only in the seed are
pooled into one row of mean ± std (n), HEAD left out.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import click

from mim.errors import MimError

RESULTS = "results/results.json"
PROFILE = "params/profile.yaml"
LOCK = "dvc.lock"
WORKSPACE = "workspace"


def _git(repo: Path, *args: str) -> str | None:
    try:
        p = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    except OSError:
        return None
    return p.stdout if p.returncode == 0 else None


def experiments(repo: Path, baseline: str | None = None) -> dict[str, str]:
    """DVC experiment name -> its git ref (refs/exps/<sha[:2]>/<sha[2:]>/<name>), of `baseline` if given."""
    out = _git(repo, "for-each-ref", "--format=%(refname)", "refs/exps") or ""
    refs = {}
    for ref in out.split():
        parts = ref.split("/")
        if len(parts) == 5 and (baseline is None or parts[2] + parts[3] == baseline):
            refs[parts[4]] = ref
    return refs


def _params(read: Any, where: str) -> dict[str, Any]:
    """The active profile's params, flattened, with the profile's name under `profile`."""
    from mim.report.flat import flatten
    from stages.common import yaml_text

    text = read(PROFILE)
    profile = yaml_text(text, f"{where}:{PROFILE}").get("profile", "smoke") if text is not None else "smoke"
    name = f"params/{profile}.yaml"
    body = read(name)
    return {"profile": profile, **flatten(yaml_text(body, f"{where}:{name}") if body is not None else {})}


def _lock(text: str | None, where: str) -> dict[str, Any] | None:
    """dvc.lock's `stages`, for which params each cell depends on; None when there is none to read."""
    from stages.common import yaml_text

    if text is None:
        return None
    stages = yaml_text(text, where).get("stages")
    return stages if isinstance(stages, dict) else None


def _values(text: str | None, where: str) -> dict[str, float]:
    from mim.config import parse_mapping

    if text is None:
        raise MimError(f"{where}: no {RESULTS} (it is written by the tables stage: run `dvc repro`, or pick a revision "
                       "made after the tables stage wrote it)")
    data = parse_mapping(text, where)
    return {str(k): float(v) for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def load_side(spec: str, repo: Path) -> Any:
    """The Side `spec` names (see the module docstring); a one-line MimError when it names none."""
    from mim.report.diff import Side, pool

    path = Path(spec)
    if "," in spec and not path.exists():
        parts = [p for p in spec.split(",") if p]
        return pool(spec, [load_side(p, repo) for p in parts]) if len(parts) > 1 else load_side(parts[0], repo)
    if spec == WORKSPACE:
        path = repo
    if path.is_dir():
        folder = path if (path / "results.json").is_file() or not (path / RESULTS).is_file() else path / "results"
        checkout = folder.parent if (folder.parent / PROFILE).is_file() else None

        def read_file(rel: str) -> str | None:
            p = (checkout or folder) / rel
            return p.read_text() if checkout is not None and p.is_file() else None

        results = folder / "results.json"
        values = _values(results.read_text() if results.is_file() else None, str(folder))
        return Side(spec, values, _params(read_file, str(checkout)) if checkout is not None else {},
                    _lock(read_file(LOCK), f"{checkout}/{LOCK}") if checkout is not None else None)
    rev = spec
    refs = experiments(repo)
    if _git(repo, "rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}") is None:
        if spec not in refs:
            raise MimError(f"{spec!r} is not a results folder, a git revision or a DVC experiment of {repo.resolve()} "
                           f"(experiments: {', '.join(sorted(refs)) or 'none'})")
        rev = refs[spec]
    sha = (_git(repo, "rev-parse", "--short", f"{rev}^{{commit}}") or "").strip()

    def read_rev(rel: str) -> str | None:
        return _git(repo, "show", f"{rev}:{rel}")

    name = spec if spec.startswith(sha) else f"{spec} ({sha})"
    return Side(name, _values(read_rev(RESULTS), f"{spec}:{RESULTS}"), _params(read_rev, spec), _lock(read_rev(LOCK), f"{spec}:{LOCK}"))


@click.command("diff")
@click.argument("a", required=False, default="HEAD")
@click.argument("b", required=False, default=WORKSPACE)
@click.option("--threshold", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Mark (and list) only cells that moved by more than this (points of the table's unit).")
@click.option("--all", "all_cells", is_flag=True, help="List every cell, not only the moved ones.")
@click.option("--md", "markdown", is_flag=True, help="Markdown instead of aligned text.")
@click.option("--all-experiments", is_flag=True,
              help="One row per DVC experiment of HEAD (and HEAD): the params and cells that differ.")
@click.option("--sort-by", metavar="CELL", help="With --all-experiments: sort the rows by this cell, highest first.")
@click.option("--over", "over", multiple=True, metavar="PARAM",
              help="With --all-experiments: pool the experiments that differ only in PARAM (e.g. run.seed) into "
                   "one row of mean ± std (n). Repeatable.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="PNG",
              help="With --all-experiments: also draw the rows as bars, one panel per cell that differs "
                   "(error bars: the std over seeds of a pooled row).")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("."),
              help="The checkout whose revisions and experiments A and B name.")
def diff(a: str, b: str, threshold: float, all_cells: bool, markdown: bool, all_experiments: bool, sort_by: str | None,
         over: tuple[str, ...], plot: Path | None, repo: Path) -> None:
    """Which cells of which table moved from A to B (default: HEAD to the workspace), and the params that differ."""
    from mim.report.diff import group_by, render, render_many

    if all_experiments:
        head = (_git(repo, "rev-parse", "HEAD") or "").strip()
        sides = [load_side(n, repo) for n in sorted(experiments(repo, head))]
        if not over:  # the baseline row, when it holds results (pooled, it would count as one more seed)
            try:
                sides.append(load_side("HEAD", repo))
            except MimError:
                pass
        if not sides:
            raise MimError(f"{repo.resolve()}: no experiment of HEAD and no results (run `dvc exp run`)")
        if sort_by is not None and not any(sort_by in s.values for s in sides):
            raise MimError(f"--sort-by {sort_by}: no such cell (cells look like finetune/mae/top1)")
        unknown = [k for k in over if not any(k in s.params for s in sides)]
        if unknown:
            raise MimError(f"--over {unknown[0]}: no such param in these experiments (params look like run.seed)")
        rows = group_by(sides, over) if over else sides
        click.echo(render_many(rows, sort_by=sort_by, markdown=markdown), nl=False)
        if plot is not None:
            from mim.report.plots import bar_chart

            cells = sorted(k for k in {k for s in rows for k in s.values} if len({s.cell(k) for s in rows}) > 1)
            table = [[s.name, *(repr(s.values[k]) if k in s.values else "n/a" for k in cells)] for s in rows]
            errors = {(s.name, k): s.std[k] for s in rows for k in cells if s.n.get(k, 1) > 1}
            bar_chart(["experiment", *cells], table, plot, title=f"experiments of HEAD in {repo.resolve().name}", errors=errors)
            click.echo(f"{len(cells)} cells, {len(rows)} rows -> {plot}")
        return
    if plot is not None:
        raise MimError("--plot goes with --all-experiments")
    click.echo(render(load_side(a, repo), load_side(b, repo), threshold, markdown, all_cells), nl=False)
