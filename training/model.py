"""Attentional Factorization Machine (Xiao et al., IJCAI 2017), and FM as AFM without attention.

    y(x)  = w0 + sum_i w_i x_i + p^T sum_{i<j} a_ij (v_i ⊙ v_j) x_i x_j              (eq. 5)
    a'_ij = h^T ReLU(W (v_i ⊙ v_j) x_i x_j + b),   a_ij = softmax over the pairs (i, j)  (eq. 3)

With one non-zero feature per field the pairs are the field pairs: P = F (F - 1) / 2.
FM is the same code with a_ij = 1 and p = 1, i.e. sum_{i<j} <v_i, v_j> x_i x_j; its `attention`
output reports the uniform weights 1/P so that, for either model, rows sum to 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AFMConfig:
    num_features: int  # rows of the one embedding table shared by all fields
    num_fields: int
    embedding_dim: int = 64  # k
    attention_dim: int = 64  # t, the attention network's hidden size
    attention: bool = True  # False gives FM
    dropout: float = 0.0  # on the pair-interaction layer (the paper's main regulariser)
    # FM only: batch-normalise the pooled pair vector while training, as the authors' FM.py does
    # by default. It speeds FM's training a lot; at inference it is affine per dimension, so
    # `fold_batch_norm` turns it into v, p and w0 and the exported model is again a plain FM.
    batch_norm: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AFMOutput(NamedTuple):
    raw: torch.Tensor  # (B,) before the link
    attention: torch.Tensor  # (B, P), each row sums to 1
    pair_contribution: torch.Tensor  # (B, P) a_ij p^T (v_i ⊙ v_j) x_i x_j
    linear_contribution: torch.Tensor  # (B, F) w_i x_i


def field_pairs(num_fields: int) -> tuple[list[int], list[int]]:
    """The pair order (i < j, row-major) shared by the model, the bundle and the service."""
    rows, cols = torch.triu_indices(num_fields, num_fields, offset=1).tolist()
    return rows, cols


class PairLogits(torch.autograd.Function):
    """a'_ij = h^T ReLU(W (v_i ⊙ v_j) + b) for all pairs, (B, F, k) -> (B, P), in chunks of rows.

    Training is memory-bound on the (B, P, k) pair tensor: built, multiplied and reduced by separate
    kernels both ways. Here it exists for CHUNK_FLOATS at a time (cache-sized), and the backward
    rebuilds it rather than keeping it:
        g_pre  = (g_logit h^T) ⊙ [W q + b > 0]                    (rows, P, t)
        g_W    = sum g_pre q^T,   g_b = sum g_pre,   g_h = sum ReLU(W q + b) g_logit
        g_q    = g_pre W;   g_v_i += g_q ⊙ v_j,   g_v_j += g_q ⊙ v_i  (q = v_i ⊙ v_j)
    """

    CHUNK_FLOATS = 2**18  # about 1 MiB of pair vectors per chunk and thread
    # Fewer chunks than this and the whole pair tensor is small enough that building it once
    # beats building it twice (k = 64, batch 256: 0.76 of the one-pass speed chunked)
    MIN_CHUNKS = 4

    @staticmethod
    def chunks(v: torch.Tensor, num_pairs: int) -> range:
        floats = PairLogits.CHUNK_FLOATS * torch.get_num_threads()  # each op splits over threads
        rows = max(1, floats // (num_pairs * v.shape[2]))
        return range(0, v.shape[0], rows)

    @staticmethod
    def pays(v: torch.Tensor, num_pairs: int) -> bool:
        """Worth rebuilding the pairs in the backward: when they would not stay in the cache."""
        return len(PairLogits.chunks(v, num_pairs)) >= PairLogits.MIN_CHUNKS

    @staticmethod
    def forward(
        ctx: Any, v: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
        w: torch.Tensor, b: torch.Tensor, h: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        ctx.save_for_backward(v, i, j, w, b, h)
        logits = v.new_empty(v.shape[0], len(i))  # (B, P)
        chunks = PairLogits.chunks(v, len(i))
        for start in chunks:
            rows = v[start : start + chunks.step]  # (r, F, k)
            q = (rows.index_select(1, i) * rows.index_select(1, j)).flatten(0, 1)  # (r P, k)
            hidden = torch.relu(torch.addmm(b, q, w.t()))  # (r P, t)
            logits[start : start + chunks.step] = (hidden @ h).view(-1, len(i))
        return logits

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        v, i, j, w, b, h = ctx.saved_tensors
        grad_v, grad_w = torch.zeros_like(v), torch.zeros_like(w)
        grad_b, grad_h = torch.zeros_like(b), torch.zeros_like(h)
        chunks = PairLogits.chunks(v, len(i))
        for start in chunks:
            rows = v[start : start + chunks.step]  # (r, F, k)
            v_i, v_j = rows.index_select(1, i), rows.index_select(1, j)  # (r, P, k)
            q = (v_i * v_j).flatten(0, 1)  # (r P, k)
            pre = torch.addmm(b, q, w.t())  # (r P, t)
            g_logit = grad[start : start + chunks.step].reshape(-1, 1)  # (r P, 1)
            grad_h += (pre.relu() * g_logit).sum(0)
            g_pre = (g_logit * h) * (pre > 0)  # (r P, t)
            grad_w.addmm_(g_pre.t(), q)
            grad_b += g_pre.sum(0)
            if ctx.needs_input_grad[0]:  # not when v is frozen (freeze_fm_parameters)
                g_q = (g_pre @ w).view_as(v_i)  # (r, P, k)
                grad_rows = grad_v[start : start + chunks.step]
                grad_rows.index_add_(1, i, g_q * v_j)
                grad_rows.index_add_(1, j, g_q * v_i)
        return grad_v if ctx.needs_input_grad[0] else None, None, None, grad_w, grad_b, grad_h


class AFM(nn.Module):
    pair_i: torch.Tensor  # (P,) first field of each pair
    pair_j: torch.Tensor  # (P,) second field
    pair_flat: torch.Tensor  # (P,) i F + j
    pair_scatter: torch.Tensor  # (P, F F) one-hot rows
    projection: torch.Tensor  # p: learnt for AFM, fixed ones for FM

    def __init__(self, config: AFMConfig) -> None:
        super().__init__()
        self.config = config
        rows, cols = field_pairs(config.num_fields)
        self.register_buffer("pair_i", torch.tensor(rows, dtype=torch.long), persistent=False)
        self.register_buffer("pair_j", torch.tensor(cols, dtype=torch.long), persistent=False)
        flat = self.pair_i * config.num_fields + self.pair_j  # (P,) pair (i, j) in a flat (F, F)
        self.register_buffer("pair_flat", flat, persistent=False)
        # (P, F * F) one-hot: attention @ pair_scatter lays the a_ij out as the (F, F) matrix A
        scatter = F.one_hot(flat, config.num_fields**2).float()
        self.register_buffer("pair_scatter", scatter, persistent=False)

        self.bias = nn.Parameter(torch.zeros(1))  # w0
        self.linear = nn.Embedding(config.num_features, 1)  # w_i
        self.embedding = nn.Embedding(config.num_features, config.embedding_dim)  # v_i
        nn.init.zeros_(self.linear.weight)
        nn.init.normal_(self.embedding.weight, std=0.01)
        self.dropout = nn.Dropout(config.dropout)
        if config.attention:
            self.attention_w = nn.Linear(config.embedding_dim, config.attention_dim)  # W, b
            # Small embeddings make every pair look alike, so the first softmax is near uniform
            # whatever h is; a random h lets W learn from the first step (h = 0 would stall it).
            self.attention_h = nn.Parameter(
                torch.randn(config.attention_dim) / config.attention_dim**0.5
            )
            self.projection = nn.Parameter(torch.ones(config.embedding_dim))  # p
        else:
            # Saved with the weights: ones, or the signs of a folded batch norm's scale.
            self.register_buffer("projection", torch.ones(config.embedding_dim))
        if config.batch_norm:
            if config.attention:
                raise ValueError("batch_norm is FM's pre-training aid; AFM has none")
            # TensorFlow's defaults in the authors' code: decay 0.9, epsilon 1e-3
            self.pair_norm = nn.BatchNorm1d(config.embedding_dim, eps=1e-3, momentum=0.1)

    def forward(self, feature_index: torch.Tensor, feature_value: torch.Tensor) -> AFMOutput:
        x = feature_value.unsqueeze(-1)  # (B, F, 1)
        v = self.embedding(feature_index) * x  # (B, F, k)  v_i x_i
        linear_contribution = self.linear(feature_index).squeeze(-1) * feature_value  # (B, F)

        # Only the attention network needs the P pair vectors themselves. Every other pair sum is
        # a (F, F) form: p^T (v_i ⊙ v_j) is entry (i, j) of (V ⊙ p) V^T, and
        # sum_{i<j} a_ij (v_i ⊙ v_j) = sum_i v_i ⊙ (A V)_i with A the upper-triangular (F, F)
        # matrix of the a_ij; so no other step reads or writes a (B, P, k) tensor.
        inner = torch.bmm(v * self.projection, v.transpose(1, 2))  # (B, F, F)  p^T (v_i ⊙ v_j)
        projected = inner.flatten(1).index_select(1, self.pair_flat)  # (B, P)
        if self.config.attention:
            if self.training and torch.is_grad_enabled() and PairLogits.pays(v, len(self.pair_i)):
                # the equations below, a few rows at a time, with the backward written out
                weights = self.attention_weights()
                logits = PairLogits.apply(v, self.pair_i, self.pair_j, *weights)  # type: ignore[no-untyped-call]
            else:
                # index_select, not v[:, pair_i]: the advanced-indexing gather is about 3x slower
                pairs = v.index_select(1, self.pair_i) * v.index_select(1, self.pair_j)  # (B, P, k)
                hidden = F.relu(self.attention_w(pairs))  # (B, P, t)
                # (t, 1) and (k, 1) columns, not vectors: onnxruntime runs 3-D @ 1-D MatMuls slowly
                logits = (hidden @ self.attention_h.unsqueeze(-1)).squeeze(-1)  # (B, P)
            attention = torch.softmax(logits, dim=1)  # over the pairs axis, not a size-1 one
            a = (attention @ self.pair_scatter).view_as(inner)  # (B, F, F)  A: a_ij, i < j
            pooled = (v * torch.bmm(a, v)).sum(1)  # (B, k)  sum_{i<j} a_ij (v_i ⊙ v_j)
            pair_contribution = attention * projected  # (B, P)
        else:
            # FM: a_ij = 1, and the pooled sum is Rendle's identity.
            pooled = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1))  # (B, k)
            pair_contribution = projected  # (B, P)
            attention = torch.full_like(pair_contribution, 1.0 / len(self.pair_i))  # uniform

        if self.config.batch_norm:
            pooled = self.pair_norm(pooled)  # (B, k); pair_contribution is right only once folded
        # Dropout on the pair-interaction layer's pooled output, as the authors' code does; at
        # eval it is the identity and raw equals bias + the linear and pair contributions.
        pair_interaction = self.dropout(pooled) @ self.projection  # (B,)
        raw = self.bias + linear_contribution.sum(1) + pair_interaction  # (B,)
        return AFMOutput(raw, attention, pair_contribution, linear_contribution)

    def attention_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.attention_w.weight, self.attention_w.bias, self.attention_h  # W, b, h

    @torch.no_grad()
    def fold_batch_norm(self) -> None:
        """Fold the trained batch norm into v, p and w0, then drop it.

        At inference BN(s)_k = c_k s_k + beta_k - c_k mu_k with c_k = gamma_k / sigma_k, and the
        pooled pairs s are quadratic in v: scaling v's dimension k by sqrt|c_k| scales s_k by |c_k|.
        So v takes sqrt|c|, p takes sign(c) and w0 the shift p^T (beta - c mu). v then carries the
        scale as a plain FM's does, which is what an AFM started from these embeddings expects.
        Predictions are unchanged and raw = w0 + linear + pair terms holds again.
        """
        if not self.config.batch_norm:
            return
        norm = self.pair_norm
        assert norm.running_mean is not None and norm.running_var is not None  # tracked stats
        c = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # (k,)
        self.bias.add_(self.projection @ (norm.bias - c * norm.running_mean))
        self.embedding.weight.mul_(c.abs().sqrt())
        self.projection.mul_(c.sign())
        del self.pair_norm
        self.config.batch_norm = False

    def freeze_fm_parameters(self) -> None:
        """Keep w0, w and v as loaded: only the attention network and p learn."""
        for parameter in (self.bias, self.linear.weight, self.embedding.weight):
            parameter.requires_grad_(False)

    def init_bias(self, label_mean: float, task: str) -> None:
        """w0 at the training labels' mean (as a logit for ctr): ratings around 3.5 otherwise
        cost the first epochs just learning the offset."""
        if task == "ctr":
            label_mean = math.log(label_mean / (1 - label_mean)) if 0 < label_mean < 1 else 0.0
        with torch.no_grad():
            self.bias.fill_(label_mean)

    def attention_l2(self) -> torch.Tensor:
        """||W||^2, the paper's L2 regulariser on the attention network."""
        if not self.config.attention:
            return torch.zeros((), device=self.bias.device)  # added to a loss on that device
        return self.attention_w.weight.pow(2).sum()

    def load_fm_embeddings(self, fm: AFM, start: str = "exact") -> None:
        """The paper's initialisation: AFM's bias, w and v taken from a trained FM.

        start="exact": FM sums the P pair terms while a fresh AFM averages them (uniform softmax,
        p = 1), so v is scaled by sqrt(P) and h is zeroed: (sqrt(P) v_i) ⊙ (sqrt(P) v_j) / P =
        v_i ⊙ v_j, and AFM starts exactly as the FM predicts. W is divided by P, so W applied to
        the scaled pairs is the fresh W applied to FM's own, and b is made non-negative, so every
        hidden unit starts on.
        start="authors": as the authors' AFM.py, v is copied unscaled and the attention network
        keeps its random start, so the first predictions average FM's pair terms and AFM re-learns
        their scale; the attention network learns during that re-fit rather than from an
        optimum's residuals.
        An AFM started from an AFM goes on from all its weights, attention network included,
        whatever `start` says (a second phase at another rate, say).
        """
        if start not in ("exact", "authors"):
            raise ValueError(f"start must be 'exact' or 'authors', not {start!r}")
        if self.config.attention and fm.config.attention:
            self.load_state_dict(fm.state_dict())
            return
        with torch.no_grad():
            self.bias.copy_(fm.bias)
            self.linear.weight.copy_(fm.linear.weight)
            rescale = start == "exact" and self.config.attention  # fm is a plain FM here
            num_pairs = len(self.pair_i)
            if rescale:
                self.attention_h.zero_()  # a uniform first softmax: AFM starts as the FM
                # The scaled pairs reach W P times larger than FM's own v_i ⊙ v_j; W / P gives the
                # attention network the first hidden layer a fresh one has on FM's pair vectors.
                # Without it the AFM phase's start depends much more on the seed
                # (docs/experiments/attention-start.md).
                self.attention_w.weight.div_(num_pairs)
                # W / P is small next to b, so a unit with b < 0 would be off on every pair and
                # never get a gradient: with b = |b| every unit starts on
                # (docs/experiments/attention-start.md)
                self.attention_w.bias.abs_()
            scale = math.sqrt(num_pairs) if rescale else 1.0
            self.embedding.weight.copy_(fm.embedding.weight * scale)
            if start == "exact":
                self.projection.copy_(fm.projection)  # ones, or a folded batch norm's signs
