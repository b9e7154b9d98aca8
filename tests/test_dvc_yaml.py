"""Static checks of dvc.yaml that keep a no-op `dvc repro` fast and the paper profile runnable."""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _deps() -> dict[str, list[str]]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, st in stages.items():
        body = st.get("do", st)
        out[name] = [d if isinstance(d, str) else next(iter(d)) for d in body.get("deps", [])]
    return out


def test_stages_read_data_through_the_manifest_only():
    # A data folder as a dependency makes DVC walk every image once per stage on each
    # `dvc repro`, and does not exist at all when the paper profile points at real roots.
    for name, deps in _deps().items():
        data = [d for d in deps if d.startswith("data")]
        assert data in ([], ["data/manifest.json"]), (name, data)


def test_dvc_parses_yaml_with_the_c_parser():
    from ruamel.yaml import YAML

    assert "CParser" in YAML(typ="safe").Parser.__name__  # ruamel.yaml.clib is installed
