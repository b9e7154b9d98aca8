import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from imagefolders import make_imagenet
from mim.encoder_file import save_encoder
from mim.eval.finetune import ViTClassifier
from mim.eval.knn import knn_classify, topk_accuracy
from mim.eval.probe import LARS, LinearProbeConfig, linear_probe
from mim.param_groups import layer_decay_groups, vit_layer_id
from mim.vit import ViTConfig, ViTEncoder
from stages.cli import main

ENC = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
BEIT_ENC = dataclasses.replace(ENC, layer_scale=0.1, abs_pos=False, rel_pos_bias="shared")  # BEiT's pretraining layout
ROOT = Path(__file__).resolve().parents[1]


def test_layer_decay_groups():
    model = ViTClassifier(ViTEncoder(ENC), 5)
    groups = layer_decay_groups(model, 0.05, 0.5, depth=2, prefix="encoder.")
    by_name = {n: g for g in groups for n in g["names"]}
    assert len(by_name) == sum(1 for p in model.parameters() if p.requires_grad)  # each trainable one once
    assert by_name["encoder.patch_embed.proj.weight"]["lr_scale"] == 0.5**3
    assert by_name["encoder.cls_token"]["lr_scale"] == 0.5**3 and by_name["encoder.cls_token"]["weight_decay"] == 0
    assert by_name["encoder.blocks.0.attn.qkv.weight"]["lr_scale"] == 0.5**2
    assert by_name["encoder.blocks.1.mlp.fc1.weight"]["lr_scale"] == 0.5
    assert by_name["head.weight"]["lr_scale"] == 1.0 and by_name["head.weight"]["weight_decay"] == 0.05
    assert by_name["fc_norm.weight"]["weight_decay"] == 0 and by_name["head.bias"]["weight_decay"] == 0
    assert vit_layer_id("encoder.blocks.1.norm1.bias", 2, "encoder.") == 2
    assert vit_layer_id("backbone.vit.patch_embed.proj.weight", 12, "backbone.vit.") == 0  # the segmentation backbone
    assert vit_layer_id("decode_head.conv_seg.weight", 12, "backbone.vit.") == 13


def test_classifier_global_pool_drops_final_norm():
    model = ViTClassifier(ViTEncoder(ENC), 5)
    assert isinstance(model.encoder.norm, torch.nn.Identity)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert model.head.weight.std() < 1e-4  # MAE head init (std 2e-5)


def test_randaug_posterize_never_zero_bits():
    from mim.engine import OptimConfig
    from mim.eval.finetune import FinetuneConfig, finetune_transforms

    train, _ = finetune_transforms(32, FinetuneConfig(optim=OptimConfig(epochs=1, batch_size=2, base_lr=1.0)))
    ops = [op for t in train.transforms for op in getattr(t, "ops", []) if op.name.startswith("Posterize")]
    assert ops and all(op.level_fn(10.0, op.hparams)[0] >= 1 for op in ops)
    from PIL import Image

    img = Image.new("RGB", (40, 40), (200, 30, 90))
    for op in ops:
        op.magnitude, op.magnitude_std, op.prob = 10, 0, 1.0
        op(img)  # Pillow >= 13 raises on 0 bits


def test_finetune_crop_scale_reaches_random_resized_crop():
    from mim.engine import OptimConfig
    from mim.eval.finetune import FinetuneConfig, finetune_transforms

    cfg = FinetuneConfig(optim=OptimConfig(epochs=1, batch_size=2, base_lr=1.0), crop_scale=(0.5, 1.0))
    train, _ = finetune_transforms(32, cfg)
    crops = [t for t in train.transforms if type(t).__name__.startswith("RandomResizedCrop")]
    assert len(crops) == 1 and tuple(crops[0].scale) == (0.5, 1.0)


