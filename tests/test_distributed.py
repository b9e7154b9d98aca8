"""Distributed correctness on CPU: 2 processes (gloo) against 1, as torchrun runs the stages.

Evaluations give the same numbers under any world size (shards, sums, gathers in dataset order);
a training step with the global batch split over processes or accumulation steps is the same
update; a checkpoint written under 2 processes resumes under 1; each rank draws its own, reproducible
randomness; a stop signal mid-epoch leaves a checkpoint from which the rerun ends identical.
"""
from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Dataset

from mim.checkpoint import load_checkpoint
from mim.engine import OptimConfig, RunConfig, Stopped, fit, make_task, setup


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, case: str, kw: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    setup(RunConfig())
    try:
        result = CASES[case](**kw)
    except Stopped as e:
        result = {"stopped": str(e)}
    torch.save(result, Path(out) / f"{case}-{rank}.pt")
    torch.distributed.destroy_process_group()


def in_processes(world: int, tmp: Path, case: str, **kw) -> list[dict]:
    """Run CASES[case](**kw) in `world` gloo processes (1: in this process, no process group)."""
    tmp.mkdir(parents=True, exist_ok=True)
    if world == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each spawned process: kernels split work by thread count, and so round
        try:
            return [CASES[case](**kw)]
        except Stopped as e:
            return [{"stopped": str(e)}]
        finally:
            torch.set_num_threads(threads)
    mp.spawn(_worker, args=(world, free_port(), str(tmp), case, kw), nprocs=world, join=True)
    return [torch.load(tmp / f"{case}-{r}.pt", weights_only=False) for r in range(world)]


# --- evaluation ----------------------------------------------------------------------------------
class Images(Dataset):
    def __init__(self, n: int, size: int = 16, classes: int = 3) -> None:
        g = torch.Generator().manual_seed(n)
        self.x, self.y = torch.randn(n, 3, size, size, generator=g), torch.arange(n) % classes
        self.classes = [str(c) for c in range(classes)]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


def evaluations() -> dict:
    from mim.data.loaders import eval_loader
    from mim.eval.diversity import DiversityMeter
    from mim.eval.finetune import ViTClassifier, accuracy
    from mim.eval.knn import knn_classify, topk_accuracy
    from mim.eval.probe import LinearProbeConfig, extract_features, linear_probe
    from mim.vit import ViTConfig, ViTEncoder

    torch.manual_seed(0)
    enc = ViTEncoder(ViTConfig(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2))
    clf = ViTClassifier(enc, 3, head_std=1.0).eval()
    odd = Images(9)  # shards of 4 and 5: nothing padded, nothing counted twice
    top = accuracy(clf, odd, batch_size=2)
    x, y = extract_features(enc, Images(8), batch_size=4)  # batches of 4 on 1 or 2 processes: the same rows
    scores = knn_classify(x, y, x, 3, k=3, temperature=0.07)
    lin = linear_probe(x, y, x, y, 3, LinearProbeConfig(protocol="cached", epochs=3, batch_size=4, warmup_epochs=1), seed=0)
    meter = DiversityMeter()
    with torch.no_grad():
        for imgs, _ in eval_loader(odd, 2):
            meter.update(enc.forward_features(imgs)[:, 1:])  # (B, 4 tokens, 16)
    return {"top": top, "features": x, "labels": y, "knn": topk_accuracy(scores, y, 1), "linear": lin, "diversity": meter.result()}


def test_evaluations_under_two_processes_equal_one_exactly(tmp_path):
    one = in_processes(1, tmp_path, "eval")[0]
    two = in_processes(2, tmp_path, "eval")
    assert two[0]["top"] == two[1]["top"] == one["top"]
    assert one["top"]["top1"] not in (0.0, 100.0)  # a real count: some right, some wrong
    for r in two:
        assert torch.equal(r["features"], one["features"]) and torch.equal(r["labels"], one["labels"])  # all rows, in order
        assert r["knn"] == one["knn"] and r["linear"] == one["linear"] and r["diversity"] == one["diversity"]
    assert one["diversity"]["num_images"] == 9


# --- training ------------------------------------------------------------------------------------
class Masked(Dataset):
    """Items with a random mask drawn in __getitem__: mim/data/loaders.py seeds it per item."""

    def __init__(self, n: int = 24) -> None:
        self.x = torch.randn(n, 6, generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], (torch.rand(6) > 0.5).float()


def training(run_dir: str, epochs: int = 2, device_batch: int = 0, stop_at: tuple[int, int, int] | None = None,
             crash_after_epoch: int | None = None, draws: bool = False, workers: int = 0) -> dict:
    """A linear model trained on Masked under the engine: global batch 8, 3 steps per epoch."""
    from mim.dist import rank

    run = RunConfig(seed=4, device_batch=device_batch, num_workers=workers)
    seen: list[torch.Tensor] = []
    position = {"epoch": 0, "step": 0}

    def step(m: nn.Module, batch):
        x, mask = batch
        seen.append(torch.rand(2))  # the process's own stream (as masks are drawn): not in the loss
        if stop_at is not None and (position["epoch"], position["step"], rank()) == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's preemption, on one process
        position["step"] += 1
        return ((m(x) - x) * mask).pow(2).mean(), {}

    t = make_task(lambda: nn.Linear(6, 6), Masked(), OptimConfig(epochs=epochs, batch_size=8, base_lr=0.5), run, step)

    def on_epoch(epoch: int) -> None:
        position.update(epoch=epoch, step=0)

    def evaluate(epoch: int) -> dict[str, float]:
        if epoch == crash_after_epoch:
            raise KeyboardInterrupt
        return {}

    t.on_epoch, t.evaluate = on_epoch, evaluate
    d = Path(run_dir)
    try:
        fit(t, run, checkpoint=d / "c.pt", log_dir=d / "logs", config={"toy": 1}, desc="toy")
    except KeyboardInterrupt:
        return {"crashed": True}
    out = {"weights": {k: v.clone() for k, v in t.model.state_dict().items()}}
    if draws:
        out["draws"] = torch.stack(seen)
    return out


