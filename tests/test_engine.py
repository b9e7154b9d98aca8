import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mim.checkpoint import load_checkpoint
from mim.engine import OptimConfig, RunConfig, Task, fit, inputs_fingerprint, make_task
from mim.errors import MimError
from mim.param_groups import weight_decay_groups
from mim.schedules import Budget, cosine_schedule

OPTIM = OptimConfig(epochs=3, batch_size=4, base_lr=0.5, warmup_epochs=1, weight_decay=0.05)
RUN = RunConfig(seed=3)


class Boom(Exception):
    pass


def toy_task(crash_after_epoch: int | None = None, optim: OptimConfig = OPTIM, accum: int = 1) -> Task:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1))
    data = torch.randn(16, 4)

    def loader(epoch: int, start: int = 0, stop: int | None = None):  # micro-batches of optimizer steps [start, stop)
        g = torch.Generator().manual_seed(epoch)
        batches = data[torch.randperm(16, generator=g)].split(4 // accum)
        return batches[start * accum : None if stop is None else stop * accum]

    def step(m, x):
        noise = torch.randn_like(x) * 0.1 + random.random() * 0.1  # torch's and Python's global RNGs, as masking and timm's transforms use
        return m(x + noise).pow(2).mean(), {}

    def evaluate(epoch: int):
        if crash_after_epoch is not None and epoch == crash_after_epoch:
            raise Boom
        return {"val": float(epoch)}

    return Task(model, optim, step, loader, steps_per_epoch=4, accum_steps=accum, param_groups=weight_decay_groups(model, 0.05),
                evaluate=evaluate)


def run(task: Task, tmp: Path, config: dict | None = None):
    return fit(task, RUN, checkpoint=tmp / "ckpt.pt", log_dir=tmp / "logs", config=config or {"a": 1}, desc="t")


def test_resume_after_crash_gives_identical_weights(tmp_path):
    full = toy_task()
    run(full, tmp_path / "full")
    crashed = toy_task(crash_after_epoch=1)  # dies during epoch 2, after epoch 1 was saved
    with pytest.raises(Boom):
        run(crashed, tmp_path / "resumed")
    assert load_checkpoint(tmp_path / "resumed" / "ckpt.pt")["epoch"] == 0
    resumed = toy_task()
    metrics = run(resumed, tmp_path / "resumed")
    assert metrics["val"] == 2.0
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    ckpt = load_checkpoint(tmp_path / "resumed" / "ckpt.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["a"] == 1


def logs(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*.tsv"))}


def test_a_kill_between_the_logs_and_the_checkpoint_leaves_the_logs_of_an_uninterrupted_run(tmp_path):
    run(toy_task(), tmp_path / "full")
    with pytest.raises(Boom):
        run(toy_task(crash_after_epoch=1), tmp_path / "killed")
    # as a kill after dvclive wrote epoch 2's row and while it rewrote its summary leaves them
    for tsv in (tmp_path / "killed" / "logs").rglob("*.tsv"):
        tsv.write_text(tsv.read_text() + "1\t0.123\n2\t0.4")
    (tmp_path / "killed" / "logs" / "metrics.json").write_text("")
    run(toy_task(), tmp_path / "killed")  # dvclive alone fails here (JSONDecodeError) or logs epoch 2 as step 2
    assert logs(tmp_path / "killed" / "logs") == logs(tmp_path / "full" / "logs") != {}


def test_other_config_starts_afresh(tmp_path):
    run(toy_task(), tmp_path)
    t = toy_task(optim=OptimConfig(epochs=1, batch_size=4, base_lr=0.0))
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    run(t, tmp_path, config={"a": 2})
    assert all(torch.equal(before[k], v) for k, v in t.model.state_dict().items())  # lr 0: trained afresh, not loaded
    assert load_checkpoint(tmp_path / "ckpt.pt")["config"]["a"] == 2


def test_changed_library_or_data_starts_afresh(tmp_path, monkeypatch):
    run(toy_task(), tmp_path / "r")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text('{"params": {"seed": 1}}')  # data regenerated
    t = toy_task(optim=OptimConfig(epochs=3, batch_size=4, base_lr=0.0))
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    run(t, tmp_path / "r")
    assert all(torch.equal(before[k], v) for k, v in t.model.state_dict().items())  # not the old weights


def test_no_weight_decay_on_biases_and_norms():
    m = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    no, decay = weight_decay_groups(m, 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([3, 3])]
    assert no["weight_decay"] == 0.0 and len(no["params"]) == 3


def test_cosine_schedule_shape():
    s = cosine_schedule(1.0, 0.1, 10, 2)
    assert len(s) == 10 and s[0] == 0.0 and s[2] == 1.0 and np.isclose(s[-1], 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 7 / 8)))
    assert np.all(np.diff(s[2:]) <= 0)


def test_fingerprint_covers_the_code_the_run_imported_and_no_more(tmp_path):
    """Resume identity: the library files this process imported (subpackages too), not every file."""
    import subprocess
    import sys

    script = ("import mim.engine, mim.methods.mae; from mim.engine import loaded_code; "
              "print('\\n'.join(p.relative_to(mim.engine.LIBRARY.parent).as_posix() for p in loaded_code()))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert {"mim/engine.py", "mim/methods/mae.py", "mim/decoder.py", "mim/vit.py"} <= set(out)
    assert "mim/report/tables.py" not in out and "mim/methods/beit.py" not in out  # not run by MAE's pretraining

    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("x = 1\n")
    b.write_text("y = 1\n")
    before = inputs_fingerprint(tmp_path / "none.json", code=[a, b])
    assert inputs_fingerprint(tmp_path / "none.json", code=[a, b]) == before
    b.write_text("y = 2\n")  # an imported file changed
    assert inputs_fingerprint(tmp_path / "none.json", code=[a, b]) != before


def test_make_task_checks_the_batch_seeds_the_build_and_skips_norms():
    data = torch.utils.data.TensorDataset(torch.randn(10, 4))
    optim = OptimConfig(epochs=1, batch_size=4, base_lr=0.1)
    step = lambda m, b: (m(b[0]).pow(2).mean(), {})
    build = lambda: nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    a = make_task(build, data, optim, RunConfig(seed=5, device_batch=2), step)
    b = make_task(build, data, optim, RunConfig(seed=5, device_batch=2), step)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert a.optim is optim and a.steps_per_epoch == 2 and a.accum_steps == 2  # 2 full batches of 4, 2 images per forward
    assert [len(x[0]) for x in a.loader(0)] == [2] * 4
    no, decay = a.param_groups
    assert len(decay["params"]) == 1 and len(no["params"]) == 3 and no["weight_decay"] == 0
    assert [x[0].tolist() for x in a.loader(1)] == [x[0].tolist() for x in b.loader(1)]  # deterministic per epoch
    with pytest.raises(MimError, match="10 images, fewer than one optimizer step of 32"):
        make_task(build, data, OptimConfig(epochs=1, batch_size=32, base_lr=0.1), RunConfig(), step)


def test_non_finite_weights_are_never_saved(tmp_path):
    task = toy_task()
    real_eval = task.evaluate

    def corrupt(epoch: int):
        if epoch == 1:  # weights turned NaN during epoch 2 while the loss looked finite
            task.model[0].weight.data[0, 0] = float("nan")
        return real_eval(epoch)

    task.evaluate = corrupt
    with pytest.raises(MimError, match=r"1 tensors are not finite after epoch 2 \(e\.g\. model\.0\.weight\); the checkpoint of "
                                       r"epoch 1 is kept"):
        run(task, tmp_path)
    kept = load_checkpoint(tmp_path / "ckpt.pt")
    assert kept["epoch"] == 0 and all(torch.isfinite(t).all() for t in kept["model"].values())


def test_nan_loss_stops_at_that_step_and_says_which_checkpoint_is_kept(tmp_path):
    task = toy_task(optim=OptimConfig(epochs=3, batch_size=4, base_lr=0.5))
    step = task.step
    calls = []

    def nan_in_epoch_two(m, x):
        calls.append(1)
        loss, logs = step(m, x)
        return (loss * float("nan") if len(calls) == 6 else loss), logs

    task.step = nan_in_epoch_two
    with pytest.raises(MimError, match=r"loss is nan at epoch 2, batch 1; the checkpoint of epoch 1 is kept"):
        run(task, tmp_path)
    assert load_checkpoint(tmp_path / "ckpt.pt")["epoch"] == 0


def test_divergence_guard():
    from mim.engine import DivergenceGuard

    off = DivergenceGuard(0.0)
    assert not any(off.diverged(x) for x in [1.0] * 30 + [1e9])
    g = DivergenceGuard(100.0, warmup=5)
    assert not any(g.diverged(x) for x in [1.0, 2.0, 1.5, 1.2, 1.1, 50.0, 1.0])  # a spike under 100x passes
    assert g.diverged(1e6) and g.median == pytest.approx(1.2)
    with pytest.raises(Exception, match="must be 0 \\(off\\) or above 1"):
        from mim.config import from_dict

        from_dict(RunConfig, {"divergence": 0.5})


# --- LARS and DINO's per-parameter clipping ------------------------------------------------------------
def dino_clip_gradients(model: nn.Module, clip: float) -> None:
    """facebookresearch/dino utils.py clip_gradients, as written there (the reference)."""
    for p in model.parameters():
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)


def test_per_param_clipping_is_dinos_and_global_is_torchs():
    from mim.engine import clip_gradients

    def model_with_grads() -> nn.Module:
        m = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2, bias=False))
        grads = [torch.full((4, 3), 2.0), torch.full((4,), 0.01), torch.full((2, 4), -3.0)]  # norms 6.9, 0.02, 8.5
        for p, g in zip(m.parameters(), grads):
            p.grad = g.clone()
        return m

    got, ref, glob = model_with_grads(), model_with_grads(), model_with_grads()
    clip_gradients(got, 1.0, "per_param")
    dino_clip_gradients(ref, 1.0)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(got.parameters(), ref.parameters()))
    norms = [float(p.grad.norm()) for p in got.parameters()]
    assert np.allclose(norms, [1.0, 0.02, 1.0], atol=1e-5)  # each clipped on its own; the small one untouched
    clip_gradients(glob, 1.0, "global")
    assert np.isclose(float(torch.cat([p.grad.flatten() for p in glob.parameters()]).norm()), 1.0, atol=1e-5)
    assert float(list(glob.parameters())[1].grad.norm()) < 0.01  # scaled with the rest