def test_knn_on_hand_made_set():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    test = torch.tensor([[2.0, 0.1], [0.05, 3.0], [-1.0, -0.1]])
    scores = knn_classify(train, labels, test, 3, k=1, temperature=0.07)
    assert scores.argmax(1).tolist() == [0, 1, 2]
    # k=3 with voting weighted by exp(cos/T): one very close class-2 neighbour loses to two class-0 ones at equal cos
    train2 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.01]])
    scores2 = knn_classify(train2, torch.tensor([0, 0, 2]), torch.tensor([[1.0, 0.0]]), 3, k=3, temperature=0.07)
    assert scores2.argmax(1).item() == 0
    assert torch.allclose(scores2[0, 0], 2 * torch.exp(torch.tensor(1 / 0.07)))
    assert topk_accuracy(scores, torch.tensor([0, 1, 1]), 1) == pytest.approx(200 / 3)


def test_linear_probe_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g)
    y = (x[:, 0] > 0).long()
    cfg = LinearProbeConfig(epochs=20, batch_size=50, base_lr=1.0, warmup_epochs=2, optimizer="sgd")
    res = linear_probe(x[:150], y[:150], x[150:], y[150:], 2, cfg)
    assert res["top1"] > 90
    assert linear_probe(x[:150], y[:150], x[150:], y[150:], 2, cfg) == res  # deterministic


def test_lars_skips_trust_ratio_on_vectors():
    w = torch.nn.Parameter(torch.ones(2, 2))
    b = torch.nn.Parameter(torch.ones(2))
    opt = LARS([w, b], lr=1.0, momentum=0.0)
    w.grad, b.grad = torch.full((2, 2), 5.0), torch.full((2,), 5.0)
    opt.step()
    assert torch.allclose(b, torch.full((2,), -4.0))  # plain SGD on 1-D
    assert torch.allclose(w, torch.full((2, 2), 1 - 0.001))  # trust ratio: |w| / |g| * 0.001 * g


PARAMS = """
run: {seed: 0, num_workers: 0, amp: true, threads: 1}
finetune:
  layer_decay: 0.75
  drop_path: 0.1
  labels_per_class: 4
  optim: {epochs: 2, batch_size: 4, base_lr: 1.0e-3, warmup_epochs: 1, betas: [0.9, 0.999]}
probe:
  linear: {protocol: cached, epochs: 3, batch_size: 4, base_lr: 0.1, warmup_epochs: 1}
  knn: {k: 3, temperature: 0.07}
"""


@pytest.mark.parametrize("enc_cfg", [ENC, BEIT_ENC], ids=["sincos", "beit-rel-pos"])
def test_finetune_and_probe_stages_write_metrics(tmp_path, monkeypatch, enc_cfg):
    """Both encoder layouts fine-tune and probe unchanged; `--section` picks the recipe (BEiT's own)."""
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "params.log"
    monkeypatch.setenv("MIMREPRO_PARAMS_LOG", str(log))
    data = make_imagenet(tmp_path / "data", classes=3, train=6, val=2, size=32)
    torch.manual_seed(0)
    save_encoder(tmp_path / "models/s/encoder.safetensors", ViTEncoder(enc_cfg), extra={"pretrain_epochs": "7"})
    beit_recipe = yaml.safe_load(PARAMS)["finetune"]
    beit_recipe["optim"] = {**beit_recipe["optim"], "epochs": 1, "warmup_epochs": 0}
    (tmp_path / "p.yaml").write_text(PARAMS + yaml.safe_dump({"finetune_beit": beit_recipe}))
    r = CliRunner()
    enc = ["--encoder", "models/s/encoder.safetensors", "--data", str(data), "--params", "p.yaml"]
    section = "finetune_beit" if enc_cfg.rel_pos_bias != "none" else "finetune"
    res = r.invoke(main, ["finetune", *enc, "--metrics", "ft.json", "--run", "runs/ft", "--section", section])
    assert res.exit_code == 0, res.output
    ft = json.loads((tmp_path / "ft.json").read_text())
    assert set(ft) == {"top1", "top5", "skipped_images"}  # results only: no echo of the recipe or the encoder
    assert ft["top5"] == 100.0 and ft["skipped_images"] == 0  # 3 classes
    from mim.checkpoint import load_checkpoint

    recipe = load_checkpoint(tmp_path / "runs/ft/checkpoint.pt")["config"]["finetune"]  # the run's log holds the recipe
    assert recipe["optim"]["epochs"] == (1 if section == "finetune_beit" else 2)  # of the section given
    assert {line.split("\t")[1] for line in log.read_text().splitlines()} == {section, "run"}  # what dvc.yaml lists
    res = r.invoke(main, ["probe", *enc, "--metrics", "pr.json"])
    assert res.exit_code == 0, res.output
    pr = json.loads((tmp_path / "pr.json").read_text())
    assert {"linear_top1", "knn_top1"} <= set(pr) and pr["linear_protocol"] == "cached"
    assert all(0 <= v <= 100 for k, v in pr.items() if k != "linear_protocol")
    res = r.invoke(main, ["probe", "--encoder", "models/missing/encoder.safetensors", "--data", str(data), "--params", "p.yaml",
                          "--metrics", "pr.json"])
    assert res.exit_code == 1 and "encoder file not found" in res.output


