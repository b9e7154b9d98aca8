from dataclasses import FrozenInstanceError, dataclass
from pathlib import Path

import pytest

from mim.config import from_dict, to_dict
from mim.engine import OptimConfig
from mim.errors import ConfigError
from stages.common import load as load_section


@dataclass(frozen=True, kw_only=True)
class Inner:
    ratio: float = 0.75
    mode: str = "random"


@dataclass(frozen=True, kw_only=True)
class Outer:
    epochs: int
    inner: Inner = Inner()
    sizes: tuple[int, ...] = (1, 2)
    path: str | None = None


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


def test_loads_nested_and_coerces(tmp_path):
    p = write(tmp_path, "s:\n  epochs: 3\n  inner: {ratio: 1}\n  sizes: [4, 5, 6]\n")
    cfg = load_section(p, "s", Outer)
    assert cfg == Outer(epochs=3, inner=Inner(ratio=1.0), sizes=(4, 5, 6))
    assert isinstance(cfg.inner.ratio, float)
    with pytest.raises(FrozenInstanceError):
        cfg.epochs = 4  # type: ignore[misc]
    assert to_dict(cfg)["sizes"] == [4, 5, 6]


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, "s:\n  epochs: 3\n  inner: {ratoi: 0.5}\n")
    with pytest.raises(ConfigError, match=r"p\.yaml: s\.inner: unknown key\(s\) ratoi; valid keys: mode, ratio"):
        load_section(p, "s", Outer)


@pytest.mark.parametrize(
    "text, msg",
    [
        ("s:\n  epochs: '3'\n", r"s\.epochs: expected an integer, got '3'"),
        ("s:\n  epochs: true\n", r"s\.epochs: expected an integer"),
        ("s:\n  epochs: 1\n  inner: {ratio: high}\n", r"s\.inner\.ratio: expected a number"),
        ("s:\n  epochs: 1\n  sizes: 3\n", r"s\.sizes: expected a list"),
        ("s: {}\n", r"s\.epochs: required key is missing"),
        ("t: {}\n", r"missing section 's'"),
        ("s: [1\n", r"not valid YAML"),
    ],
)
def test_wrong_values_are_clear_errors(tmp_path, text, msg):
    with pytest.raises(ConfigError, match=msg):
        load_section(write(tmp_path, text), "s", Outer)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_section(tmp_path / "nope.yaml", "s", Outer)


def test_optional_and_tuple_pairs():
    cfg = from_dict(OptimConfig, {"epochs": 1, "batch_size": 8, "base_lr": 1e-3, "betas": [0.9, 0.999], "weight_decay_end": None})
    assert cfg.betas == (0.9, 0.999) and cfg.weight_decay_end is None
    with pytest.raises(ConfigError, match="expected 2 items"):
        from_dict(OptimConfig, {"epochs": 1, "batch_size": 8, "base_lr": 1e-3, "betas": [0.9]})
    with pytest.raises(ConfigError, match="is not one of 'adamw', 'sgd'"):
        from_dict(OptimConfig, {"epochs": 1, "batch_size": 8, "base_lr": 1e-3, "optimizer": "lamb"})
