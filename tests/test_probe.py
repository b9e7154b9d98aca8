"""The linear probe's two protocols (mim/eval/probe.py): MAE's augmented one through the engine,
and the cached one, which must keep giving the numbers it gave before the augmented one existed."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from imagefolders import make_imagenet
from mim.data.device import normalize
from mim.data.images import DataRoot
from mim.data.transforms import eval_transform
from mim.encoder_file import save_encoder
from mim.engine import RunConfig, fit
from mim.errors import MimError
from mim.eval.probe import (
    KNNConfig,
    LinearProbeConfig,
    ProbeConfig,
    RandomResizedCrop,
    augmented_task,
    linear_head,
    linear_probe,
    linprobe_transform,
)
from mim.vit import ViTConfig, ViTEncoder
from stages.cli import main

TINY = ViTConfig(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2)
RUN = RunConfig(threads=1)


def colours(root: Path, classes: int = 3, n: int = 8, size: int = 16) -> DataRoot:
    """Class c: channel c bright, plus noise; every crop and flip of an image keeps its class."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                img = np.full((size, size, 3), 0.3)
                img[..., c] = 0.8
                img = (img + rng.normal(0, 0.15, img.shape)).clip(0, 1)
                Image.fromarray((img * 255).astype(np.uint8)).save(d / f"{i}.png")
    return DataRoot(root)


def augmented(root: DataRoot, enc: ViTEncoder, **linear: object):
    cfg = ProbeConfig(linear=LinearProbeConfig(**{"protocol": "augmented", "epochs": 2, "batch_size": 8, "base_lr": 1.0,
                                                  "warmup_epochs": 1, "optimizer": "sgd", **linear}), knn=KNNConfig(k=3))
    train, val = root.images("train", linprobe_transform(TINY.img_size)), root.images("val", eval_transform(TINY.img_size))
    return augmented_task(enc, train, val, len(train.classes), cfg, RUN)


def encoder() -> ViTEncoder:
    torch.manual_seed(0)
    return ViTEncoder(TINY)


def test_head_is_bn_without_affine_then_linear():
    torch.manual_seed(0)
    head = linear_head(384, 1000)
    bn, fc = head
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine and bn.weight is None and bn.bias is None
    assert bn.eps == 1e-6 and bn.track_running_stats  # val uses the running statistics (MAE main_linprobe.py)
    assert [n for n, _ in head.named_parameters()] == ["1.weight", "1.bias"]  # only the linear layer trains
    # trunc_normal_(std=0.01) with timm's and torch's default bounds a=-2, b=2 (absolute): a plain N(0, 0.01) in effect
    assert fc.weight.std().item() == pytest.approx(0.01, rel=0.02) and abs(fc.weight.mean().item()) < 1e-3
    assert not fc.bias.any()


def fixture() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g)
    y = torch.arange(1400) % 4
    x = centres[y] + 1.5 * torch.randn(1400, 16, generator=g)
    return x[:400], y[:400], x[400:], y[400:]


@pytest.mark.parametrize(("optimizer", "top1"), [("sgd", 90.39999842643738), ("lars", 37.40000128746033)])
def test_cached_protocol_gives_the_numbers_of_the_code_before_the_augmented_one(optimizer, top1):
    # top-1 values computed by mim/eval/probe.py's linear_probe at commit 320eb58 (before issue 17) on this fixture
    cfg = LinearProbeConfig(protocol="cached", epochs=5, batch_size=64, base_lr=0.5, warmup_epochs=1, optimizer=optimizer)
    assert linear_probe(*fixture(), 4, cfg, seed=3) == {"top1": top1, "top5": 100.0}


def test_cached_probe_stage_writes_the_numbers_of_the_code_before(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = make_imagenet(tmp_path / "data", classes=3, train=6, val=4, size=32)
    torch.manual_seed(0)
    save_encoder(Path("enc.safetensors"), ViTEncoder(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)))
    Path("p.yaml").write_text("run: {seed: 0, num_workers: 0, amp: true, threads: 1}\nprobe:\n  batch_size: 5\n"
                              "  linear: {protocol: cached, epochs: 4, batch_size: 6, base_lr: 2.0, warmup_epochs: 1, optimizer: sgd}\n"
                              "  knn: {k: 3, temperature: 0.07}\n")
    args = ["probe", "--encoder", "enc.safetensors", "--data", str(data), "--params", "p.yaml", "--metrics", "m.json"]
    res = CliRunner().invoke(main, [*args, "--run", "runs/probe/s"])
    assert res.exit_code == 0, res.output
    # the same fixture through the stage at commit 320eb58 wrote these numbers; the protocol is the new key
    assert json.loads(Path("m.json").read_text()) == {
        "knn_top1": 83.33333134651184, "knn_top5": 100.0, "linear_top1": 91.66666865348816, "linear_top5": 100.0,
        "skipped_images": 0, "linear_protocol": "cached"}
    assert Path("runs/probe/s").is_dir() and not any(Path("runs/probe/s").iterdir())  # DVC's output, empty when cached