def test_fit_clips_in_the_configured_mode(tmp_path, monkeypatch):
    import mim.engine

    calls = []
    monkeypatch.setattr(mim.engine, "clip_gradients", lambda model, clip, mode: calls.append((clip, mode)))
    run(toy_task(optim=OptimConfig(epochs=1, batch_size=4, base_lr=0.5, clip_grad=0.5, clip_mode="per_param")), tmp_path / "a")
    assert calls == [(0.5, "per_param")] * 4  # every optimizer step
    calls.clear()
    run(toy_task(optim=OptimConfig(epochs=1, batch_size=4, base_lr=0.5)), tmp_path / "b")
    assert calls == []  # clip_grad None: no clipping


def dino_lars_step(params: list[torch.Tensor], grads: list[torch.Tensor], mus: list[torch.Tensor], lr: float, wd: float,
                   momentum: float = 0.9, eta: float = 0.001) -> None:
    """facebookresearch/dino utils.py LARS.step for one group, on plain tensors (the reference)."""
    for p, dp, mu in zip(params, grads, mus):
        if p.ndim != 1:
            dp = dp.add(p, alpha=wd)
            param_norm, update_norm = torch.norm(p), torch.norm(dp)
            one = torch.ones_like(param_norm)
            dp = dp.mul(torch.where(param_norm > 0.0, torch.where(update_norm > 0, eta * param_norm / update_norm, one), one))
        mu.mul_(momentum).add_(dp)
        p.add_(mu, alpha=-lr)


