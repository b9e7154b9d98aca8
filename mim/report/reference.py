"""The papers' numbers, as data: what the results table prints beside ours, and from where.

Each `Reference` is one reported number with the recipe it belongs to (the model and the
pretraining epochs) and its full citation.  The table compares like with like: a student's
cell gets the reference measured at the student's own pretraining epochs (the `pretrain_epochs`
its fine-tune metrics record); when the method's references are all at other lengths the cell
says so ("no reference at 800 ep") instead of printing a delta against a longer schedule.  A
reference whose epochs its source does not state is used, marked `(epochs not stated)`.

Protocol deviations: a `Deviation` names a metrics value that says a cell was measured with a
protocol other than the paper's; such cells carry its marker and the note under the table.
"""
from __future__ import annotations

from dataclasses import dataclass

MAE_PAPER = "MAE (He et al., Masked Autoencoders Are Scalable Vision Learners, arXiv 2111.06377)"
MAE_REPO = "facebookresearch/mae README.md (the released ViT-B checkpoint, pretrained 1600 epochs)"
BEIT_PAPER = "BEiT (Bao et al., BERT Pre-Training of Image Transformers, arXiv 2106.08254)"
IMG2VEC_PAPER = "Img2Vec (Pan et al., A Teacher of High Token-Diversity Helps Masked AutoEncoders, arXiv 2304.12535)"


@dataclass(frozen=True)
class Reference:
    cell: str  # "<task>/<metric>" of metrics/<task>/<student>.json
    value: float
    model: str  # the architecture the number is for
    pretrain_epochs: int | None  # the pretraining schedule it was measured after; None: the source does not say
    source: str  # paper (arXiv id, where in it) or the official repository file
    kind: str = "paper"  # "paper", or "reproduction" (a well-kept third-party rerun of the recipe)


# Method (the student's name in dvc.yaml) -> its reported numbers.  Only ViT-B numbers: the paper
# profile's students are ViT-B/16.
REFERENCES: dict[str, tuple[Reference, ...]] = {
    "mae": (
        Reference("finetune/top1", 83.6, "ViT-B/16", 1600, f"{MAE_PAPER}, Table 3 (ImageNet-1k fine-tune, ViT-B); {MAE_REPO}"),
        Reference("probe/linear_top1", 68.0, "ViT-B/16", 1600,
                  "facebookresearch/mae FINETUNE.md, Linear Probing (ViT-B, the released 1600-epoch checkpoint)"),
        Reference("detect/bbox_AP", 51.6, "ViT-B/16", 1600,
                  "detectron2 projects/ViTDet README.md, Mask R-CNN ViTDet-B from the MAE checkpoint (the MAE paper's own "
                  "recipe, Table 4: 50.3)"),
        Reference("detect/segm_AP", 45.9, "ViT-B/16", 1600,
                  "detectron2 projects/ViTDet README.md, Mask R-CNN ViTDet-B from the MAE checkpoint (the MAE paper: 44.9)"),
        Reference("segment/mIoU", 48.1, "ViT-B/16", 1600, f"{MAE_PAPER}, Table 5 (ADE20K UperNet, ViT-B)"),
        Reference("finetune/top1", 83.3, "ViT-B/16", 800, "open-mmlab/mmselfsup MAE model zoo, ViT-B pretrained 800 epochs",
                  kind="reproduction"),
        Reference("probe/linear_top1", 65.1, "ViT-B/16", 800, "open-mmlab/mmselfsup MAE model zoo, ViT-B pretrained 800 epochs",
                  kind="reproduction"),
    ),
    "beit": (
        Reference("finetune/top1", 83.2, "ViT-B/16", 800, f"{BEIT_PAPER}, Table 1 (ImageNet-1k fine-tune, BEiT-B "
                                                         "pretrained on ImageNet-1k)"),
        Reference("detect/bbox_AP", 49.8, "ViT-B/16", None, f"{MAE_PAPER}, Table 4 (COCO Mask R-CNN), its BEiT-B row"),
        Reference("detect/segm_AP", 44.4, "ViT-B/16", None, f"{MAE_PAPER}, Table 4 (COCO Mask R-CNN), its BEiT-B row"),
        Reference("segment/mIoU", 47.1, "ViT-B/16", None, f"{MAE_PAPER}, Table 5 (ADE20K UperNet), its BEiT-B row"),
    ),
    "img2vec": (
        Reference("finetune/top1", 85.1, "ViT-B/16", None, f"{IMG2VEC_PAPER}, abstract: ImageNet-1k fine-tune top-1 of ViT-B"),
    ),
}


@dataclass(frozen=True)
class Deviation:
    task: str  # metrics/<task>/<student>.json
    key: str  # the metrics key that records the protocol
    value: str  # the value that is not the paper's protocol
    cells: tuple[str, ...]  # the "<task>/<metric>" cells it affects
    marker: str
    note: str


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation("probe", "linear_protocol", "cached", ("probe/linear_top1",), "†",
              "linear probe on centre-crop features computed once (`probe.linear.protocol: cached`), not MAE's protocol "
              "(facebookresearch/mae main_linprobe.py: fresh RandomResizedCrop + flip views every epoch)"),
)


def pick(refs: tuple[Reference, ...], cell: str, pretrain_epochs: float | None) -> tuple[Reference | None, str]:
    """The reference for `cell` at these pretraining epochs, and why there is none ("" when found).

    An exact schedule match first, else one whose source does not state its epochs."""
    mine = [r for r in refs if r.cell == cell]
    if not mine:
        return None, "n/a"
    exact = [r for r in mine if pretrain_epochs is not None and r.pretrain_epochs == int(pretrain_epochs)]
    if exact:
        return exact[0], ""
    unstated = [r for r in mine if r.pretrain_epochs is None]
    if unstated:
        return unstated[0], ""
    if pretrain_epochs is None:
        return None, "no reference (epochs unknown)"
    return None, f"no reference at {int(pretrain_epochs)} ep"


def describe(r: Reference) -> str:
    epochs = "epochs not stated" if r.pretrain_epochs is None else f"{r.pretrain_epochs} ep"
    return f"{r.value:g} ({r.model}, {epochs}{', ' + r.kind if r.kind != 'paper' else ''}): {r.source}"
