import argparse
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from imagefolders import make_imagenet
from mim.checkpoint import load_checkpoint
from mim.engine import OptimConfig, RunConfig, Task, fit
from mim.errors import MimError
from mim.param_groups import weight_decay_groups
from mim.teacher.dino import (
    DINO,
    DataConfig,
    DINOHead,
    DINOLoss,
    HeadConfig,
    ModelConfig,
    MultiCropAugmentation,
    collate_crops,
    momentum_schedule,
    teacher_temp_schedule,
)
from mim.teacher.frozen import load_teacher
from mim.teacher.official_dino import import_teacher

TINY = ModelConfig(arch="test_resnet", head=HeadConfig(out_dim=64, hidden_dim=32, bottleneck_dim=16))
CROPS = DataConfig(global_size=32, local_size=16, n_local=2)


def tiny_crops(b: int = 4) -> list[torch.Tensor]:
    return [torch.randn(b, 3, 32, 32), torch.randn(b, 3, 32, 32), torch.randn(b, 3, 16, 16), torch.randn(b, 3, 16, 16)]


def test_multicrop_counts_and_sizes():
    aug = MultiCropAugmentation(DataConfig(global_size=48, local_size=24, n_global=2, n_local=5))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8))
    crops = aug(img)
    assert [tuple(c.shape) for c in crops] == [(3, 48, 48)] * 2 + [(3, 24, 24)] * 5
    batch, labels = collate_crops([(crops, 1), (aug(img), 2)])
    assert len(batch) == 7 and batch[0].shape == (2, 3, 48, 48) and batch[6].shape == (2, 3, 24, 24)
    assert labels.tolist() == [1, 2]
    torch.manual_seed(5)
    a = aug(img)
    torch.manual_seed(5)
    b = aug(img)
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # randomness only from torch's seed


def test_loss_skips_same_view_pairs_and_centers():
    torch.manual_seed(0)
    k, b = 8, 5
    loss_fn = DINOLoss(k, n_global=2, n_crops=4, student_temp=0.1, center_momentum=0.9)
    loss_fn.center.normal_()
    c0 = loss_fn.center.clone()
    s, t = torch.randn(4 * b, k), torch.randn(2 * b, k)
    loss, logs = loss_fn(s, t, teacher_temp=0.04)

    def ce(iq, v):
        q = F.softmax((t.chunk(2)[iq] - c0) / 0.04, -1)
        return -(q * F.log_softmax(s.chunk(4)[v] / 0.1, -1)).sum(-1).mean()

    pairs = [(0, 1), (0, 2), (0, 3), (1, 0), (1, 2), (1, 3)]
    assert torch.allclose(loss, sum(ce(*p) for p in pairs) / 6, atol=1e-5)
    with_same = sum(ce(*p) for p in pairs + [(0, 0), (1, 1)]) / 8
    assert not torch.allclose(loss, with_same, atol=1e-3)
    # center moves toward the teacher batch mean at momentum 0.9
    assert torch.allclose(loss_fn.center, 0.9 * c0 + 0.1 * t.mean(0, keepdim=True), atol=1e-6)
    assert 0 < logs["teacher_entropy"] < np.log(k) and logs["kl"] > 0


def test_entropy_shows_both_collapse_modes():
    loss_fn = DINOLoss(16, n_global=2, n_crops=2, student_temp=0.1, center_momentum=0.9)
    _, uniform = loss_fn(torch.zeros(4, 16), torch.zeros(4, 16), 0.04)
    assert np.isclose(float(uniform["teacher_entropy"]), np.log(16), atol=1e-5) and abs(float(uniform["kl"])) < 1e-5
    one_hot = torch.zeros(4, 16)
    one_hot[:, 3] = 10.0
    _, dominant = DINOLoss(16, n_global=2, n_crops=2, student_temp=0.1, center_momentum=0.9)(one_hot, one_hot, 0.04)
    assert float(dominant["teacher_entropy"]) < 1e-3


def test_head_weight_norm_fixed_to_one():
    head = DINOHead(20, HeadConfig(out_dim=50, hidden_dim=32, bottleneck_dim=8))
    w = head.last_layer.weight
    assert w.shape == (50, 8) and torch.allclose(w.norm(dim=1), torch.ones(50), atol=1e-5)
    g = head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad
    assert head(torch.randn(3, 20)).shape == (3, 50)
    assert len([m for m in head.mlp if isinstance(m, torch.nn.Linear)]) == 3