def test_lars_optimizer_is_dinos():
    from mim.engine import _make_optimizer, scaled_lr
    from mim.lars import LARS

    cfg = OptimConfig(epochs=1, batch_size=512, base_lr=0.3, optimizer="lars", weight_decay=1e-2, momentum=0.9)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    opt = _make_optimizer(weight_decay_groups(m, cfg.weight_decay), cfg)
    assert isinstance(opt, LARS) and all(g["lr"] == scaled_lr(cfg) == 0.6 for g in opt.param_groups)
    ref = {n: p.detach().clone() for n, p in m.named_parameters()}
    mus = {n: torch.zeros_like(p) for n, p in ref.items()}
    for _ in range(3):
        grads = {n: torch.randn_like(p) for n, p in ref.items()}
        for n, p in m.named_parameters():
            p.grad = grads[n].clone()
        opt.step()
        for g in opt.param_groups:  # DINO: wd on the first (regularised) group only; LARS skips 1-D anyway
            names = [n for n, p in m.named_parameters() if any(p is q for q in g["params"])]
            dino_lars_step([ref[n] for n in names], [grads[n] for n in names], [mus[n] for n in names], g["lr"], g["weight_decay"])
    for n, p in m.named_parameters():
        assert torch.allclose(p, ref[n], atol=1e-6, rtol=0), n


