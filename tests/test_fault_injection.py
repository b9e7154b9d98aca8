"""Kill each training stage a random time after a checkpoint write (SIGKILL, SIGTERM or SIGINT),
rerun it, and compare its outputs with an uninterrupted run: one point per stage here, seeded;
`python scripts/soak.py --rounds N` tries many more (scripts/soak.py)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _soak():
    spec = importlib.util.spec_from_file_location("soak", ROOT / "scripts" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module
    spec.loader.exec_module(module)
    return module


def test_killed_training_stages_resume_to_identical_outputs(tmp_path):
    soak = _soak()
    ws = soak.workspace(tmp_path / "ws")
    lines: list[str] = []
    failures = soak.soak(ws, list(soak.STAGES), rounds=1, seed=2026, log=lines.append)
    assert not failures, "\n".join(lines)
    assert sum("resumed" in line for line in lines) == len(soak.STAGES), lines
