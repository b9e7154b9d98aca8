import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mim.checkpoint import load_checkpoint
from mim.engine import OptimConfig, RunConfig, Task, fit, param_groups_weight_decay
from mim.schedules import cosine_schedule

OPTIM = OptimConfig(epochs=3, batch_size=4, base_lr=0.5, warmup_epochs=1, weight_decay=0.05)
RUN = RunConfig(seed=3)


class Boom(Exception):
    pass


def make_task(crash_after_epoch: int | None = None) -> Task:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1))
    data = torch.randn(16, 4)

    def loader(epoch: int):
        g = torch.Generator().manual_seed(epoch)
        return data[torch.randperm(16, generator=g)].split(4)

    def step(m, x):
        noise = torch.randn_like(x) * 0.1 + random.random() * 0.1  # torch's and Python's global RNGs, as masking and timm's transforms use
        return m(x + noise).pow(2).mean(), {}

    def evaluate(epoch: int):
        if crash_after_epoch is not None and epoch == crash_after_epoch:
            raise Boom
        return {"val": float(epoch)}

    return Task(model, step, loader, 4, param_groups_weight_decay(model, 0.05), evaluate=evaluate)


def run(task: Task, tmp: Path, optim: OptimConfig = OPTIM, config: dict | None = None):
    return fit(task, optim, RUN, checkpoint=tmp / "ckpt.pt", log_dir=tmp / "logs", config=config or {"a": 1}, desc="t")


def test_resume_after_crash_gives_identical_weights(tmp_path):
    full = make_task()
    run(full, tmp_path / "full")
    crashed = make_task(crash_after_epoch=1)  # dies during epoch 2, after epoch 1 was saved
    with pytest.raises(Boom):
        run(crashed, tmp_path / "resumed")
    assert load_checkpoint(tmp_path / "resumed" / "ckpt.pt")["epoch"] == 0
    resumed = make_task()
    metrics = run(resumed, tmp_path / "resumed")
    assert metrics["val"] == 2.0
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    ckpt = load_checkpoint(tmp_path / "resumed" / "ckpt.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["a"] == 1


def test_other_config_starts_afresh(tmp_path):
    run(make_task(), tmp_path)
    t = make_task()
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    run(t, tmp_path, optim=OptimConfig(epochs=1, batch_size=4, base_lr=0.0), config={"a": 2})
    assert all(torch.equal(before[k], v) for k, v in t.model.state_dict().items())  # lr 0: trained afresh, not loaded
    assert load_checkpoint(tmp_path / "ckpt.pt")["config"]["a"] == 2


def test_changed_library_or_data_starts_afresh(tmp_path, monkeypatch):
    run(make_task(), tmp_path / "r")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text('{"params": {"seed": 1}}')  # data regenerated
    t = make_task()
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    run(t, tmp_path / "r", optim=OptimConfig(epochs=3, batch_size=4, base_lr=0.0))
    assert all(torch.equal(before[k], v) for k, v in t.model.state_dict().items())  # not the old weights


def test_no_weight_decay_on_biases_and_norms():
    m = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    no, decay = param_groups_weight_decay(m, 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([3, 3])]
    assert no["weight_decay"] == 0.0 and len(no["params"]) == 3


def test_cosine_schedule_shape():
    s = cosine_schedule(1.0, 0.1, 10, 2)
    assert len(s) == 10 and s[0] == 0.0 and s[2] == 1.0 and np.isclose(s[-1], 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 7 / 8)))
    assert np.all(np.diff(s[2:]) <= 0)