def test_clip_mode_is_checked():
    from mim.config import from_dict
    from mim.errors import ConfigError

    assert from_dict(OptimConfig, {"epochs": 1, "batch_size": 4, "base_lr": 0.1, "clip_mode": "per_param"}).clip_mode == "per_param"
    with pytest.raises(ConfigError, match="clip_mode"):
        from_dict(OptimConfig, {"epochs": 1, "batch_size": 4, "base_lr": 0.1, "clip_mode": "layer"})
    with pytest.raises(ConfigError, match="optimizer"):
        from_dict(OptimConfig, {"epochs": 1, "batch_size": 4, "base_lr": 0.1, "optimizer": "lamb"})


# --- budgets in epochs or in optimizer steps (mim/schedules.py resolve) -----------------------------------
def spy_steps(monkeypatch) -> list[list[tuple[float, float]]]:
    """(lr, weight decay) of every param group at each optimizer step fit takes."""
    import mim.engine

    seen: list[list[tuple[float, float]]] = []
    real = mim.engine._make_optimizer

    def make(groups, cfg, **kw):
        opt = real(groups, cfg, **kw)
        step = opt.step

        def recording_step(*a, **k):
            seen.append([(g["lr"], g["weight_decay"]) for g in opt.param_groups])
            return step(*a, **k)

        opt.step = recording_step
        return opt

    monkeypatch.setattr(mim.engine, "_make_optimizer", make)
    return seen


EPOCH_FORM = dict(epochs=3, warmup_epochs=1)  # toy_task: 4 optimizer steps per epoch -> 12 steps, 4 of warm-up