def test_teacher_no_grad_and_exact_ema():
    torch.manual_seed(0)
    m = DINO(TINY, CROPS)
    m.set_epoch(1, 2)  # last layer not frozen
    loss, _ = m(tiny_crops())
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in m.teacher.parameters())
    assert m.student.head.last_layer_direction.grad.abs().sum() > 0
    with torch.no_grad():
        for p in m.student.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    before = [p.clone() for p in m.teacher.parameters()]
    m.update_teacher(0.9)
    for pt, pt0, ps in zip(m.teacher.parameters(), before, m.student.parameters()):
        assert torch.equal(pt, pt0.clone().mul_(0.9).add_(ps, alpha=0.1))
        assert torch.allclose(pt, 0.9 * pt0 + 0.1 * ps, atol=1e-6)


def test_last_layer_frozen_in_first_epoch():
    torch.manual_seed(0)
    m = DINO(TINY, CROPS)
    m.set_epoch(0, 2)
    m(tiny_crops())[0].backward()
    assert m.student.head.last_layer_direction.grad.abs().sum() == 0
    assert m.student.head.mlp[0].weight.grad.abs().sum() > 0


def test_schedules():
    cfg = ModelConfig(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=4)
    tt = teacher_temp_schedule(cfg, 10)
    assert len(tt) == 10 and tt[0] == 0.04 and np.allclose(tt[3:], 0.07)
    mom = momentum_schedule(ModelConfig(), 100)
    assert mom[0] == 0.996 and np.all(np.diff(mom) >= 0) and mom[-1] > 0.99999


OPTIM = OptimConfig(epochs=2, batch_size=2, base_lr=0.03, optimizer="sgd", weight_decay=1e-4)


def _dino_task(crash_after: int | None = None) -> tuple[Task, DINO]:
    torch.manual_seed(0)
    model = DINO(TINY, CROPS)
    data = [tiny_crops(2)]
    mom = momentum_schedule(TINY, 2)

    def loader(epoch, start=0, stop=None):
        return [[c + 0.1 * epoch for c in crops] for crops in data][start:stop]

    def evaluate(epoch):
        if epoch == crash_after:
            raise KeyboardInterrupt
        return {}

    task = Task(model, OPTIM, lambda m, b: m(b), loader, steps_per_epoch=1, param_groups=weight_decay_groups(model.student, 1e-4),
                on_epoch=lambda epoch: model.set_epoch(epoch, 2), after_step=lambda it: model.update_teacher(float(mom[it])),
                evaluate=evaluate)
    return task, model


def test_resume_identical(tmp_path):
    kw = dict(config={"t": 1}, desc="dino")
    full, m_full = _dino_task()
    fit(full, RunConfig(), checkpoint=tmp_path / "a.pt", log_dir=tmp_path / "la", **kw)
    crashed, _ = _dino_task(crash_after=1)
    with pytest.raises(KeyboardInterrupt):
        fit(crashed, RunConfig(), checkpoint=tmp_path / "b.pt", log_dir=tmp_path / "lb", **kw)
    assert load_checkpoint(tmp_path / "b.pt")["epoch"] == 0  # dies in epoch 2, after epoch 1 was saved
    resumed, m_res = _dino_task()
    fit(resumed, RunConfig(), checkpoint=tmp_path / "b.pt", log_dir=tmp_path / "lb", **kw)
    a, b = m_full.state_dict(), m_res.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.count_nonzero(m_res.loss.center) > 0  # the centre is part of the checkpoint