def teacher(root: str, run_dir: str) -> dict:
    """DINO's task (BatchNorm ResNet, multi-crop, EMA teacher, k-NN with the train bank) for one epoch."""
    from mim.data.images import DataRoot
    from mim.teacher import dino

    cfg = dino.Config(model=dino.ModelConfig(arch="test_resnet", head=dino.HeadConfig(out_dim=16, hidden_dim=8, bottleneck_dim=4)),
                      data=dino.DataConfig(global_size=32, local_size=16, n_local=1),
                      optim=OptimConfig(epochs=1, batch_size=4, base_lr=0.03, optimizer="sgd"), knn=dino.KNNConfig(k=2))
    t = dino.task(cfg, RunConfig(), DataRoot(Path(root)))
    m = fit(t, RunConfig(), checkpoint=Path(run_dir) / "c.pt", log_dir=Path(run_dir), config={}, desc="dino")
    return {"knn_top1": m["knn_top1"], "loss": m["train/loss"]}


CASES = {"eval": evaluations, "train": training, "teacher": teacher}


def close(a: dict, b: dict) -> bool:
    return all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)


def test_the_global_batch_split_over_processes_or_micro_steps_is_the_same_update(tmp_path):
    one = in_processes(1, tmp_path / "a", "train", run_dir=str(tmp_path / "one"))[0]
    accum = in_processes(1, tmp_path / "b", "train", run_dir=str(tmp_path / "accum"), device_batch=4)[0]  # 2 micro-steps of 4
    two = in_processes(2, tmp_path / "c", "train", run_dir=str(tmp_path / "two"), draws=True)  # 4 images per process
    assert close(one["weights"], accum["weights"])
    assert torch.equal(two[0]["weights"]["weight"], two[1]["weights"]["weight"])  # DDP: the same weights everywhere
    assert close(two[0]["weights"], one["weights"])
    assert not torch.equal(one["weights"]["weight"], nn.Linear(6, 6).weight)  # it trained
    # each rank draws its own stream (not replicated), and the same again on a rerun
    assert two[0]["draws"].shape == (6, 2) and not torch.equal(two[0]["draws"], two[1]["draws"])
    again = in_processes(2, tmp_path / "d", "train", run_dir=str(tmp_path / "two-again"), draws=True)
    assert all(torch.equal(a["draws"], b["draws"]) for a, b in zip(two, again))


def test_a_checkpoint_written_under_two_processes_resumes_under_one(tmp_path):
    full = in_processes(1, tmp_path / "a", "train", run_dir=str(tmp_path / "full"))[0]
    crashed = in_processes(2, tmp_path / "b", "train", run_dir=str(tmp_path / "run"), crash_after_epoch=1)
    assert crashed[0] == {"crashed": True} and load_checkpoint(tmp_path / "run" / "c.pt")["epoch"] == 0
    resumed = in_processes(1, tmp_path / "c", "train", run_dir=str(tmp_path / "run"))[0]
    assert close(resumed["weights"], full["weights"])


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 0), (1, 2)])  # 2 persistent loader workers
def test_a_stop_signal_mid_epoch_leaves_a_checkpoint_the_rerun_ends_identical_from(tmp_path, world, workers):
    full = in_processes(world, tmp_path / "a", "train", run_dir=str(tmp_path / "full"), epochs=3)[0]  # no workers
    stopped = in_processes(world, tmp_path / "b", "train", run_dir=str(tmp_path / "run"), epochs=3, stop_at=(1, 1, world - 1),
                           workers=workers)
    for r in stopped:  # every process stops at the same step, whichever received the signal
        assert r["stopped"].startswith("toy: stopped by SIGTERM at epoch 2, step 2/3")
    state = load_checkpoint(tmp_path / "run" / "c.pt")
    assert state["epoch"] == 0 and state["partial"]["epoch"] == 1 and state["partial"]["step"] == 2
    resumed = in_processes(world, tmp_path / "c", "train", run_dir=str(tmp_path / "run"), epochs=3, workers=workers)[0]
    assert all(torch.equal(resumed["weights"][k], full["weights"][k]) for k in full["weights"])  # bit-identical
    assert load_checkpoint(tmp_path / "run" / "c.pt").get("partial") is None and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_the_dino_teacher_trains_and_scores_its_k_nn_under_two_processes(tmp_path):
    from imagefolders import make_imagenet

    make_imagenet(tmp_path / "img", classes=2, train=4, val=3, size=32)
    two = in_processes(2, tmp_path / "t", "teacher", root=str(tmp_path / "img"), run_dir=str(tmp_path / "run"))
    assert two[0] == two[1] and 0 <= two[0]["knn_top1"] <= 100  # every rank: the same numbers (k-NN over the whole bank)