def test_classifier_on_a_rel_pos_encoder_and_its_layer_groups():
    """A BEiT encoder file (per-layer tables, no pos_embed) fine-tunes: its tables are learnable, in
    their block's layer and weight-decayed (unilm/beit optim_factory.py), its gammas and q/v biases not."""
    torch.manual_seed(0)
    enc = ViTEncoder(BEIT_ENC)
    model = ViTClassifier(_through_file(enc), 5)
    assert model.encoder.pos_embed is None and model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    groups = layer_decay_groups(model, 0.05, 0.5, depth=2, prefix="encoder.")
    by_name = {n: g for g in groups for n in g["names"]}
    table = by_name["encoder.blocks.1.attn.relative_position_bias_table"]
    assert table["lr_scale"] == 0.5 and table["weight_decay"] == 0.05
    assert by_name["encoder.blocks.0.attn.relative_position_bias_table"]["lr_scale"] == 0.5**2
    for name in ("encoder.blocks.0.gamma_1", "encoder.blocks.0.attn.q_bias", "encoder.blocks.0.attn.v_bias"):
        assert by_name[name]["weight_decay"] == 0, name
    assert vit_layer_id("encoder.rel_pos_bias.relative_position_bias_table", 12, "encoder.") == 13  # BEiT: after the blocks
    assert "encoder.pos_embed" not in by_name and len(by_name) == sum(p.requires_grad for p in model.parameters())


def _through_file(enc: ViTEncoder) -> ViTEncoder:
    import tempfile

    from mim.encoder_file import EncoderFile

    with tempfile.TemporaryDirectory() as d:
        save_encoder(Path(d) / "e.safetensors", enc)
        return EncoderFile.read(Path(d) / "e.safetensors").build()


def test_each_student_fine_tunes_with_the_section_dvc_yaml_names():
    """finetune@beit runs `--section finetune_beit` and depends on that section; the others on `finetune`;
    every profile has both sections, and only the paper profile gives BEiT a recipe of its own."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import dvc_deps

    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    env = dvc_deps.variables(doc, ROOT)
    body = doc["stages"]["finetune"]["do"]
    params = [k for entry in body["params"] for keys in entry.values() for k in keys]
    seen = {}
    for stage in ("finetune", "finetune-sweep"):
        for inst in dvc_deps.instances(stage, doc["stages"][stage], env):
            section = inst.cmd.split("--section ")[1].split()[0]
            assert section in {dvc_deps.render(k, inst.context) for k in params}, inst.name
            seen[inst.name] = section
    assert seen["finetune@beit"] == "finetune_beit"
    assert {v for k, v in seen.items() if k != "finetune@beit"} == {"finetune"}
    for profile in ("smoke", "micro", "paper"):
        p = yaml.safe_load((ROOT / f"params/{profile}.yaml").read_text())
        assert (p["finetune_beit"] == p["finetune"]) == (profile != "paper"), profile
    paper = yaml.safe_load((ROOT / "params/paper.yaml").read_text())["finetune_beit"]
    assert (paper["layer_decay"], paper["optim"]["epochs"], paper["optim"]["warmup_epochs"]) == (0.65, 100, 20)
    assert paper["optim"]["base_lr"] * paper["optim"]["batch_size"] / 256 == pytest.approx(4e-3)  # unilm/beit: --lr 4e-3
