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


def test_ranges_and_cross_field_checks_name_file_key_value_and_range(tmp_path):
    from mim.methods.mae import Config as MAESection

    def err(text: str) -> str:
        with pytest.raises(ConfigError) as e:
            load_section(write(tmp_path, text), "mae", MAESection)
        return str(e.value)

    optim = "optim: {epochs: 1, batch_size: 8, base_lr: 1.0e-3}"
    assert err(f"mae: {{model: {{mask_ratio: 1.2}}, {optim}}}") == f"{tmp_path / 'p.yaml'}: mae.model.mask_ratio: 1.2 is outside (0, 1)"
    assert "mae.model.mask_ratio: 0.0 is outside (0, 1)" in err(f"mae: {{model: {{mask_ratio: 0}}, {optim}}}")
    assert "mae.optim.base_lr: -0.1 is outside (0, inf)" in err("mae: {model: {}, optim: {epochs: 1, batch_size: 8, base_lr: -0.1}}")
    assert "mae.optim.epochs: 0 is outside [1, inf)" in err("mae: {model: {}, optim: {epochs: 0, batch_size: 8, base_lr: 0.1}}")
    assert "mae.optim: unknown key(s) accum_steps" in err(  # it follows from the processes and run.device_batch
        "mae: {model: {}, optim: {epochs: 1, batch_size: 8, accum_steps: 2, base_lr: 0.1}}")
    assert "mae.model.decoder_heads: 3 does not divide decoder_dim 32" in err(
        f"mae: {{model: {{decoder_dim: 32, decoder_heads: 3}}, {optim}}}")
    assert "mae.data.crop_scale: [0.5, 0.2] must be [lo, hi]" in err(f"mae: {{model: {{}}, data: {{crop_scale: [0.5, 0.2]}}, {optim}}}")
    assert "mae.model.mask_ratio: nan is outside" in err(f"mae: {{model: {{mask_ratio: .nan}}, {optim}}}")


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    cfg = from_dict(OptimConfig, {"epochs": 1, "batch_size": 8, "base_lr": "1e-3", "min_lr": "2E-5"})
    assert cfg.base_lr == 1e-3 and cfg.min_lr == 2e-5  # PyYAML reads 1e-3 (no dot) as a string
    with pytest.raises(ConfigError, match="expected a number, got 'fast'"):
        from_dict(OptimConfig, {"epochs": 1, "batch_size": 8, "base_lr": "fast"})


def test_every_default_satisfies_its_own_ranges():
    """The defaults are read back through from_dict: a default outside its declared range fails."""
    import dataclasses

    from mim.config import to_dict
    from stages.check_params import section_types

    for name, cls in section_types().items():
        if cls is None:
            continue
        names = {f.name for f in dataclasses.fields(cls)}
        missing = dataclasses.MISSING
        required = {f.name for f in dataclasses.fields(cls) if f.default is missing and f.default_factory is missing}
        base = {"optim": {"epochs": 1, "batch_size": 8, "base_lr": 0.1}} if "optim" in names else {}
        base.update({k: {} for k in required - {"optim"}})
        obj = from_dict(cls, base, where=name)
        assert from_dict(cls, to_dict(obj), where=name) == obj, name