@pytest.mark.parametrize("form", [dict(steps=12, warmup_steps=4), dict(steps=12, warmup_epochs=1), dict(epochs=3, warmup_steps=4)])
def test_a_step_budget_runs_the_epoch_budget_of_the_same_total_steps(tmp_path, monkeypatch, form):
    seen = spy_steps(monkeypatch)
    common = dict(batch_size=4, base_lr=0.5, weight_decay=0.05, weight_decay_end=0.4, min_lr=1e-3)
    by_epochs, by_steps = toy_task(optim=OptimConfig(**EPOCH_FORM, **common)), toy_task(optim=OptimConfig(**form, **common))
    run(by_epochs, tmp_path / "epochs")
    epoch_sched = list(seen)
    seen.clear()
    run(by_steps, tmp_path / "steps")
    assert seen == epoch_sched and len(seen) == 12
    lr = cosine_schedule(0.5 * 4 / 256, 1e-3, 12, 4)  # the reference: warm-up + cosine over the 12 steps
    wd = cosine_schedule(0.05, 0.4, 12, 0)
    assert [s[1][0] for s in seen] == [float(x) for x in lr] and [s[1][1] for s in seen] == [float(x) for x in wd]
    assert seen[0][0] == (0.0, 0.0)  # the bias group: no weight decay
    for a, b in zip(by_epochs.model.state_dict().values(), by_steps.model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_step_budget_stops_mid_epoch_and_resumes_bit_identically(tmp_path, monkeypatch):
    seen = spy_steps(monkeypatch)
    optim = OptimConfig(steps=10, warmup_steps=3, batch_size=4, base_lr=0.5)  # 4 steps per epoch: 4 + 4 + 2
    assert toy_task(optim=optim).budget == Budget(steps_per_epoch=4, epochs=3, total_steps=10, warmup_steps=3)
    full = toy_task(optim=optim)
    metrics = run(full, tmp_path / "full")
    assert len(seen) == 10 and metrics["val"] == 2.0
    assert [s[1][0] for s in seen] == [float(x) for x in cosine_schedule(0.5 * 4 / 256, 0.0, 10, 3)]
    assert metrics["lr"] == seen[-1][1][0]  # the last epoch's lr is that of step 10, not of a full epoch's end
    assert load_checkpoint(tmp_path / "full" / "ckpt.pt")["epoch"] == 2

    seen.clear()
    with pytest.raises(Boom):
        run(toy_task(crash_after_epoch=1, optim=optim), tmp_path / "resumed")  # killed before epoch 2's checkpoint
    assert len(seen) == 8
    seen.clear()
    resumed = toy_task(optim=optim)
    assert run(resumed, tmp_path / "resumed") == metrics
    assert len(seen) == 4 + 2  # epoch 2 again, then the partial epoch 3
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)

    seen.clear()
    again = toy_task(optim=optim)  # the checkpoint after the partial last epoch is the finished run
    assert run(again, tmp_path / "resumed") == metrics and seen == []
    for a, b in zip(full.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_step_budget_draws_no_batch_past_it(tmp_path):
    task = toy_task(optim=OptimConfig(steps=5, batch_size=4, base_lr=0.5), accum=2)
    task.steps_per_epoch = 2  # 4 micro-batches = 2 steps per epoch
    drawn = []
    loader = task.loader
    task.loader = lambda epoch, start, stop: (drawn.append(epoch) or b for b in loader(epoch, start, stop))
    run(task, tmp_path)
    assert task.budget == Budget(steps_per_epoch=2, epochs=3, total_steps=5, warmup_steps=0)
    assert drawn == [0] * 4 + [1] * 4 + [2] * 2  # accumulation: 2 batches per step, none drawn past the 5th step


def test_the_length_is_epochs_or_steps(tmp_path):
    from mim.config import from_dict
    from mim.errors import ConfigError

    base = {"batch_size": 4, "base_lr": 0.1}
    with pytest.raises(ConfigError, match=r"^o\.steps: 12 given with epochs 3: give the run's length as epochs or as steps "
                                          r"\(optimizer steps\), not both$"):
        from_dict(OptimConfig, {**base, "epochs": 3, "steps": 12}, "o")
    with pytest.raises(ConfigError, match=r"^o\.epochs: required key is missing \(or give the run's length in optimizer steps as steps\)$"):
        from_dict(OptimConfig, base, "o")
    with pytest.raises(ConfigError, match=r"^o\.warmup_steps: 2 given with warmup_epochs 1: give the warm-up as warmup_epochs or "
                                          r"as warmup_steps, not both$"):
        from_dict(OptimConfig, {**base, "steps": 12, "warmup_epochs": 1, "warmup_steps": 2}, "o")
    with pytest.raises(ConfigError, match=r"^o\.warmup_steps: 20 is longer than the run's 12 steps$"):
        from_dict(OptimConfig, {**base, "steps": 12, "warmup_steps": 20}, "o")
    with pytest.raises(ConfigError, match=r"^o\.steps: 0 is outside \[1, inf\)$"):
        from_dict(OptimConfig, {**base, "steps": 0}, "o")
    mixed = from_dict(OptimConfig, {**base, "steps": 12, "warmup_epochs": 2}, "o")  # 2 epochs: known once the data is
    assert mixed.budget(5).warmup_steps == 10
    with pytest.raises(MimError, match=r"the warm-up of 16 steps is longer than the run's 12 steps"):
        mixed.budget(8)
    assert OptimConfig(epochs=2, warmup_epochs=0.5, batch_size=4, base_lr=0.1).budget(7) == Budget(
        steps_per_epoch=7, epochs=2, total_steps=14, warmup_steps=3)


def test_dinos_teacher_momentum_and_temperature_follow_a_step_budget(tmp_path):
    """DINO's per-step EMA momentum spans the total steps, and its per-epoch teacher temperature the epochs they cover."""
    from imagefolders import make_imagenet
    from mim.data.images import DataRoot
    from mim.teacher import dino

    make_imagenet(tmp_path / "img", classes=2, train=4, val=1, size=32)  # 8 images, batch 4: 2 steps per epoch

    def teacher(optim: dict, name: str) -> tuple[list[float], list[float]]:
        cfg = dino.Config(model=dino.ModelConfig(arch="test_resnet", head=dino.HeadConfig(out_dim=16, hidden_dim=8, bottleneck_dim=4),
                                                 warmup_teacher_temp=0.02, teacher_temp=0.06, warmup_teacher_temp_epochs=2),
                          data=dino.DataConfig(global_size=32, local_size=16, n_local=1),
                          optim=OptimConfig(batch_size=4, base_lr=0.03, optimizer="sgd", **optim), knn=dino.KNNConfig(k=2))
        t = dino.task(cfg, RunConfig(), DataRoot(tmp_path / "img"))
        momenta, temps = [], []
        update, on_epoch = t.model.update_teacher, t.on_epoch
        t.model.update_teacher = lambda m: (momenta.append(m), update(m))
        t.on_epoch = lambda epoch: (on_epoch(epoch), temps.append(t.model.teacher_temp))
        fit(t, RunConfig(), checkpoint=tmp_path / name / "c.pt", log_dir=tmp_path / name, config={}, desc=name)
        return momenta, temps

    assert teacher({"epochs": 2}, "e") == ([float(m) for m in dino.momentum_schedule(dino.ModelConfig(), 4)], [0.02, 0.06])
    # 2 + 1 steps: the second epoch partial; the momentum schedule spans the 3 steps (not the 4 of 2 full epochs)
    assert teacher({"steps": 3}, "s") == ([float(m) for m in dino.momentum_schedule(dino.ModelConfig(), 3)], [0.02, 0.06])


def test_compile_on_and_off_give_the_same_losses(tmp_path):
    """run.compile: torch.compile of the model the step runs; the same losses on CPU within rounding."""
    try:
        torch.compile(nn.Linear(2, 2))(torch.randn(1, 2))
    except Exception as e:  # no C++ compiler for inductor, an unsupported platform
        pytest.skip(f"torch.compile is unavailable here: {type(e).__name__}: {e}")
    out = {}
    for flag in (False, True):
        task = toy_task(optim=OptimConfig(epochs=2, batch_size=4, base_lr=0.5))
        task.model[1].p = 0.0  # no dropout: the compiled graph draws its own random numbers
        losses: list[float] = []

        def recording(m, x, step=task.step, losses=losses):
            loss, logs = step(m, x)
            losses.append(float(loss))
            return loss, logs

        task.step = recording
        fit(task, RunConfig(seed=3, compile=flag), checkpoint=tmp_path / f"{flag}.pt", log_dir=tmp_path / f"l{flag}",
            config={"c": flag}, desc="t")
        out[flag] = losses
    assert len(out[True]) == 8 and out[True] == pytest.approx(out[False], rel=1e-5, abs=1e-6)


def test_syncing_every_k_steps_checks_and_logs_what_every_step_would(tmp_path, monkeypatch):
    """run.log_every: the host syncs come every k steps, over every loss since the last one, in order."""
    import mim.engine

    seen: dict[int, list[float]] = {}
    real = mim.engine.DivergenceGuard.diverged

    def spy(self, loss):
        seen.setdefault(self.factor_key, []).append(loss)
        return real(self, loss)

    monkeypatch.setattr(mim.engine.DivergenceGuard, "diverged", spy)
    metrics = {}
    for k in (1, 3):
        monkeypatch.setattr(mim.engine.DivergenceGuard, "factor_key", k, raising=False)
        metrics[k] = fit(toy_task(), RunConfig(seed=3, log_every=k), checkpoint=tmp_path / f"{k}.pt", log_dir=tmp_path / f"l{k}",
                         config={"k": k}, desc="t")
    assert len(seen[1]) == 12 and seen[3] == seen[1]  # every step's loss, in order, whichever the interval
    assert metrics[3] == metrics[1]

    task = toy_task()
    step = task.step
    calls = []

    def nan_at_the_sixth(m, x):
        calls.append(1)
        return step(m, x)[0] * (float("nan") if len(calls) == 6 else 1), {}

    task.step = nan_at_the_sixth
    with pytest.raises(MimError, match=r"t: loss is nan at epoch 2, batch 1; the checkpoint of epoch 1 is kept"):
        fit(task, RunConfig(seed=3, log_every=3), checkpoint=tmp_path / "nan.pt", log_dir=tmp_path / "lnan", config={}, desc="t")
    assert load_checkpoint(tmp_path / "nan.pt")["epoch"] == 0  # the NaN is found at the sync after it, never saved
