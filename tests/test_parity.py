"""The parity report: the paper profile's recipe values against the values their sources state."""
from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from mim.report.flat import flatten
from mim.report.parity import MATCH, MISMATCH, NEW, OPERATIONAL, OPERATIONAL_SECTIONS, STATED, UNSOURCED, check
from stages.cli import main

ROOT = Path(__file__).resolve().parents[1]


def paper() -> dict:
    return yaml.safe_load((ROOT / "params/paper.yaml").read_text())


def test_the_paper_profile_matches_its_sources_and_every_key_is_recorded():
    rows = check(flatten(paper()))
    bad = [(k, v, s) for k, v, s, status, _ in rows if status in (MISMATCH, NEW)]
    assert bad == []
    statuses = {r[0]: r[3] for r in rows}
    assert statuses["mae.model.mask_ratio"] == MATCH and statuses["segment.slide_stride"] == MATCH
    assert statuses["img2vec.model.merge"] == UNSOURCED  # our reading: listed, with no stated value
    assert not set(statuses) & set(OPERATIONAL) and not [k for k in statuses if k.startswith(OPERATIONAL_SECTIONS)]
    assert len(rows) >= 150


def test_a_changed_value_and_an_unknown_key_are_flagged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = paper()
    p["mae"]["model"]["mask_ratio"] = 0.6
    p["segment"]["slide_stride"] = 341
    p["finetune"]["new_knob"] = 1
    Path("p.yaml").write_text(yaml.safe_dump(p))
    res = CliRunner().invoke(main, ["parity", "--params", "p.yaml", "--out", "parity.md"])
    assert res.exit_code == 0, res.output
    assert "3 differ or are not recorded" in res.output
    md = Path("parity.md").read_text()
    assert "| `mae.model.mask_ratio` | `0.6` | `0.75` | **differs** | MAE paper (arXiv 2111.06377)" in md
    assert "| `segment.slide_stride` | `341` | `256` | **differs** |" in md and "**2 differ**" in md
    assert "| `finetune.new_knob` | `1` |  | **not recorded** |" in md
    assert md.index("mae.model.mask_ratio") < md.index("dino.model.arch")  # mismatches first
    strict = CliRunner().invoke(main, ["parity", "--params", "p.yaml", "--out", "parity.md", "--strict"])
    assert strict.exit_code == 1 and "3 recipe value(s) differ" in strict.output.splitlines()[-1]


def test_every_stated_key_exists_in_the_paper_profile():
    assert sorted(set(STATED) - set(flatten(paper()))) == []