# --- importer -------------------------------------------------------------------------------------
def official_resnet50_state() -> dict[str, torch.Tensor]:
    """The layout of dino_resnet50_pretrain.pth: torchvision resnet50 with fc = Identity."""
    import torchvision

    torch.manual_seed(1)
    state = torchvision.models.resnet50(weights=None).state_dict()
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def test_import_official_plain_and_full_checkpoint(tmp_path):
    state = official_resnet50_state()
    torch.save(state, tmp_path / "plain.pth")
    import_teacher(tmp_path / "plain.pth", tmp_path / "plain.safetensors")
    got = load_teacher(tmp_path / "plain.safetensors").backbone.state_dict()
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)

    teacher = {f"module.backbone.{k}": v for k, v in state.items()}
    teacher["module.head.mlp.0.weight"] = torch.zeros(4, 2048)
    student = {f"module.backbone.{k}": torch.zeros_like(v) for k, v in state.items()}
    full = {"teacher": teacher, "student": student, "epoch": 99, "args": argparse.Namespace(arch="resnet50")}
    torch.save(full, tmp_path / "full.pth")
    import_teacher(tmp_path / "full.pth", tmp_path / "full.safetensors")
    got = load_teacher(tmp_path / "full.safetensors").backbone.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in state)


def test_import_mismatch_is_clear(tmp_path):
    state = official_resnet50_state()
    del state["layer4.2.bn3.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(MimError, match=r"1 key missing .*layer4.2.bn3.weight.*1 unexpected"):
        import_teacher(tmp_path / "bad.pth", tmp_path / "o.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(MimError, match="cannot read DINO checkpoint"):
        import_teacher(tmp_path / "junk.pth", tmp_path / "o.safetensors")
    with pytest.raises(MimError, match="not found"):
        import_teacher(tmp_path / "none.pth", tmp_path / "o.safetensors")


# --- the stage, end to end on a few tiny images (micro-sized settings) --------------------------------
PARAMS = """
run: {seed: 0, num_workers: 0, amp: false, threads: 0}
dino:
  model:
    arch: test_resnet
    head: {out_dim: 32, hidden_dim: 16, bottleneck_dim: 8}
  data: {global_size: 32, local_size: 16, n_local: 1}
  optim: {epochs: 2, batch_size: 4, base_lr: 0.03, optimizer: sgd, weight_decay: 1.0e-4}
"""


def test_pretrain_teacher_stage(tmp_path, monkeypatch):
    from stages.cli import main

    make_imagenet(tmp_path / "img", classes=2, train=8, val=2, size=40)
    (tmp_path / "p.yaml").write_text(PARAMS)
    monkeypatch.chdir(tmp_path)
    args = ["pretrain-teacher", "--params", "p.yaml", "--name", "t", "--out", "m/b.safetensors", "--metrics", "t.json", "--run", "r"]
    res = CliRunner().invoke(main, args + ["--data", "img"])
    assert res.exit_code == 0, res.output
    m = json.loads(Path("t.json").read_text())
    assert {"knn_top1", "teacher_entropy", "kl", "loss"} <= m.keys() and not {"epochs", "arch"} & m.keys()  # results only
    assert (m["train_images"], m["val_images"]) == (16, 4)
    assert load_checkpoint(Path("r/checkpoint.pt"))["epoch"] == 1
    teacher = load_teacher(Path("m/b.safetensors"))
    assert teacher.name == "t" and teacher.tokens(torch.randn(1, 3, 64, 64)).shape == (1, 2, 2, 96)
    res = CliRunner().invoke(main, args + ["--data", "missing"])
    assert res.exit_code == 1 and "dataset manifest not found: missing (not a dataset folder either)" in res.output


def test_vit_option_multicrop_forward():
    cfg = ModelConfig(arch="test_vit", head=HeadConfig(out_dim=16, hidden_dim=8, bottleneck_dim=4))
    m = DINO(cfg, DataConfig(global_size=32, local_size=16, n_local=2))
    loss, _ = m(tiny_crops(2))  # global and local crops through one dynamic-size ViT
    loss.backward()
    assert torch.isfinite(loss) and m.student.backbone.patch_embed.proj.weight.grad is not None


# --- precision: the head's last layer and the logits in float32 under bf16 autocast --------------------
def test_head_last_layer_and_logits_float32_under_bf16_autocast():
    torch.manual_seed(0)
    head = DINOHead(20, HeadConfig(out_dim=50, hidden_dim=32, bottleneck_dim=8))
    x = torch.randn(3, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = head.mlp(x)
        out = head(x)
    assert hidden.dtype == torch.bfloat16  # autocast is on: the MLP runs in bf16
    assert out.dtype == torch.float32
    assert torch.equal(out, head.last_layer(F.normalize(hidden.float(), dim=-1)))  # last layer in fp32 on the bf16 MLP output
    m = DINO(TINY, CROPS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m.student(tiny_crops()).dtype == torch.float32 and m.teacher(tiny_crops()[:2]).dtype == torch.float32
        loss, _ = m(tiny_crops())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_loss_logits_float32_from_bf16_outputs():
    """Division by the temperatures happens in fp32: bf16 outputs give the loss of their fp32 copies, exactly."""
    torch.manual_seed(0)
    s, t = torch.randn(4 * 5, 64).bfloat16(), torch.randn(2 * 5, 64).bfloat16()
    a, b = (DINOLoss(64, n_global=2, n_crops=4, student_temp=0.1, center_momentum=0.9) for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = a(s, t, teacher_temp=0.04)
    want, _ = b(s.float(), t.float(), teacher_temp=0.04)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert torch.equal(a.center, b.center)
    bf16_logits = -(F.softmax((t.chunk(2)[0] / 0.04).float(), -1) * F.log_softmax((s.chunk(4)[1] / 0.1).float(), -1)).sum(-1).mean()
    fp32_logits = -(F.softmax(t.chunk(2)[0].float() / 0.04, -1) * F.log_softmax(s.chunk(4)[1].float() / 0.1, -1)).sum(-1).mean()
    assert not torch.equal(bf16_logits, fp32_logits)  # the difference the fp32 logits avoid is real


# --- dino.source: import: the stage converts the official weights instead of training -------------------
IMPORT_PARAMS = PARAMS.replace("    arch: test_resnet\n", "    arch: resnet50\n") + "  source: import\n  checkpoint: CKPT\n"


def test_pretrain_teacher_stage_imports_official_weights(tmp_path, monkeypatch):
    from stages.cli import main

    state = official_resnet50_state()
    full = {"teacher": {f"module.backbone.{k}": v for k, v in state.items()} | {"module.head.last_layer.weight_v": torch.zeros(4, 2)},
            "student": {f"module.backbone.{k}": torch.zeros_like(v) for k, v in state.items()}, "args": argparse.Namespace(arch="resnet50")}
    torch.save(full, tmp_path / "full.pth")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("stages.run.fit_in", lambda *a, **k: pytest.fail("the import trained"))
    Path("p.yaml").write_text(IMPORT_PARAMS.replace("CKPT", "full.pth"))
    args = ["pretrain-teacher", "--params", "p.yaml", "--data", "no-data", "--name", "t", "--out", "m/b.safetensors",
            "--metrics", "t.json", "--run", "r"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    import_teacher(Path("full.pth"), Path("ref.safetensors"))  # the converter on its own
    got, ref = load_teacher(Path("m/b.safetensors")), load_teacher(Path("ref.safetensors"))
    a, b = got.backbone.state_dict(), ref.backbone.state_dict()
    assert a.keys() == b.keys() == state.keys() and all(torch.equal(a[k], b[k]) and torch.equal(a[k], state[k]) for k in a)
    assert got.name == "t"
    m = json.loads(Path("t.json").read_text())
    assert m["params_m"] == 23.51 and not {"source", "checkpoint", "arch"} & m.keys()  # results only: the params say where from
    assert m["checkpoint_sha256"] == hashlib.sha256(Path("full.pth").read_bytes()).hexdigest()
    assert not {"knn_top1", "loss", "epochs", "seconds"} & m.keys()  # no training numbers
    assert Path("r").is_dir() and not Path("r/checkpoint.pt").exists()

    def fails(params: str, pattern: str) -> None:
        Path("p.yaml").write_text(params)
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 1, res.output
        assert "Traceback" not in res.output and re.search(pattern, res.output.strip().splitlines()[-1]), res.output

    fails(IMPORT_PARAMS.replace("CKPT", "null"), r"p\.yaml: dino\.checkpoint: source import needs the path of the official DINO ResNet-50")
    fails(IMPORT_PARAMS.replace("CKPT", "gone.pth"), r"DINO checkpoint not found: gone\.pth")
    fails(IMPORT_PARAMS.replace("arch: resnet50", "arch: test_resnet").replace("CKPT", "full.pth"),
          r"dino\.model\.arch: .test_resnet.: source import converts the official ResNet-50 only; set resnet50")
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, "short.pth")
    fails(IMPORT_PARAMS.replace("CKPT", "short.pth"), r"short\.pth does not match timm resnet50: \d+ keys missing")
