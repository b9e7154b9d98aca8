"""dvc.yaml stays true: code deps are the import graph, params deps the keys that change results,
stages in pipeline order, data read through the manifest only."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import dvc_deps  # noqa: E402

PROFILES = ("smoke", "micro", "paper")


def _stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _deps() -> dict[str, list[str]]:
    return {name: dvc_deps.written_deps(st) for name, st in _stages().items()}


def test_code_deps_are_the_import_graph():
    assert dvc_deps.check() == []


def test_check_fails_when_a_dependency_is_removed_or_stale(tmp_path):
    text = (ROOT / "dvc.yaml").read_text()
    finetune = text.index("  finetune:")
    line = text.index("        - mim/engine.py\n", finetune)
    removed = tmp_path / "dvc.yaml"
    removed.write_text(text[:line] + text[line + len("        - mim/engine.py\n"):])
    problems = dvc_deps.check(removed)
    assert problems and all("mim/engine.py" in p for p in problems)
    assert any(p.startswith("finetune@mae: imports mim/engine.py") for p in problems)
    assert any(p.startswith("finetune-sweep@img2vec-mae_vit") for p in problems)  # the shared body, both stages

    stale = tmp_path / "stale.yaml"
    stale.write_text(text[:line] + "        - mim/report/tables.py\n" + text[line:])
    assert dvc_deps.check(stale) == ["finetune/finetune-sweep: depends on mim/report/tables.py, which its command does not import"]

    dvc_deps.write(removed)  # the writer puts it back, and changes nothing else
    assert removed.read_text() == text


def test_import_graph_follows_function_level_imports_not_type_checking(tmp_path):
    pkg = tmp_path / "mim"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mim import c\n"
                              "def f():\n    from mim.b import g\n")
    (pkg / "b.py").write_text("def g():\n    pass\n")
    (pkg / "c.py").write_text("")
    assert dvc_deps.closure(["mim.a"], tmp_path) == {"mim/__init__.py", "mim/a.py", "mim/b.py"}


def test_pretrain_depends_on_its_own_method_only():
    pretrain = _deps()["pretrain"]
    assert "mim/methods/${item.method}.py" in pretrain
    assert not [d for d in pretrain if d.startswith("mim/methods/") and d != "mim/methods/__init__.py" and "${" not in d]


def test_stages_in_pipeline_order():
    """Every file a stage reads that another stage writes comes from a stage listed above it."""
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    env = dvc_deps.variables(doc, ROOT)
    order = list(doc["stages"])
    writer: dict[str, str] = {}
    reads: list[tuple[str, str]] = []
    for name, st in doc["stages"].items():
        body = st.get("do", st)
        outs = [o if isinstance(o, str) else next(iter(o)) for o in body.get("outs", []) + body.get("metrics", [])]
        for inst in dvc_deps.instances(name, st, env):
            writer.update({dvc_deps.render(o, inst.context): name for o in outs})
            reads += [(name, d) for d in inst.deps]
    checked = 0
    for name, dep in reads:
        for out, producer in writer.items():
            if dep == out or dep.startswith(out + "/") or out.startswith(dep + "/"):
                assert order.index(producer) <= order.index(name), f"{name} reads {dep}, written by {producer} listed below it"
                checked += 1
    assert checked > 30  # models, metrics folders and the manifest were all found


def test_params_deps_are_result_keys_never_the_whole_run_section():
    allowed_run = {"run.seed", "run.amp"}  # mim.engine.RunConfig: threads, workers, device_batch change speed only
    whole_file = []
    for name, st in _stages().items():
        body = st.get("do", st)
        if "params/${profile}.yaml" in body.get("deps", []):
            whole_file.append(name)  # the stage that checks every key: the file itself is its dependency
        assert all(v is not None for entry in body.get("params", []) for v in entry.values()), name  # no "every key"
        keys = [k for entry in body.get("params", []) for v in entry.values() for k in v]
        assert "run" not in keys and set(k for k in keys if k.startswith("run.")) <= allowed_run, (name, keys)
    assert whole_file == ["check-params"] and "params" not in _stages()["check-params"]


@pytest.mark.parametrize("profile", PROFILES)
def test_every_students_method_is_registered_and_has_a_section(profile):
    from mim.methods import METHODS

    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    env = dvc_deps.variables(doc, ROOT)
    params = yaml.safe_load((ROOT / f"params/{profile}.yaml").read_text())
    for group in ("students", "sweep"):
        for student, item in env[group].items():
            assert item["method"] in METHODS, (student, item)
            assert item["method"] in params, f"params/{profile}.yaml has no section for method {item['method']}"
    assert set(METHODS) <= params.keys(), f"params/{profile}.yaml lacks a section for {set(METHODS) - params.keys()}"
    # each method is one row, but `official`, whose students need a user's checkpoint (README)
    assert set(METHODS) - {"official"} <= {item["method"] for item in env["students"].values()}


def test_stages_read_data_through_the_manifest_only():
    # A data folder as a dependency makes DVC walk every image once per stage on each
    # `dvc repro`, and does not exist at all when the paper profile points at real roots.
    for name, deps in _deps().items():
        data = [d for d in deps if d.startswith("data")]
        assert data in ([], ["data/manifest.json"]), (name, data)


def test_dvc_parses_yaml_with_the_c_parser():
    from ruamel.yaml import YAML

    assert "CParser" in YAML(typ="safe").Parser.__name__  # ruamel.yaml.clib is installed


def test_check_params_runs_before_every_stage():
    """prepare-data waits for check-params' stamp, and every other stage reads what prepare-data writes."""
    deps = _deps()
    assert "runs/check-params.json" in deps["prepare-data"]
    assert list(_stages())[0] == "check-params"
