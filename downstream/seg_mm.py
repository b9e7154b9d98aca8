"""mmseg/mmengine pieces of the segment stage, registered from our code (importing this needs mmseg).

* `MimViT` (downstream/seg_backbone.py) in mmseg's MODELS registry;
* `LayerDecayConstructor`: MAE's layer-wise lr decay (mim/param_groups.py) as an mmengine
  optimizer-wrapper constructor;
* `PerClassIoUMetric`: mmseg's IoUMetric that also keeps the per-class IoU/accuracy it prints;
* `ConsoleRunner`: mmengine's Runner whose console skips the config/environment/hook dumps
  (its log file in the work dir keeps them; the config is also saved beside the metrics);
* `FiniteHook`: a NaN/Inf loss stops training before mmengine checkpoints it, and no checkpoint
  with non-finite weights is written;
* `safe_checkpoints()`: mmengine's checkpoints written and read with torch's safe loading on
  (`weights_only=True`): the few classes they hold are allow-listed, nothing else.
"""
from __future__ import annotations

from typing import Any

from downstream.mmseg_env import import_mmseg

import_mmseg()

import logging  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.logging import HistoryBuffer  # noqa: E402
from mmengine.optim import DefaultOptimWrapperConstructor  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from mmseg.evaluation import IoUMetric  # noqa: E402
from mmseg.registry import HOOKS, METRICS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS  # noqa: E402
from torch import nn  # noqa: E402

from downstream.seg_backbone import MimViT  # noqa: E402
from mim.checkpoint import load_error  # noqa: E402
from mim.engine import non_finite  # noqa: E402
from mim.errors import MimError  # noqa: E402
from mim.param_groups import layer_decay_groups  # noqa: E402

MODELS.register_module(name="MimViT", module=MimViT, force=True)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class LayerDecayConstructor(DefaultOptimWrapperConstructor):
    """Per-parameter groups: lr x decay**(num_layers + 1 - layer_id); no weight decay on 1-D params,
    cls_token and pos_embed (MAE's `param_groups_lrd`). paramwise_cfg: {layer_decay: float}.

    The same layers and lr scales as mmseg's LearningRateDecayOptimizerConstructor, which the mmseg
    MAE config uses (mmseg/engine/optimizers/layer_decay_optimizer_constructor.py): a block's
    relative position bias table (`blocks.N.attn.relative_position_bias_table`, 2-D) and its
    LayerScale gammas (`blocks.N.ls1.gamma`, 1-D) are layer N + 1; the table is decayed and the
    gammas are not, as there (no decay only for `len(shape) == 1` or `.bias`).  One difference is
    kept: mmseg's skip list `('pos_embed', 'cls_token')` never matches its prefixed names
    (`backbone.pos_embed`), so mmseg decays those two; here they are not decayed (MAE, BEiT).
    """

    def add_params(self, params: list[dict[str, Any]], module: nn.Module, **_: Any) -> None:
        decay = float(self.paramwise_cfg["layer_decay"])
        num_layers = module.backbone.num_layers  # blocks in the backbone
        for g in layer_decay_groups(module, self.base_wd, decay, num_layers, prefix="backbone.vit."):
            params.append({"params": g["params"], "lr": self.base_lr * g["lr_scale"], "weight_decay": g["weight_decay"]})


@HOOKS.register_module(force=True)
class FiniteHook(Hook):
    """mmengine trains on through a NaN loss and checkpoints the NaN weights; this stops it first
    (it runs before CheckpointHook, priority VERY_LOW) and refuses a checkpoint that holds any."""

    priority = "ABOVE_NORMAL"

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        loss = (outputs or {}).get("loss")
        if loss is not None and not bool(torch.isfinite(torch.as_tensor(loss)).all()):
            raise MimError(f"segment: loss is {float(loss)} at iteration {runner.iter + 1}; the last checkpoint in "
                           f"{runner.work_dir} (if any) is kept. Lower segment.lr or check the data")

    def before_save_checkpoint(self, runner: Any, checkpoint: dict[str, Any]) -> None:
        bad = non_finite(checkpoint.get("state_dict", {}))
        if bad:
            raise MimError(f"segment: {len(bad)} weights are NaN or Inf at iteration {runner.iter} (e.g. {bad[0]}); "
                           "not checkpointed. Lower segment.lr")


