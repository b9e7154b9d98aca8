"""Reference numbers from the papers, printed beside ours in the paper profile's table.

Keyed by (student, column header) -> (value, source in ../shared/papers.md).  Values are
ViT-B/16, ImageNet-1k only, as the paper profile trains; later issues add detection and
segmentation entries (one line each).
"""
from __future__ import annotations

PAPER_VALUES: dict[tuple[str, str], tuple[float, str]] = {
    ("mae", "IN top-1 (fine-tune)"): (83.6, "papers.md: MAE, Reported (ViT-B)"),
    ("mae", "IN linear"): (68.0, "papers.md: MAE, Reported (ViT-B)"),
    ("beit", "IN top-1 (fine-tune)"): (83.2, "papers.md: BEiT, Reported ViT-B"),
    ("img2vec", "IN top-1 (fine-tune)"): (85.1, "papers.md: Img2Vec, Reported (abstract) ViT-B"),
    ("mae", "ADE20K mIoU"): (48.1, "papers.md: MAE, Reported ADE20K UperNet (ViT-B)"),
    ("mae", "COCO AP box"): (51.6, "papers.md: MAE, Reported (ViTDet recipe; 50.3 in the MAE paper)"),
    ("mae", "COCO AP mask"): (45.9, "papers.md: MAE, Reported (ViTDet recipe; 44.9 in the MAE paper)"),
    ("beit", "COCO AP box"): (49.8, "papers.md: BEiT, COCO as reproduced in the MAE paper"),
    ("beit", "COCO AP mask"): (44.4, "papers.md: BEiT, COCO as reproduced in the MAE paper"),
    ("beit", "ADE20K mIoU"): (47.1, "papers.md: BEiT, ADE20K ViT-B as reproduced in the MAE paper"),
    ("img2vec", "ADE20K mIoU"): (50.7, "papers.md: Img2Vec, Reported (abstract; model size not stated)"),
}
