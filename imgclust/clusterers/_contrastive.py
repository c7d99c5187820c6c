"""Contrastive clustering (CC, Li et al. 2021; the loss of ViT-IC) on augmented-view embeddings (§5).

CC trains an encoder end to end on two augmented views of each image. With a frozen encoder the views
are embeddings of augmented crops computed once at embed time: ``views`` of shape (N, V, D). The plain
embedding counts as one more view (``plain_view``, default on): it lifted Imagenette's AMI from 74.1 to
80.8 with 2 stored views (effnet-lite0, mean of 3 seeds), and the labels are read off plain embeddings anyway.
Each step draws two different views per image. A small trainable trunk (Linear(D, hidden) ->
BatchNorm -> ReLU) stands in for the encoder and feeds CC's two heads:

* instance head Linear -> ReLU -> Linear(·, 128), NT-Xent over the 2B views with τ_I = 0.5;
* cluster head Linear -> ReLU -> Linear(·, K) -> softmax; the K columns of the two views are
  contrasted with τ_C = 1.0, plus the entropy term log K + Σ p log p of each view's mean assignment.

Loss = instance + cluster. Labels (and ``predict``) come from the cluster head applied to the plain
(un-augmented) embeddings ``X``.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np

from ..errors import UsageError
from . import register_clusterer
from ._base import Param
from ._heads import (
    EPS,
    P_BATCH,
    P_DEVICE,
    _p_epochs,
    _standardise_stats,
    _TrainedHead,
    resolve_device,
    seeded_torch,
)

__all__ = ["ContrastiveClusterer", "cluster_contrastive_loss", "nt_xent"]


def nt_xent(a, b, temperature: float = 0.5):
    """NT-Xent (SimCLR) for matched rows of a and b (M, d): each row's positive is its partner,
    the other 2M-2 rows are negatives; cosine similarity / temperature; mean over the 2M rows."""
    import torch
    import torch.nn.functional as F

    m = a.shape[0]
    z = F.normalize(torch.cat([a, b], dim=0), dim=1)
    logits = z @ z.T / temperature
    eye = torch.eye(2 * m, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, -float("inf"))
    target = torch.cat([torch.arange(m, 2 * m), torch.arange(0, m)]).to(z.device)
    return F.cross_entropy(logits, target)


def cluster_contrastive_loss(pa, pb, temperature: float = 1.0):
    """CC's cluster-level loss for soft assignments pa, pb (B, K) of two views.

    NT-Xent between the K columns of the two views, plus the entropy term (log K + Σ p log p) of each
    view's mean assignment (0 when clusters are used equally, log K when all fall in one).
    Returns (loss, contrastive part, entropy part).
    """
    import torch

    k = pa.shape[1]
    contrast = nt_xent(pa.T, pb.T, temperature)
    ent = 0.0
    for p in (pa, pb):
        m = p.sum(dim=0)
        m = m / m.sum()
        ent = ent + math.log(k) + (m * torch.log(m.clamp_min(EPS))).sum()
    return contrast + ent, contrast, ent


@functools.lru_cache(maxsize=None)
def _net_class():
    import torch
    from torch import nn

    class CCNet(nn.Module):
        def __init__(self, dim, n_clusters, hidden=512, feature_dim=128):
            super().__init__()
            self.n_clusters = n_clusters
            self.trunk = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
            self.instance = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, feature_dim))
            self.cluster = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_clusters))

        def forward(self, x):
            h = self.trunk(x)
            return self.instance(h), torch.softmax(self.cluster(h), dim=-1)

        def assign(self, x):  # (1, B, K) like the other heads, for _chunked_logits
            return self.cluster(self.trunk(x))[None]

    return SimpleNamespace(CCNet=CCNet, torch=torch)


@register_clusterer
class ContrastiveClusterer(_TrainedHead):
    """Contrastive clustering (CC / ViT-IC loss) of frozen augmented-view embeddings (module doc)."""

    name = "cc"
    summary = "Contrastive clustering (CC) on embeddings of augmented views (instance + cluster NT-Xent)"
    paper = "Li et al., AAAI 2021 (CC); Low (ViT-IC)"
    needs_views = True
    params = (
        _p_epochs("200000/n_samples clipped to [30, 200]"),
        P_BATCH,
        Param("lr", 3e-4, float, "Adam learning rate (cosine decay)", low=0, low_inclusive=False),
        Param("weight_decay", 0.0, float, "Adam weight decay", low=0),
        Param("hidden", 512, int, "width of the trunk and of both heads' hidden layers", low=1),
        Param("feature_dim", 128, int, "dimension of the instance head's output", low=1),
        Param("instance_temperature", 0.5, float, "τ_I of the instance NT-Xent", low=0, low_inclusive=False),
        Param("cluster_temperature", 1.0, float, "τ_C of the cluster NT-Xent", low=0, low_inclusive=False),
        Param("plain_view", True, bool, "also train on the plain (un-augmented) embedding as one more view"),
        P_DEVICE,
    )

    _state_prefix = "net."

    def _auto_epochs(self, n: int) -> int:
        return int(np.clip(round(200_000 / max(n, 1)), 30, 200))

    def _training_views(self, X, views) -> np.ndarray:
        """``views`` checked, with the plain embeddings ``X`` put first when ``plain_view``: (N, V', D)."""
        V = np.asarray(views)
        if V.ndim != 3 or V.shape[0] != X.shape[0] or V.shape[2] != X.shape[1]:
            raise UsageError(
                f"views must have shape (n_samples, n_views, n_features) = ({X.shape[0]}, V, {X.shape[1]}); got {V.shape}"
            )
        if not np.isfinite(V).all():
            raise UsageError("views hold NaN or Inf values")
        if self.plain_view:
            V = np.concatenate([np.asarray(X, dtype=V.dtype)[:, None], V], axis=1)
        if V.shape[1] < 2:
            raise UsageError(f"cc needs at least 2 views per image; got {V.shape[1]} (plain_view={self.plain_view})",
                             hint="embed with --views 2 or more, or keep plain_view=true")
        return V

    def _make_model(self, d):
        return _net_class().CCNet(d, self.n_clusters, self.hidden, self.feature_dim)

    def _fit(self, X, views):
        V = self._training_views(X, views)
        torch = _net_class().torch
        device = resolve_device(self.device)
        rng = np.random.default_rng(self.random_state)
        n, nv, d = V.shape
        self._mean, self._std = _standardise_stats(X)
        Vt = torch.as_tensor((V - self._mean) / self._std, dtype=torch.float32, device=device).reshape(n * nv, d)
        Xt = torch.as_tensor((X - self._mean) / self._std, dtype=torch.float32, device=device)
        with seeded_torch(self.random_state, device):
            model = self._make_model(d).to(device)
            opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)

            def step_loss(rows):
                va = rng.integers(0, nv, len(rows))
                vb = (va + rng.integers(1, nv, len(rows))) % nv
                flat = torch.as_tensor(np.concatenate([rows * nv + va, rows * nv + vb]), device=device)
                z, p = model(Vt[flat])
                b = len(rows)
                loss = nt_xent(z[:b], z[b:], self.instance_temperature)
                loss = loss + cluster_contrastive_loss(p[:b], p[b:], self.cluster_temperature)[0]
                return loss, float(loss.detach())

            self._train_epochs(opt, n, rng, step_loss)
            self._model = model.eval()
            labels = self._scores(Xt).argmax(dim=-1).cpu().numpy()
        self._model = model.cpu()
        return labels

    def _scores(self, Xt):
        torch = _net_class().torch
        with torch.no_grad():
            return torch.cat([self._model.assign(Xt[i : i + self._predict_batch])[0] for i in range(0, Xt.shape[0], self._predict_batch)])
