from pathlib import Path

import pytest
import torch

from imagefolders import make_imagenet
from mim.checkpoint import load_checkpoint
from mim.data.images import DataRoot
from mim.engine import OptimConfig, RunConfig, fit
from mim.errors import MimError
from mim.tokenizer import vqvae
from mim.tokenizer.frozen import load_tokenizer, save_tokenizer, vqvae_tokenizer
from mim.tokenizer.official_dalle import convert_dalle, dalle_encoder, dalle_tokenizer, load_dalle
from mim.tokenizer.vqvae import VQVAE, EMAQuantizer, code_stats
from mim.tokenizer.vqvae import ModelConfig as VQVAEConfig

SMALL = VQVAEConfig(image_size=16, downsample=4, vocab_size=32, code_dim=8, hidden=16)


def test_same_image_same_ids_whatever_the_batch():
    torch.manual_seed(0)
    tok = vqvae_tokenizer(VQVAE(SMALL))
    x = torch.rand(4, 3, 16, 16)
    ids = tok.tokens(x)
    assert ids.shape == (4, 4, 4) and ids.dtype == torch.int64
    assert torch.equal(ids, tok.tokens(x))
    assert torch.equal(ids[2:3], tok.tokens(x[2:3]))
    assert not any(p.requires_grad for p in tok.parameters())
    with pytest.raises(MimError, match="expects"):
        tok.tokens(torch.rand(1, 3, 32, 32))


def test_code_stats_show_collapse_and_full_use():
    collapsed = code_stats(torch.zeros(100, dtype=torch.long), 10)
    assert collapsed["codebook_usage"] == 0.1 and collapsed["perplexity"] == pytest.approx(1.0)
    uniform = code_stats(torch.arange(100) % 10, 10)
    assert uniform["codebook_usage"] == 1.0 and uniform["perplexity"] == pytest.approx(10.0)


def test_dead_codes_are_restarted_from_batch_vectors():
    torch.manual_seed(0)
    q = EMAQuantizer(8, 2, decay=0.5, dead_threshold=1.0).train()
    z = torch.randn(4, 2, 4, 4)
    q(z)  # data init: every code is one of the batch vectors
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    assert all((flat - c).abs().sum(1).min() < 1e-6 for c in q.codebook)
    q.codebook[3] = 100.0  # far away: never chosen, its count decays below the threshold
    q(z)
    assert q.codebook[3].abs().max() < 50 and int(q.restarts) > 8


def test_vqvae_trains_resumes_identically_and_reports_usage(tmp_path):
    data = make_imagenet(tmp_path / "imgs", classes=2, train=6, val=6, size=24)
    cfg = vqvae.Config(model=VQVAEConfig(image_size=16, vocab_size=32, code_dim=8, hidden=16, downsample=4),
                       optim=OptimConfig(epochs=2, batch_size=4, base_lr=1e-2))
    run = RunConfig(seed=1)

    def train(where: Path, crash: bool = False):
        task = vqvae.task(cfg, run, DataRoot(data))
        if crash:
            inner = task.evaluate

            def evaluate(epoch):
                if epoch == 1:
                    raise KeyboardInterrupt
                return inner(epoch)

            task.evaluate = evaluate
        metrics = fit(task, run, checkpoint=where / "t.pt", log_dir=where / "logs", config={"c": 1}, desc="t")
        return task.model, metrics

    full, metrics = train(tmp_path / "a")
    assert 0 < metrics["val/codebook_usage"] <= 1 and metrics["val/perplexity"] >= 1
    assert metrics["val/psnr"] > 0 and "train/perplexity" in metrics
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "b", crash=True)
    assert load_checkpoint(tmp_path / "b" / "t.pt")["epoch"] == 0
    resumed, _ = train(tmp_path / "b")
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k  # weights and EMA codebook buffers


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    tok = vqvae_tokenizer(VQVAE(SMALL))
    save_tokenizer(tmp_path / "t.safetensors", tok)
    back = load_tokenizer(tmp_path / "t.safetensors")
    x = torch.rand(3, 3, 16, 16)
    assert back.kind == "vqvae" and back.grid == 4 and torch.equal(back.tokens(x), tok.tokens(x))
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(MimError, match="cannot read"):
        load_tokenizer(tmp_path / "bad.safetensors")


def test_converted_dalle_encoder_gives_the_same_ids(tmp_path, capsys):
    from dall_e import map_pixels

    torch.manual_seed(0)
    official = dalle_encoder(n_hid=64, n_blk_per_group=1, vocab_size=512)  # official key layout, random init
    torch.save(official, tmp_path / "encoder.pkl")  # a pickled module, like the official file
    with pytest.raises(MimError, match=r"not a plain state_dict .*convert-dalle .* --allow-pickle"):
        convert_dalle(tmp_path / "encoder.pkl", tmp_path / "encoder.safetensors")  # a pickled module: refused by default
    arch = convert_dalle(tmp_path / "encoder.pkl", tmp_path / "encoder.safetensors", allow_pickle=True)
    assert "unpickling" in capsys.readouterr().err
    assert arch == {"n_hid": 64, "vocab_size": 512, "n_blk_per_group": 1, "group_count": 4}
    enc, arch = load_dalle(tmp_path / "encoder.safetensors")
    tok = dalle_tokenizer(enc, arch, image_size=32)
    x = torch.rand(2, 3, 32, 32)
    ids = tok.tokens(x)
    assert ids.shape == (2, 4, 4) and tok.vocab_size == 512
    assert torch.equal(ids, official(map_pixels(x)).argmax(1))
    save_tokenizer(tmp_path / "tok.safetensors", tok)  # the stage's export, same interface as vqvae
    assert torch.equal(load_tokenizer(tmp_path / "tok.safetensors").tokens(x), ids)
    torch.save({"blocks.input.w": torch.zeros(1)}, tmp_path / "wrong.pkl")
    with pytest.raises(MimError, match="not a DALL-E"):
        convert_dalle(tmp_path / "wrong.pkl", tmp_path / "wrong.safetensors")


def test_stage_exports_the_converted_dalle_encoder(tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from stages.cli import main

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    torch.save(dalle_encoder(n_hid=16, n_blk_per_group=1, vocab_size=64), tmp_path / "encoder.pkl")
    res = CliRunner().invoke(main, ["convert-dalle", "encoder.pkl", "dalle.safetensors", "--allow-pickle"])
    assert res.exit_code == 0, res.output
    make_imagenet(tmp_path / "img", classes=2, train=1, val=2, size=40)
    (tmp_path / "p.yaml").write_text(
        "run: {seed: 0, threads: 1}\ntokenizer: {mode: dalle, dalle_weights: dalle.safetensors, model: {image_size: 32}}\n")
    args = ["tokenizer", "--params", "p.yaml", "--data", "img", "--out", "tok.safetensors", "--metrics", "m.json", "--run", "runs/tok"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    tok = load_tokenizer(tmp_path / "tok.safetensors")
    assert (tok.kind, tok.vocab_size, tok.grid) == ("dalle", 64, 4)
    assert json.loads((tmp_path / "m.json").read_text())["vocab_size"] == 64
