"""DINO's weighted k-NN classifier (eval_knn.py) on features: cosine similarity, k nearest, exp(sim / T) votes."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def knn_classify(
    train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, num_classes: int,
    k: int = 20, temperature: float = 0.07, chunk: int = 1024,
) -> torch.Tensor:
    """DINO's weighted k-NN: class scores (M, C) = sum over the k cosine-nearest of exp(sim / T)."""
    train = nn.functional.normalize(train_feats, dim=1)
    test = nn.functional.normalize(test_feats, dim=1)
    k = min(k, len(train))
    scores = []
    for q in test.split(chunk):
        sim, idx = (q @ train.T).topk(k, dim=1)  # (B, k)
        onehot = nn.functional.one_hot(train_labels[idx], num_classes).float()  # (B, k, C)
        scores.append((onehot * (sim / temperature).exp().unsqueeze(-1)).sum(dim=1))  # (B, C)
    return torch.cat(scores)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return 100.0 * float((top == labels[:, None]).any(dim=1).float().mean())