def test_augmented_protocol_draws_new_views_every_epoch_and_never_trains_the_encoder(tmp_path):
    root = colours(tmp_path / "d")
    enc = encoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    task = augmented(root, enc, batch_size=24)  # one step per epoch: the head sees every image once
    seen: list[torch.Tensor] = []
    task.model.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()) if m.training else None)
    fit(task, RUN, checkpoint=tmp_path / "r/checkpoint.pt", log_dir=tmp_path / "r", config={}, desc="probe")
    assert len(seen) == 2
    per_image = [x[:, 0].sort().values for x in seen]  # the order is shuffled; compare the sets of images
    assert not torch.allclose(per_image[0], per_image[1], atol=1e-4)  # fresh crops and flips in epoch 2
    centre = root.images("train", eval_transform(TINY.img_size))
    with torch.no_grad():
        cached = torch.stack([enc.forward_features(normalize(img[None]))[0, 0] for img, _ in centre])  # (N, D); uint8 from the transform
    assert not torch.allclose(per_image[0], cached[:, 0].sort().values, atol=1e-4)  # not the centre crops
    assert all(not p.requires_grad and p.grad is None for p in enc.parameters())
    assert not enc.training
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    assert set(torch.load(tmp_path / "r/checkpoint.pt", weights_only=True)["model"]) == {
        "0.running_mean", "0.running_var", "0.num_batches_tracked", "1.weight", "1.bias"}  # the head only


def test_augmented_protocol_learns_a_separable_dataset(tmp_path):
    m = fit(augmented(colours(tmp_path / "d"), encoder(), epochs=8), RUN, checkpoint=tmp_path / "r/checkpoint.pt",
            log_dir=tmp_path / "r", config={}, desc="probe")
    assert m["val/top1"] >= 90  # chance is 33 %
    assert (tmp_path / "r/metrics.json").is_file()  # dvclive's summary in the run folder


def test_mae_crop_draws_once_and_clamps_the_box():
    torch.manual_seed(0)
    img = Image.new("RGB", (40, 20))
    boxes = [RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(200)]
    assert all(0 <= i and 0 <= j and i + h <= 20 and j + w <= 40 for i, j, h, w in boxes)
    assert sum(h == 20 for _, _, h, _ in boxes) > 10  # boxes taller than the image are clamped, not redrawn
    torch.manual_seed(0)
    torch.empty(1).uniform_(0.08, 1.0)
    torch.empty(1).uniform_(np.log(3 / 4), np.log(4 / 3))
    torch.randint(0, 1, size=(1,))
    torch.randint(0, 1, size=(1,))
    assert RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) == boxes[1]  # four draws per box, no retries


def test_augmented_guards_refuse_nan_features_and_a_climbing_loss(tmp_path):
    root = colours(tmp_path / "d")
    enc = encoder()
    with torch.no_grad():
        enc.norm.weight.fill_(float("nan"))
    with pytest.raises(MimError, match="the encoder's features are not finite"):
        fit(augmented(root, enc), RUN, checkpoint=tmp_path / "a/checkpoint.pt", log_dir=tmp_path / "a", config={}, desc="probe")
    with pytest.raises(MimError, match=r"the linear probe diverged \(train loss rose .*lower probe\.linear\.base_lr"):
        fit(augmented(root, encoder(), epochs=3, base_lr=1e7, optimizer="lars"), RUN,
            checkpoint=tmp_path / "b/checkpoint.pt", log_dir=tmp_path / "b", config={}, desc="probe")


def test_augmented_probe_stage_records_its_protocol_and_needs_a_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = colours(tmp_path / "d")
    save_encoder(Path("enc.safetensors"), encoder())
    Path("p.yaml").write_text("run: {seed: 0, num_workers: 0, amp: true, threads: 1}\nprobe:\n  batch_size: 8\n"
                              "  linear: {epochs: 2, batch_size: 8, base_lr: 1.0, warmup_epochs: 1, optimizer: sgd}\n"
                              "  knn: {k: 3, temperature: 0.07}\n")  # protocol: the default, augmented
    args = ["probe", "--encoder", "enc.safetensors", "--data", str(root.root), "--params", "p.yaml", "--metrics", "m.json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "probe.linear.protocol augmented" in res.output and "--run" in res.output
    res = CliRunner().invoke(main, [*args, "--run", "runs/probe/s"])
    assert res.exit_code == 0, res.output
    out = json.loads(Path("m.json").read_text())
    assert out["linear_protocol"] == "augmented" and 0 <= out["linear_top1"] <= 100
    assert Path("runs/probe/s/checkpoint.pt").is_file()
    res = CliRunner().invoke(main, [*args, "--run", "runs/probe/s"])  # finished: resumed, not trained again
    assert res.exit_code == 0 and "resuming" in res.output and json.loads(Path("m.json").read_text()) == out


def test_augmented_probe_killed_after_an_epoch_resumes_to_the_same_head(tmp_path, capsys):
    root = colours(tmp_path / "d")
    whole = augmented(root, encoder(), epochs=3)
    fit(whole, RUN, checkpoint=tmp_path / "a/checkpoint.pt", log_dir=tmp_path / "a", config={}, desc="probe")
    killed = augmented(root, encoder(), epochs=3)
    evaluate = killed.evaluate

    def die_in_epoch_2(epoch: int) -> dict[str, float]:
        if epoch == 1:
            raise KeyboardInterrupt  # before epoch 2's checkpoint: epoch 1's stays on disk
        return evaluate(epoch)

    killed.evaluate = die_in_epoch_2
    with pytest.raises(KeyboardInterrupt):
        fit(killed, RUN, checkpoint=tmp_path / "b/checkpoint.pt", log_dir=tmp_path / "b", config={}, desc="probe")
    capsys.readouterr()
    resumed = augmented(root, encoder(), epochs=3)
    m = fit(resumed, RUN, checkpoint=tmp_path / "b/checkpoint.pt", log_dir=tmp_path / "b", config={}, desc="probe")
    assert "resuming from" in capsys.readouterr().err  # only epoch 3 trained again
    assert all(torch.equal(v, resumed.model.state_dict()[k]) for k, v in whole.model.state_dict().items())
    assert resumed.extra_state["losses"].means == whole.extra_state["losses"].means  # the divergence check's trace too
    assert len(resumed.extra_state["losses"].means) == 3 and 0 <= m["val/top1"] <= 100
