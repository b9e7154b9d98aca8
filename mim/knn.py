"""Weighted k-NN classification on frozen features (DINO's protocol: cosine, k=20, T=0.07).

Each test feature votes with its k most similar training features (cosine similarity),
each vote weighted by exp(sim / T); the class with the largest summed weight wins.
Generic over any encoder: the callers extract features, this module only classifies.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_classify(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    k: int = 20,
    T: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """(Ntr, D), (Ntr,), (Nte, D) -> predicted labels (Nte,); features need not be normalised."""
    train = F.normalize(train_feats.float(), dim=1)
    labels = train_labels.long()
    c = int(num_classes if num_classes is not None else labels.max().item() + 1)
    k = min(k, train.shape[0])
    preds = []
    for test in F.normalize(test_feats.float(), dim=1).split(chunk):
        sim = test @ train.T  # (n, Ntr) cosine similarities
        top_sim, top_idx = sim.topk(k, dim=1)  # (n, k)
        votes = torch.zeros(test.shape[0], c, device=test.device)
        votes.scatter_add_(1, labels[top_idx], (top_sim / T).exp())  # (n, C) summed weights
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def knn_top1(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    T: float = 0.07,
) -> float:
    """Top-1 accuracy in percent of `knn_classify` on a labelled test set."""
    c = int(max(train_labels.max().item(), test_labels.max().item()) + 1)
    pred = knn_classify(train_feats, train_labels, test_feats, k, T, num_classes=c)
    return 100.0 * (pred == test_labels.long()).float().mean().item()


@torch.no_grad()
def extract_features(
    embed: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `embed` (images -> (B, D)) over (images, labels) batches; returns CPU (N, D), (N,)."""
    feats, labels = [], []
    for x, y in batches:
        feats.append(embed(x.to(device)).float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)