@METRICS.register_module(force=True)
class PerClassIoUMetric(IoUMetric):
    """IoUMetric that keeps its last summary (every process) and per-class IoU/accuracy (rank 0;
    fractions, NaN for classes absent from labels and predictions)."""

    default_prefix = ""  # metrics keep their plain names (mIoU, not iou/mIoU)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.per_class: dict[str, list[Any]] | None = None
        self.summary: dict[str, float] = {}

    def compute_metrics(self, results: list) -> dict[str, float]:
        metrics = super().compute_metrics(results)
        intersect, union, _, label = (sum(col) for col in zip(*results))
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = (intersect / union).cpu().numpy()
            acc = (intersect / label).cpu().numpy()
        self.per_class = {"class": list(self.dataset_meta["classes"]), "IoU": iou.tolist(), "Acc": acc.tolist()}
        return metrics

    def evaluate(self, size: int) -> dict[str, float]:
        metrics = super().evaluate(size)  # computed on rank 0, broadcast to every process
        self.summary = {k: float(v) for k, v in metrics.items()}  # aAcc, mIoU, mAcc in %
        return metrics


def safe_checkpoints() -> None:
    """Make mmengine's checkpoints load with `torch.load(weights_only=True)`, the torch default.

    Their message hub holds HistoryBuffer objects (numpy arrays inside): those classes, and numpy's
    array/dtype/scalar constructors, are allow-listed, nothing else.  HistoryBuffer also pickles
    its statistic functions (min/max/mean/current) through `getattr`, which safe loading refuses,
    rightly: an allowed `getattr` reaches any attribute.  The functions are the class defaults,
    re-registered by `HistoryBuffer.__init__`, so its pickled state leaves them out here.
    """
    HistoryBuffer.__getstate__ = _history_state  # type: ignore[method-assign]
    dtypes = {type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.uint8, np.bool_)}
    torch.serialization.add_safe_globals(
        [HistoryBuffer, np.ndarray, np.dtype, *dtypes, np._core.multiarray._reconstruct, np._core.multiarray.scalar]
    )


def _history_state(self: HistoryBuffer) -> dict[str, Any]:
    return {k: v for k, v in self.__dict__.items() if k != "statistics_methods"}


_CONSOLE_SKIP = ("Config:", "Hooks will be executed", "\n---", "Distributed training is not used")


class _ConsoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_CONSOLE_SKIP)


class ConsoleRunner(Runner):
    """Runner with a readable console (progress, metrics and warnings, not the 300-line dumps) that
    resumes only a `.pth` inside its work dir that `torch.load(weights_only=True)` accepts."""

    def resume(self, filename: str, *args: Any, **kwargs: Any) -> None:
        path, folder = Path(filename).resolve(), Path(self.work_dir).resolve()
        again = f"delete {self.work_dir} to start this run over"
        if path.suffix != ".pth" or folder not in path.parents:
            raise MimError(f"refusing to resume from {filename}: not a .pth checkpoint inside {self.work_dir} "
                           f"(named by its last_checkpoint); {again}")
        try:  # checked here with weights_only=True whatever torch's default or TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD say
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a pickle with code, a truncated or foreign file
            raise MimError(f"cannot resume safely from {filename} ({load_error(e, path)}); {again}") from None
        super().resume(filename, *args, **kwargs)

    def build_logger(self, *args: Any, **kwargs: Any) -> Any:
        logger = super().build_logger(*args, **kwargs)
        for h in logger.handlers:
            if type(h) is logging.StreamHandler:
                h.addFilter(_ConsoleFilter())
        return logger


def quiet_known_warnings() -> None:
    """mmseg 1.2.2 deprecation notices that say nothing about this run."""
    warnings.filterwarnings("ignore", message=".*build_loss.. would be deprecated")
    warnings.filterwarnings("ignore", message="Default ..avg_non_ignore.. is False")
