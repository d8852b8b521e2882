"""Peer of the training benchmark: the AFM as one would write it from the paper in PyTorch.

    y(x)  = w0 + sum_i w_i x_i + p^T sum_{i<j} a_ij (v_i ⊙ v_j) x_i x_j
    a'_ij = h^T ReLU(W (v_i ⊙ v_j) x_i x_j + b),   a_ij = softmax over the pairs (i, j)

The obvious module: gather the pairs with index tensors, the attention network as
Linear-ReLU-Linear, the softmax over the pairs axis, the weighted sum, dropout, then the projection.
Same parameters and initialisation as `training.model.AFM`, trained with a plain `torch.optim.Adam`.
"""

from __future__ import annotations

import torch
from torch import nn


class PlainAFM(nn.Module):
    rows: torch.Tensor
    cols: torch.Tensor

    def __init__(
        self,
        num_features: int,
        num_fields: int,
        embedding_dim: int,
        attention_dim: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        rows, cols = torch.triu_indices(num_fields, num_fields, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.bias = nn.Parameter(torch.zeros(1))
        self.linear = nn.Embedding(num_features, 1)
        self.embedding = nn.Embedding(num_features, embedding_dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.normal_(self.embedding.weight, std=0.01)
        self.attention = nn.Sequential(
            nn.Linear(embedding_dim, attention_dim),  # W, b
            nn.ReLU(),
            nn.Linear(attention_dim, 1, bias=False),  # h
        )
        self.dropout = nn.Dropout(dropout)
        self.projection = nn.Linear(embedding_dim, 1, bias=False)  # p

    def forward(self, feature_index: torch.Tensor, feature_value: torch.Tensor) -> torch.Tensor:
        v = self.embedding(feature_index) * feature_value.unsqueeze(-1)  # (B, F, k)
        pairs = v[:, self.rows] * v[:, self.cols]  # (B, P, k)
        attention = torch.softmax(self.attention(pairs), dim=1)  # (B, P, 1)
        pooled = (attention * pairs).sum(dim=1)  # (B, k)
        linear = (self.linear(feature_index).squeeze(-1) * feature_value).sum(dim=1)  # (B,)
        raw: torch.Tensor = self.bias + linear + self.projection(self.dropout(pooled)).squeeze(-1)
        return raw  # (B,)
