"""Deep clustering heads trained on frozen embeddings: temi, icce, scan, unic (METHODS.md §3, §4).

Each method trains a small network on the cached encoder embeddings (``input_space = "raw"``), needs
the number of clusters, and learns a predictor: :meth:`Clusterer.state` / :meth:`Clusterer.from_state`
persist it, :meth:`Clusterer.predict` puts new embeddings into the learned clusters.

Shared choices (ours, documented in the README):

* Neighbours are mined by cosine similarity on *mean-centred*, ℓ2-normalised embeddings, self excluded
  (``center=True``), from the shared kNN graph of the raw embeddings (``Clusterer.neighbour_graph``:
  computed once per space, exact for small N, approximate with measured recall above; no N×N matrix). Non-negative CNN features (EfficientNet, ResNet) have raw cosine >= 0.3 for a fifth
  of all pairs, which makes ICCE's absolute threshold meaningless; after centring, ICCE's rule keeps
  ~150 neighbours per Imagenette image at 98.8% class purity (raw: ~840 at 42%).
* Training is deterministic for a ``random_state``: weights are initialised under ``torch.manual_seed``
  inside ``torch.random.fork_rng`` (the caller's global RNG is left as it was), batches and neighbours
  are drawn from a seeded numpy Generator, and ``torch.use_deterministic_algorithms`` is on (warn only)
  while training. Same seed + same device = same labels.
* ``device="auto"`` trains on CUDA when available, else on the CPU.
* Above ``train_rows`` rows (default :data:`TRAIN_ROWS`) a head trains on a seeded uniform sample of that
  many rows (neighbours mined among the sample, from a graph of the sample alone) and the trained head
  labels every row, a batch at a time: training costs the same at 100,000 rows as at 20,000, labelling
  is O(N) in time and O(batch) in memory. ``trained_on_`` says how many rows trained, ``train_indices_``
  which (None when all did); the per-row fitted attributes (``head_labels_``, ``noisy_``, ...) are the
  training rows'. A training row's label is the one training gave it (icce with
  ``labels_from="consensus"``: its consensus label), every other row's the predictor's.
* Progress: ``on_epoch(epoch, epochs, loss)`` (an instance attribute, see ``Clusterer``) after every epoch, and
  DEBUG records on the ``imgclust.clusterers`` logger; quiet by default.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import warnings
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np

from ..errors import ParameterError, UsageError
from ..knn import KnnGraph, Neighbours
from . import register_clusterer
from ._base import Clusterer, Param, sample_rows
from ._ensembles import METHODS as ENSEMBLE_METHODS
from ._ensembles import agreement as ensemble_agreement
from ._ensembles import consensus as ensemble_consensus

EPS = 1e-12
#: Rows a head trains on by default; above it, a seeded sample of this many rows trains and the head
#: labels the rest (measured: BENCHMARKS.md, "The trained heads at scale").
TRAIN_ROWS = 20_000
#: Most rows unic trains on (its ``train_rows`` may not exceed it): its negatives' threshold (each row's
#: tau2-th similarity, tau2 ~ 2N/K) scans all N² pairs; 20,000 rows of 1,280 dims is about a minute on two cores.
UNIC_MAX_ROWS = 20_000

__all__ = [
    "IcceClusterer",
    "ScanClusterer",
    "TemiClusterer",
    "UnicClusterer",
    "adaptive_neighbours",
    "kth_similarity",
    "neighbour_space",
    "scan_loss",
    "second_order_clean",
    "sinkhorn_knopp",
    "temi_loss",
    "unic_loss",
]


# ----------------------------------------------------------------------------------------------
# torch plumbing


def resolve_device(name: str):
    """``auto``: CUDA when there is one, else the CPU; any other name must be a device this machine has."""
    import torch

    from ..encoders import available_devices, best_device

    if name == "auto":
        return torch.device("cuda" if "cuda:0" in available_devices() else "cpu")
    return torch.device(best_device(name))


@contextmanager
def seeded_torch(seed: int, device):
    """Seed torch and turn deterministic algorithms on for the block; restore the caller's state after."""
    import torch

    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_on, warn_only=was_warn)


def module_state(module, prefix: str) -> dict[str, np.ndarray]:
    return {prefix + k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def load_module_state(module, state: dict[str, np.ndarray], prefix: str) -> None:
    import torch

    own = module.state_dict()
    missing = [prefix + k for k in own if prefix + k not in state]
    if missing:
        raise UsageError(f"clusterer state is incomplete: missing {', '.join(missing[:3])}")
    module.load_state_dict({k: torch.as_tensor(np.asarray(state[prefix + k])) for k in own})


def lr_at(step: int, total: int, warmup: int, base: float, schedule: str) -> float:
    """Linear warmup, then constant or cosine decay to 0."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


@functools.lru_cache(maxsize=None)
def _nn() -> SimpleNamespace:
    """The torch modules, built on first use so that importing imgclust does not import torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class MultiHead(nn.Module):
        """H independent TEMI heads evaluated together (one GEMM for all first layers).

        Per head: [BatchNorm] -> Linear(D, hidden) -> GELU -> Linear(hidden, bottleneck) -> ℓ2-normalise
        -> weight-normalised Linear(bottleneck, K, no bias) with the norm fixed to 1 (DINO/TEMI's
        ``norm_last_layer``), so the outputs are cosine similarities in [-1, 1] (divide by the
        temperature for logits). The optional input BatchNorm (ICCE) has no affine part: a per-head
        scale and shift before a Linear layer is absorbed by that layer.
        """

        def __init__(self, n_heads, dim, n_clusters, hidden=512, bottleneck=256, input_bn=False):
            super().__init__()
            self.n_heads, self.dim, self.n_clusters = n_heads, dim, n_clusters
            self.hidden, self.bottleneck = hidden, bottleneck
            self.bn = nn.BatchNorm1d(dim, affine=False) if input_bn else None
            self.w1 = nn.Parameter(nn.init.trunc_normal_(torch.empty(dim, n_heads * hidden), std=0.02))
            self.b1 = nn.Parameter(torch.zeros(n_heads * hidden))
            self.w2 = nn.Parameter(nn.init.trunc_normal_(torch.empty(n_heads, hidden, bottleneck), std=0.02))
            self.b2 = nn.Parameter(torch.zeros(n_heads, 1, bottleneck))
            bound = 1.0 / math.sqrt(bottleneck)
            self.v = nn.Parameter(torch.empty(n_heads, bottleneck, n_clusters).uniform_(-bound, bound))

        def forward(self, x):
            if self.bn is not None:
                x = self.bn(x)
            h = F.gelu(torch.addmm(self.b1, x, self.w1))
            h = h.view(x.shape[0], self.n_heads, self.hidden).transpose(0, 1)
            z = F.normalize(torch.baddbmm(self.b2, h, self.w2), dim=-1)
            return torch.bmm(z, F.normalize(self.v, dim=1))  # (H, B, K) cosine similarities

        def select(self, head: int) -> "MultiHead":
            one = MultiHead(1, self.dim, self.n_clusters, self.hidden, self.bottleneck, self.bn is not None)
            with torch.no_grad():
                sl = slice(head * self.hidden, (head + 1) * self.hidden)
                one.w1.copy_(self.w1[:, sl])
                one.b1.copy_(self.b1[sl])
                one.w2.copy_(self.w2[head : head + 1])
                one.b2.copy_(self.b2[head : head + 1])
                one.v.copy_(self.v[head : head + 1])
                if self.bn is not None:
                    one.bn.load_state_dict(self.bn.state_dict())
            return one

    class MLPHead(nn.Module):
        """Linear(D, hidden) -> BatchNorm -> ReLU -> H x Linear(hidden, K) (logits (H, B, K)).

        ``hidden=0`` makes it H linear heads on the input.
        """

        def __init__(self, dim, n_clusters, hidden=512, n_heads=1):
            super().__init__()
            self.n_heads, self.n_clusters = n_heads, n_clusters
            if hidden > 0:
                self.trunk = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
                width = hidden
            else:
                self.trunk = nn.Identity()
                width = dim
            self.out = nn.Linear(width, n_heads * n_clusters)

        def forward(self, x):
            y = self.out(self.trunk(x))
            return y.view(x.shape[0], self.n_heads, self.n_clusters).transpose(0, 1)

    return SimpleNamespace(MultiHead=MultiHead, MLPHead=MLPHead, torch=torch, F=F, nn=nn)


# ----------------------------------------------------------------------------------------------
# neighbours


def neighbour_space(X: np.ndarray, center: bool = True) -> np.ndarray:
    """float32 rows, mean-centred (optionally) and ℓ2-normalised: cosine similarity is a dot product."""
    Z = np.asarray(X, dtype=np.float32)
    if center:
        Z = Z - Z.mean(axis=0, keepdims=True)
    return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), EPS)


def euclidean_space(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(queries, keys) whose dot product ranks neighbours by euclidean distance on the raw features.

    q_i . k_j = 2 x_i . x_j - |x_j|^2 = |x_i|^2 - |x_i - x_j|^2: for each row i, larger means nearer
    (UNIC's distances, on unnormalised features), with the same chunked top-k as cosine.
    """
    X = np.asarray(X, dtype=np.float32)
    ones = np.ones((len(X), 1), dtype=np.float32)
    return np.hstack([X, ones]), np.hstack([2.0 * X, -(X * X).sum(axis=1, keepdims=True)])


def _similarity_chunks(Z: np.ndarray, device, chunk: int = 1024, keys: np.ndarray | None = None):
    """Yield (start, S) with S = Z[start:start+chunk] @ keys.T (keys = Z by default) on ``device``,
    self-similarity set to -inf."""
    import torch

    Zt = torch.as_tensor(Z, device=device)
    Kt = Zt if keys is None else torch.as_tensor(keys, device=device)
    n = Zt.shape[0]
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        S = Zt[start:stop] @ Kt.T
        rows = torch.arange(stop - start, device=device)
        S[rows, rows + start] = -float("inf")
        yield start, S


def kth_similarity(Z: np.ndarray, kth: int, device=None, chunk: int = 256, keys: np.ndarray | None = None) -> np.ndarray:
    """Each row's kth-highest similarity (cosine, or Z . keys) to the other rows (memory O(chunk * N), not O(N * kth))."""
    import torch

    device = device or torch.device("cpu")
    kth = int(min(kth, Z.shape[0] - 1))
    out = np.empty(Z.shape[0], dtype=np.float32)
    for start, S in _similarity_chunks(Z, device, chunk, keys):
        out[start : start + S.shape[0]] = torch.topk(S, kth, dim=1).values[:, -1].cpu().numpy()
    return out


def adaptive_neighbours(idx: np.ndarray, sim: np.ndarray, k: int, threshold: float):
    """ICCE's adaptive neighbours: every listed row with cosine >= threshold, but at least the top k.

    ``idx`` and ``sim`` are each row's most similar rows, most similar first (the shared kNN graph at
    ``max_neighbours``: that many are kept at most). Returns a CSR pair (indptr, indices).
    """
    count = np.maximum((sim >= threshold).sum(axis=1), min(k, idx.shape[1]))
    indptr = np.concatenate([[0], np.cumsum(count)]).astype(np.int64)
    keep = np.arange(idx.shape[1])[None, :] < count[:, None]
    return indptr, idx[keep]


class NeighbourSampler:
    """Neighbour lists in CSR form; draws one neighbour per row uniformly (TEMI's per-epoch sampling)."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray):
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.indices = np.asarray(indices, dtype=np.int64)

    @classmethod
    def from_dense(cls, idx: np.ndarray) -> "NeighbourSampler":
        n, k = idx.shape
        return cls(np.arange(n + 1, dtype=np.int64) * k, idx.reshape(-1))

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    def sample(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        start = self.indptr[rows]
        count = self.indptr[rows + 1] - start
        off = np.minimum((rng.random(len(rows)) * count).astype(np.int64), count - 1)
        return self.indices[start + off]


def second_order_clean(pos: np.ndarray, eta: int, chunk: int = 4096) -> np.ndarray:
    """UNIC's cleaning: True where the union of the positives' own positive sets has > eta members.

    ``pos`` is (N, tau1): each sample's positives, itself included when the caller counts it (UNIC Eq. 3-4);
    such samples keep only themselves as positive.
    """
    n, t = pos.shape
    noisy = np.zeros(n, dtype=bool)
    for start in range(0, n, chunk):
        second = np.sort(pos[pos[start : start + chunk]].reshape(-1, t * t), axis=1)
        distinct = 1 + (np.diff(second, axis=1) != 0).sum(axis=1)
        noisy[start : start + chunk] = distinct > eta
    return noisy


# ----------------------------------------------------------------------------------------------
# losses (torch tensors in, scalar + diagnostics out)


def sinkhorn_knopp(logits, n_iters: int = 3):
    """Sinkhorn-Knopp centring (SwAV/DINO's teacher version) of logits (..., B, K) over the batch.

    Alternately makes every cluster carry 1/K of the mass and every sample 1/B; ends on the samples,
    so each row is a distribution (sums to 1) and the column sums approach B/K as n_iters grows.
    """
    import torch

    Q = torch.exp(logits - logits.amax(dim=(-2, -1), keepdim=True))
    Q = Q / Q.sum(dim=(-2, -1), keepdim=True)
    B, K = Q.shape[-2], Q.shape[-1]
    for _ in range(n_iters):
        Q = Q / Q.sum(dim=-2, keepdim=True) / K
        Q = Q / Q.sum(dim=-1, keepdim=True) / B
    return Q * B


def temi_loss(s1, s2, t1, t2, prior, beta=0.6, student_temp=0.1, teacher_temp=0.1, sk_iters=0, ce_weight=0.0):
    """TEMI's multi-head β-MI loss (METHODS.md §3), optionally with ICCE's SK centring and CE term.

    s1, s2: student outputs (H, B, K) for x and its neighbour x'; t1, t2 the teacher's (no gradient);
    all are pre-temperature scores (cosines). prior: (H, K) teacher prior p̃. For head h

        L_h = -w · ½ [log Σ_k (q_s(k|x) q_t(k|x'))^β / p̃(k) + (x <-> x')],

    w = mean over heads of Σ_k q_t(k|x) q_t(k|x') (no gradient), averaged over the batch. With
    ``sk_iters`` > 0 the teacher probabilities are Sinkhorn-Knopp centred; with ``ce_weight`` > 0,
    ce_weight · ½ [CE(q_s(·|x), argmax q_t(·|x')) + (x <-> x')] is added.

    Returns (loss averaged over heads, per-head loss (H,) detached, teacher batch mean (H, K)).
    """
    import torch
    import torch.nn.functional as F

    ls1 = F.log_softmax(s1 / student_temp, dim=-1)
    ls2 = F.log_softmax(s2 / student_temp, dim=-1)
    with torch.no_grad():
        if sk_iters > 0:
            q1 = sinkhorn_knopp(t1 / teacher_temp, sk_iters)
            q2 = sinkhorn_knopp(t2 / teacher_temp, sk_iters)
        else:
            q1 = F.softmax(t1 / teacher_temp, dim=-1)
            q2 = F.softmax(t2 / teacher_temp, dim=-1)
        w = (q1 * q2).sum(dim=-1).mean(dim=0)  # (B,)
        lq1, lq2 = q1.clamp_min(EPS).log(), q2.clamp_min(EPS).log()
        lp = prior.clamp_min(EPS).log()[:, None, :]
    mi12 = torch.logsumexp(beta * (ls1 + lq2) - lp, dim=-1)
    mi21 = torch.logsumexp(beta * (ls2 + lq1) - lp, dim=-1)
    per_head = (w * (-0.5 * (mi12 + mi21))).mean(dim=-1)
    if ce_weight > 0:
        ce1 = -ls1.gather(-1, q2.argmax(dim=-1, keepdim=True)).squeeze(-1)
        ce2 = -ls2.gather(-1, q1.argmax(dim=-1, keepdim=True)).squeeze(-1)
        per_head = per_head + ce_weight * 0.5 * (ce1 + ce2).mean(dim=-1)
    batch_mean = torch.cat([q1, q2], dim=1).mean(dim=1)
    return per_head.mean(), per_head.detach(), batch_mean


def _entropy(p):
    return -(p * p.clamp_min(EPS).log()).sum(dim=-1)


def scan_loss(anchor_logits, neighbour_logits, entropy_weight=5.0):
    """SCAN: -mean log <p(x), p(x')> - entropy_weight · H(mean p(x)). Logits (..., B, K).

    Returns (loss, consistency, entropy), each averaged over leading (head) dimensions.
    """
    import torch.nn.functional as F

    pa = F.softmax(anchor_logits, dim=-1)
    pn = F.softmax(neighbour_logits, dim=-1)
    consistency = -(pa * pn).sum(dim=-1).clamp_min(EPS).log().mean(dim=-1)
    entropy = _entropy(pa.mean(dim=-2))
    per_head = consistency - entropy_weight * entropy
    return per_head.mean(), consistency.mean(), entropy.mean()


def unic_loss(anchor_logits, pos_logits, neg_logits, entropy_weight=3.0, pos_weight=1.0, neg_weight=1.0):
    """UNIC: BCE(<p_i, p_pos>, 1) + BCE(<p_i, p_neg>, 0) - entropy_weight · H(mean p_i). Logits (B, K)."""
    import torch.nn.functional as F

    pa = F.softmax(anchor_logits, dim=-1)
    pp = F.softmax(pos_logits, dim=-1)
    pn = F.softmax(neg_logits, dim=-1)
    l_pos = -(pa * pp).sum(dim=-1).clamp_min(EPS).log().mean()
    l_neg = -(1.0 - (pa * pn).sum(dim=-1)).clamp_min(EPS).log().mean()
    entropy = _entropy(pa.mean(dim=0))
    return pos_weight * l_pos + neg_weight * l_neg - entropy_weight * entropy, l_pos, l_neg, entropy


# ----------------------------------------------------------------------------------------------
# parameters shared by the methods


def _p_epochs(auto: str) -> Param:
    return Param("epochs", None, int, f"training epochs (passes over the data); None = {auto}", low=1, nullable=True)


def _p_train_rows(high: int | None = None) -> Param:
    return Param(
        "train_rows", TRAIN_ROWS, int,
        "rows the head trains on: with more rows, a seeded random sample of this many trains (neighbours mined "
        "within it) and the trained head labels every row", low=2, high=high,
    )


P_BATCH = Param(
    "batch_size", None, int, "samples per training step; None = n_samples/64 clipped to [32, 256]", low=2, nullable=True
)
P_DEVICE = Param(
    "device", "auto", str, "where to train: auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps",
    pattern=r"auto|cpu|mps|cuda(:\d+)?",
)
P_CENTER = Param(
    "center", True, bool, "mine neighbours on mean-centred embeddings (ours; needed for non-negative CNN features)"
)


P_MOMENTUM = Param(
    "momentum", None, float,
    "teacher EMA momentum; None = TEMI's 0.996, lowered for short runs so that the teacher's horizon "
    "1/(1-m) is at most 5% of all training steps", low=0, high=1, nullable=True,
)


def auto_momentum(total_steps: int, base: float = 0.996, horizon_frac: float = 0.05) -> float:
    """TEMI's 0.996 for long runs; for short ones 1 - 1/(horizon_frac * steps), so the teacher keeps up.

    TEMI trains ~40k steps (horizon 250 steps = 0.6% of training); on a few thousand cached embeddings a
    CPU run has 1-3k steps, where 0.996 leaves the teacher far behind the student (measured on
    Imagenette effnet-lite0, one head, 10 epochs: AMI 70.9 at 0.996, 80.2 at 0.99, 84.2 at 0.98).
    """
    return float(min(base, 1.0 - 1.0 / max(1.0, horizon_frac * total_steps)))


P_MOMENTUM_SCHEDULE = Param(
    "momentum_schedule", "cosine", str,
    "teacher momentum over training: cosine (TEMI code: from the base momentum towards 1) or constant",
    choices=("cosine", "constant"),
)


def momentum_at(step: int, total: int, base: float, schedule: str = "cosine") -> float:
    """The teacher's EMA momentum at ``step`` of ``total``.

    ``cosine`` is the TEMI code's schedule (DINO's ``cosine_scheduler(base, 1, ...)``): from ``base``
    at the first step towards 1 at the last, 1 - (1 - base) * (1 + cos(pi * step / total)) / 2, so the
    teacher settles as training ends. ``constant`` keeps ``base``.
    """
    if schedule == "constant":
        return base
    return 1.0 - (1.0 - base) * 0.5 * (1.0 + math.cos(math.pi * step / max(1, total)))


def _standardise_stats(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(axis=0).astype(np.float32)
    std = X.std(axis=0).astype(np.float32)
    std[std < 1e-8] = 1.0
    return mean, std


class _TrainedHead(Clusterer):
    """Shared plumbing of the trained heads: device, seeding, epochs, predictor state.

    The predictor behind ``predict`` is ``self._model`` (built by ``_make_model(dim)``, stored under
    ``_state_prefix``) applied to embeddings standardised with the training set's statistics;
    ``_scores`` reads (N, K) cluster scores off its output.
    """

    n_clusters_mode = "required"
    input_space = "raw"
    supports_predict = True
    # auto trains one head per K: a coarse grid on a small sample keeps that to minutes on a CPU
    auto_k_fits = 8
    auto_k_samples = 2000
    at_scale = ("neighbours mined from the shared kNN graph of the raw embeddings (cosine on the centred rows; "
                "approximate with measured recall above the exact size): no N×N similarity; an epoch is O(N)")

    _predict_batch = 8192
    _state_prefix = "head."
    _head = 0  # which head of a multi-head model predicts

    def _make_model(self, dim: int):  # overridden
        raise NotImplementedError

    def _label_rows(self, X: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """The predictor's cluster of each row of ``X`` (or of ``X[rows]``), standardised and scored a batch
        at a time: memory O(batch · d) at any N."""
        torch = _nn().torch
        n = X.shape[0] if rows is None else rows.size
        out = np.empty(n, dtype=np.int64)
        for start in range(0, n, self._predict_batch):
            stop = min(n, start + self._predict_batch)
            part = X[start:stop] if rows is None else X[rows[start:stop]]
            Xt = torch.as_tensor((part - self._mean) / self._std, dtype=torch.float32)
            out[start:stop] = self._scores(Xt).argmax(dim=-1).numpy()
        return out

    def _scores(self, Xt):
        return self._chunked_logits(self._model, Xt, self._predict_batch)[self._head]

    def _state(self):
        return {"input_mean": self._mean, "input_std": self._std, **module_state(self._model, self._state_prefix)}

    def _load_state(self, state):
        self._mean = np.asarray(state["input_mean"], dtype=np.float32)
        self._std = np.asarray(state["input_std"], dtype=np.float32)
        self._model = self._make_model(self._mean.shape[0]).eval()
        load_module_state(self._model, state, self._state_prefix)

    def _predict(self, X):
        self._check_dim(X, self._mean.shape[0])
        return self._label_rows(X)

    def _auto_epochs(self, n: int) -> int:  # overridden
        return 100

    def _n_epochs(self, n: int) -> int:
        return int(self.epochs) if self.epochs is not None else int(self._auto_epochs(n))

    def _mined(self, k: int, metric: str = "cosine") -> KnnGraph:
        """Each row's ``k`` nearest rows where the head mines neighbours: the shared kNN graph of the raw
        embeddings (cosine on the mean-centred rows with ``center``; euclidean on the rows themselves)."""
        return self.neighbour_graph(k, metric, centred=metric == "cosine" and self.center)

    def _clip_k(self, k: int, n: int, what: str = "k") -> int:
        if k > n - 1:
            warnings.warn(f"{self.name}: {what}={k} is more than n_samples-1={n - 1}; using {n - 1}", stacklevel=3)
        return int(max(1, min(k, n - 1)))

    def _batch_size(self, n: int) -> int:
        b = self.batch_size if self.batch_size is not None else int(np.clip(n // 64, 32, 256))
        return int(max(2, min(b, n)))

    def _batches(self, n: int, rng: np.random.Generator):
        """One epoch of index batches; the last partial batch is dropped (BatchNorm needs > 1 sample)."""
        b = self._batch_size(n)
        perm = rng.permutation(n)
        for s in range(max(1, n // b)):
            yield perm[s * b : (s + 1) * b]

    def _steps_per_epoch(self, n: int) -> int:
        return max(1, n // self._batch_size(n))

    def _train_epochs(self, opt, n: int, rng: np.random.Generator, step_loss) -> None:
        """The loop of scan, unic and cc: cosine learning rate, one optimiser step per batch, the mean loss
        of each epoch reported. ``step_loss(rows)`` returns the batch's loss and the value to report."""
        epochs, steps = self._n_epochs(n), self._steps_per_epoch(n)
        step = 0
        for epoch in range(1, epochs + 1):
            epoch_loss = 0.0
            for rows in self._batches(n, rng):
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, epochs * steps, 0, self.lr, "cosine")
                loss, reported = step_loss(rows)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                epoch_loss += reported
                step += 1
            self._report_epoch(epoch, epochs, epoch_loss / steps)

    def _check_dim(self, X: np.ndarray, dim: int) -> None:
        if X.shape[1] != dim:
            raise UsageError(
                f"{self.name} was trained on {dim}-d embeddings; these have {X.shape[1]} dimensions",
                hint="assign with the same encoder the clusters were made with",
            )

    @staticmethod
    def _chunked_logits(model, Xt, chunk: int):
        import torch

        with torch.no_grad():
            return torch.cat([model(Xt[i : i + chunk]) for i in range(0, Xt.shape[0], chunk)], dim=-2)


class _SampledHead(_TrainedHead):
    """A head that trains on at most ``train_rows`` rows (a seeded sample above) and labels every row.

    Subclasses implement ``_train(X, views) -> labels`` on the training rows; ``_fit`` picks the rows,
    gives ``neighbour_graph`` a graph of those rows only, and labels the others with the predictor.
    """

    at_scale = (f"above train_rows rows (default {TRAIN_ROWS:,}) the head trains on a seeded random sample of that "
                "many rows, its neighbours mined among the sample, and labels every row with the trained head in "
                "batches: training time independent of N, labelling O(N) time and O(batch) memory; trained_on_ and "
                "the run's fit_path say how many rows trained. Neighbours come from the shared kNN graph of the "
                "raw embeddings (cosine on the centred rows) when every row trains: no N×N similarity")

    def _train(self, X: np.ndarray, views: np.ndarray | None) -> np.ndarray:  # overridden
        """Train on the rows of ``X`` (neighbours from ``neighbour_graph``: a graph of these rows); their labels."""
        raise NotImplementedError

    def _check_params(self) -> None:
        if self.n_clusters is not None and self.train_rows < self.n_clusters:
            raise ParameterError(
                f"The 'train_rows' parameter of {type(self).__name__} must be >= n_clusters={self.n_clusters}. "
                f"Got {self.train_rows!r} instead.", hint="each cluster needs rows to train on")

    def _fit(self, X, views):
        n = X.shape[0]
        if n <= self.train_rows:
            self.trained_on_, self.train_indices_ = n, None
            self.fit_path_ = f"trained on all {n:,} rows"
            return self._train(X, views)
        sample = sample_rows(n, self.train_rows, self.random_state)
        every = self._graphs
        # The sample's neighbours are mined among the sample: a graph of every row (shared with other stages,
        # maybe stored in the cache) lists other rows, and the sample's graph is no graph of the space, so it
        # is neither taken from nor written to the store.
        self._graphs = Neighbours(X[sample], random_state=self.random_state, on_progress=every.on_progress)
        try:
            trained = self._train(X[sample], None if views is None else views[sample])
        finally:
            self._graphs = every
        self.trained_on_, self.train_indices_ = int(sample.size), sample
        self.fit_path_ = (f"trained on a seeded sample of {sample.size:,} of {n:,} rows (train_rows); "
                          "the trained head labelled every other row")
        labels = np.empty(n, dtype=np.int64)
        labels[sample] = trained
        rest = np.ones(n, dtype=bool)
        rest[sample] = False
        labels[rest] = self._label_rows(X, np.flatnonzero(rest))
        return labels


# ----------------------------------------------------------------------------------------------
# TEMI and ICCE


class _TemiBase(_SampledHead):
    """TEMI training loop (used as is by temi; icce adds SK centring, the CE term and BatchNorm)."""

    _icce = False
    _schedule = "cosine"

    def _auto_epochs(self, n: int) -> int:
        # about 2,000 optimiser steps, at least 10 and at most 200 epochs
        return int(np.clip(math.ceil(2000 / self._steps_per_epoch(n)), 10, 200))

    def _neighbours(self, X: np.ndarray) -> NeighbourSampler:
        k = self._clip_k(self.k, X.shape[0])
        if self._icce:
            graph = self._mined(self._max_neighbours(X.shape[0]))
            return NeighbourSampler(*adaptive_neighbours(graph.indices, 1.0 - graph.distances, k, self.threshold))
        return NeighbourSampler.from_dense(self._mined(k).indices)

    def _train_heads(self, Xt, sampler: NeighbourSampler, device, rng: np.random.Generator):
        """Train all heads; return (teacher, per-head mean loss over the last epoch)."""
        nn_ = _nn()
        torch = nn_.torch
        n, d = Xt.shape
        H, K = self.heads, self.n_clusters
        student = nn_.MultiHead(H, d, K, input_bn=self._icce).to(device)
        teacher = copy.deepcopy(student)
        for p in teacher.parameters():
            p.requires_grad_(False)
        opt = torch.optim.AdamW(student.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        prior = torch.full((H, K), 1.0 / K, device=device)
        epochs = self._n_epochs(n)
        steps = self._steps_per_epoch(n)
        total, warmup = epochs * steps, max(1, round(0.1 * epochs)) * steps
        base_momentum = self.momentum if self.momentum is not None else auto_momentum(total)
        self.momentum_ = base_momentum
        s_params, t_params = list(student.parameters()), list(teacher.parameters())
        step = 0
        head_loss = torch.zeros(H, device=device)
        for epoch in range(1, epochs + 1):
            head_loss.zero_()
            epoch_loss = 0.0
            for idx in self._batches(n, rng):
                nb = sampler.sample(idx, rng)
                lr = lr_at(step, total, warmup, self.lr, self._schedule)
                for g in opt.param_groups:
                    g["lr"] = lr
                ce_weight = 0.0
                if self._icce:
                    ce_weight = self.ce_weight * 0.5 * (1.0 - math.cos(math.pi * step / max(1, total - 1)))
                rows = torch.as_tensor(np.concatenate([idx, nb]), device=device)
                xb = Xt[rows]
                b = len(idx)
                with torch.no_grad():
                    t = teacher(xb)
                s = student(xb)
                loss, per_head, batch_mean = temi_loss(
                    s[:, :b], s[:, b:], t[:, :b], t[:, b:], prior, beta=self.beta,
                    student_temp=self.temperature, teacher_temp=self.temperature,
                    sk_iters=self.sk_iters if self._icce else 0, ce_weight=ce_weight,
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                momentum = momentum_at(step, total, base_momentum, self.momentum_schedule)
                self.momentum_last_ = momentum
                with torch.no_grad():
                    torch._foreach_mul_(t_params, momentum)
                    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
                    prior.mul_(self.prior_momentum).add_(batch_mean, alpha=1.0 - self.prior_momentum)
                head_loss += per_head
                epoch_loss += float(loss.detach())
                step += 1
            self._report_epoch(epoch, epochs, epoch_loss / steps)
        return teacher, (head_loss / steps).cpu().numpy()

    def _head_labels(self, teacher, Xt):
        teacher.eval()
        scores = self._chunked_logits(teacher, Xt, self._predict_batch)
        return scores.argmax(dim=-1).cpu().numpy()  # (H, N)


_TEMI_PARAMS = (
    Param("heads", 4, int, "heads trained together (TEMI used 50; fewer keeps CPU time low); the best is kept", low=1),
    _p_epochs("about 2000 steps: 2000/steps_per_epoch clipped to [10, 200]"),
    P_BATCH,
    Param("lr", 1e-3, float, "AdamW learning rate (linear warmup over 10% of the epochs, then cosine decay)", low=0, low_inclusive=False),
    Param("weight_decay", 1e-4, float, "AdamW weight decay", low=0),
    Param("k", 50, int, "nearest neighbours a pair partner is drawn from, anew every epoch", low=1),
    Param("beta", 0.6, float, "exponent β of TEMI's β-MI loss (1 = plain PMI)", low=0, high=1, low_inclusive=False),
    Param("temperature", 0.1, float, "student and teacher softmax temperature", low=0, low_inclusive=False),
    P_MOMENTUM,
    P_MOMENTUM_SCHEDULE,
    Param("prior_momentum", 0.9, float, "EMA momentum of the teacher's cluster prior p̃", low=0, high=1),
    _p_train_rows(),
    P_CENTER,
    P_DEVICE,
)


@register_clusterer
class TemiClusterer(_TemiBase):
    """TEMI: self-distillation heads with a β-MI loss on nearest-neighbour pairs (METHODS.md §3).

    The input is standardised (z-score per dimension, statistics stored with the predictor); ``heads``
    heads are trained together and the one with the lowest mean loss in the last epoch labels the data
    (its teacher network, in eval mode). Extra fitted attributes: ``head_labels_`` (heads, N),
    ``head_losses_`` and ``best_head_``.
    """

    name = "temi"
    summary = "TEMI clustering heads on frozen embeddings (multi-head self-distillation, β-MI loss)"
    paper = "Adaloglou et al., BMVC 2023 (TEMI)"
    params = _TEMI_PARAMS

    def _train(self, X, views):
        device = resolve_device(self.device)
        rng = np.random.default_rng(self.random_state)
        torch = _nn().torch
        mean, std = _standardise_stats(X)
        with seeded_torch(self.random_state, device):
            sampler = self._neighbours(X)
            Xt = torch.as_tensor((X - mean) / std, dtype=torch.float32, device=device)
            teacher, losses = self._train_heads(Xt, sampler, device, rng)
            self.head_labels_ = self._head_labels(teacher, Xt)
            self.head_losses_ = losses
            self.best_head_ = int(np.argmin(losses))
            self._model = teacher.select(self.best_head_).cpu().eval()
        self._mean, self._std = mean, std
        return self.head_labels_[self.best_head_]

    def _make_model(self, dim: int):  # the best head alone
        return _nn().MultiHead(1, dim, self.n_clusters)


@register_clusterer
class IcceClusterer(_TemiBase):
    """ICCE: TEMI heads with adaptive neighbours, then cluster ensembles, then self-training (§3).

    Stage 1 trains ``heads`` TEMI heads with ICCE's changes: adaptive neighbours (cosine >=
    ``threshold`` but at least the top ``k``, at most ``max_neighbours``), BatchNorm on the input,
    Sinkhorn-Knopp centring of the teacher (``sk_iters``), a cross-entropy term to the teacher's
    argmax ramped to ``ce_weight`` by a cosine schedule, AdamW with constant lr after warmup.
    Stage 2 combines all heads' labellings into a consensus (``ensemble``: see
    :mod:`imgclust.clusterers._ensembles`). Stage 3 trains a linear classifier on the standardised
    frozen embeddings with the consensus as labels; it is the predictor behind ``predict``. Ours:
    it trains only on samples where at least ``confidence`` of the heads agree with the consensus
    (SCAN-style confident self-labelling), then labels every sample. Measured on effnet-lite0
    embeddings over 3 seeds (BENCHMARKS.md): consensus AMI 91.9 against the heads' mean of 91.0 on
    Imagenette, 40.0 against 39.8 on CIFAR-10; the classifier's labels 92.0 and 40.1.
    ``labels_from`` picks the labels ``fit`` returns: the classifier's predictions (default) or
    the consensus itself. Extra fitted attributes: ``head_labels_``, ``head_losses_``,
    ``best_head_``, ``consensus_labels_``, ``consensus_scores_`` (ANMI per solver),
    ``agreement_`` (per sample), ``classifier_train_fraction_``, ``classifier_labels_``,
    ``neighbour_counts_``, ``momentum_``.

    CPU cost: defaults train 8 heads for about 2,000 steps; on the 2-core CI machine 3,925 x 1280-d
    embeddings (Imagenette) took 90-117 s and 10,000 (CIFAR-10) 157-164 s. ICCE used 50 heads on a GPU:
    pass ``heads=50`` there.
    """

    name = "icce"
    summary = "ICCE: TEMI heads + adaptive neighbours, cluster-ensemble consensus, self-trained linear classifier"
    paper = "Baydar & Akbas (ICCE), built on TEMI (Adaloglou et al., BMVC 2023)"
    params = (
        Param("heads", 8, int, "heads trained together (ICCE used 50; 8 keeps CPU time low), all go into the consensus", low=1),
        _p_epochs("about 2000 steps: 2000/steps_per_epoch clipped to [10, 200]"),
        P_BATCH,
        Param("lr", 1e-3, float, "AdamW learning rate (linear warmup over 10% of the epochs, then constant)", low=0, low_inclusive=False),
        Param("weight_decay", 1e-4, float, "AdamW weight decay", low=0),
        Param("k", 50, int, "least number of neighbours per sample", low=1),
        Param("threshold", 0.3, float, "cosine similarity from which a sample counts as a neighbour", low=-1, high=1),
        Param("max_neighbours", 500, int, "most neighbours kept per sample (the most similar; bounds memory)", low=1),
        Param("beta", 0.6, float, "exponent β of TEMI's β-MI loss", low=0, high=1, low_inclusive=False),
        Param("temperature", 0.1, float, "student and teacher softmax temperature", low=0, low_inclusive=False),
        P_MOMENTUM,
        P_MOMENTUM_SCHEDULE,
        Param("prior_momentum", 0.9, float, "EMA momentum of the teacher's cluster prior p̃", low=0, high=1),
        Param("sk_iters", 3, int, "Sinkhorn-Knopp iterations centring the teacher (0 = off)", low=0),
        Param("ce_weight", 0.5, float, "final weight λ of the cross-entropy term (cosine ramp from 0)", low=0),
        Param("ensemble", "auto", str, "consensus solver: auto (best ANMI), hbgf, mcla, coassoc or vote", choices=ENSEMBLE_METHODS),
        Param("labels_from", "classifier", str, "labels fit returns: classifier (self-trained) or consensus", choices=("classifier", "consensus")),
        Param("confidence", 0.75, float, "the classifier trains on samples where at least this fraction of the heads agree with the consensus (0 = all)", low=0, high=1),
        Param("classifier_epochs", 10, int, "epochs of the self-trained linear classifier (AdamW, lr 1e-3, weight decay 1e-2)", low=1),
        _p_train_rows(),
        P_CENTER,
        P_DEVICE,
    )
    _icce = True
    _schedule = "constant"

    def _max_neighbours(self, n: int) -> int:
        return int(min(n - 1, max(self.max_neighbours, self.k)))

    def _check_params(self) -> None:
        super()._check_params()
        if self.max_neighbours < self.k:
            raise ParameterError(
                f"The 'max_neighbours' parameter of IcceClusterer must be >= k={self.k}. Got {self.max_neighbours!r} instead."
            )

    def _train(self, X, views):
        device = resolve_device(self.device)
        rng = np.random.default_rng(self.random_state)
        torch = _nn().torch
        with seeded_torch(self.random_state, device):
            sampler = self._neighbours(X)
            Xt = torch.as_tensor(X, dtype=torch.float32, device=device)
            teacher, losses = self._train_heads(Xt, sampler, device, rng)
            self.head_labels_ = self._head_labels(teacher, Xt)
            self.head_losses_ = losses
            self.best_head_ = int(np.argmin(losses))
            self.neighbour_counts_ = sampler.counts
            cons, scores = ensemble_consensus(
                self.head_labels_, self.n_clusters, self.ensemble, random_state=self.random_state, return_scores=True
            )
            self.consensus_labels_, self.consensus_scores_ = cons, scores
            self.agreement_ = ensemble_agreement(self.head_labels_, cons)
            train = self._confident(cons, self.agreement_)
            self.classifier_train_fraction_ = float(train.size / X.shape[0])
            mean, std = _standardise_stats(X)
            Xs = torch.as_tensor((X - mean) / std, dtype=torch.float32, device=device)
            rows = torch.as_tensor(train, device=device)
            self._model = _train_linear(
                Xs[rows], cons[train], self.n_clusters, self.classifier_epochs, self._batch_size(train.size), rng, device,
                weight_decay=1e-2,
            )
            self._mean, self._std = mean, std
            self.classifier_labels_ = self._scores(Xs).argmax(-1).cpu().numpy()
        self._model = self._model.cpu().eval()
        return self.classifier_labels_ if self.labels_from == "classifier" else cons

    def _confident(self, cons: np.ndarray, agree: np.ndarray) -> np.ndarray:
        """Rows the classifier trains on: agreement >= confidence; a cluster left with fewer than
        2 such rows keeps all of its rows (so that no consensus cluster vanishes)."""
        keep = agree >= self.confidence
        for c in np.unique(cons):
            members = cons == c
            if (keep & members).sum() < 2:
                keep |= members
        return np.flatnonzero(keep)

    _state_prefix = "classifier."

    def _make_model(self, dim: int):  # the self-trained linear classifier
        return _nn().nn.Linear(dim, self.n_clusters)

    def _scores(self, Xt):
        return self._chunked_logits(self._model, Xt, self._predict_batch)


def _train_linear(Xs, y: np.ndarray, n_classes: int, epochs: int, batch_size: int, rng, device, lr=1e-3, weight_decay=1e-4):
    """ICCE stage 3: a linear softmax classifier on (standardised) embeddings, AdamW + cosine."""
    nn_ = _nn()
    torch, F = nn_.torch, nn_.F
    n, d = Xs.shape
    model = nn_.nn.Linear(d, n_classes).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    yt = torch.as_tensor(y, dtype=torch.long, device=device)
    b = min(batch_size, n)
    steps = max(1, math.ceil(n / b))
    total = epochs * steps
    step = 0
    for _ in range(epochs):
        perm = rng.permutation(n)
        for s in range(steps):
            idx = torch.as_tensor(perm[s * b : (s + 1) * b], device=device)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, 0, lr, "cosine")
            loss = F.cross_entropy(model(Xs[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return model


# ----------------------------------------------------------------------------------------------
# SCAN and UNIC (MLP heads on standardised embeddings)


class _MLPMethod(_SampledHead):
    """Shared by scan and unic: an MLPHead on standardised embeddings, Adam + cosine schedule."""

    def _make_model(self, d: int):
        return _nn().MLPHead(d, self.n_clusters, self.hidden, getattr(self, "heads", 1))

    def _setup(self, X):
        device = resolve_device(self.device)
        torch = _nn().torch
        self._mean, self._std = _standardise_stats(X)
        Xt = torch.as_tensor((X - self._mean) / self._std, dtype=torch.float32, device=device)
        return device, Xt

    def _optimiser(self, model):
        torch = _nn().torch
        return torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def _finish(self, model, Xt, head: int = 0) -> np.ndarray:
        self._model, self._head = model.eval(), head
        labels = self._scores(Xt).argmax(dim=-1).cpu().numpy()
        self._model = model.cpu()
        return labels

    def _state(self):
        return {**super()._state(), "head_index": np.array([self._head], dtype=np.int64)}

    def _load_state(self, state):
        self._head = int(np.asarray(state["head_index"]).ravel()[0])
        super()._load_state(state)


@register_clusterer
class ScanClusterer(_MLPMethod):
    """SCAN's clustering step on frozen embeddings (Van Gansbeke et al. 2020).

    Loss: -log <p(x), p(x')> for a neighbour x' drawn from the top ``k`` (anew every step), minus
    ``entropy_weight`` times the entropy of the batch-mean prediction. The head is an MLP
    (``hidden`` units, BatchNorm, ReLU; ``hidden=0`` = SCAN's linear head) on standardised
    embeddings; with several ``heads`` the one with the lowest final loss is kept (as SCAN does).
    SCAN's self-labelling step and backbone fine-tuning are not run. SCAN's Adam lr was 1e-4 with
    a fine-tuned backbone; the default here is 1e-3 for a freshly initialised head trained for a few
    thousand steps (measured: Imagenette effnet-lite0 AMI 92.9; other values not tuned).
    """

    name = "scan"
    summary = "SCAN clustering head on frozen embeddings (neighbour consistency + entropy)"
    paper = "Van Gansbeke et al., ECCV 2020 (SCAN)"
    params = (
        Param("heads", 1, int, "heads trained together on one MLP trunk; the lowest-loss head is kept", low=1),
        _p_epochs("200000/n_samples clipped to [30, 100]"),
        P_BATCH,
        Param("lr", 1e-3, float, "Adam learning rate (cosine decay)", low=0, low_inclusive=False),
        Param("weight_decay", 1e-4, float, "Adam weight decay", low=0),
        Param("k", 20, int, "nearest neighbours a pair partner is drawn from", low=1),
        Param("entropy_weight", 5.0, float, "weight of the entropy term that keeps clusters balanced", low=0),
        Param("hidden", 512, int, "hidden units of the MLP head (0 = a linear head)", low=0),
        _p_train_rows(),
        P_CENTER,
        P_DEVICE,
    )

    def _auto_epochs(self, n: int) -> int:
        return int(np.clip(round(200_000 / max(n, 1)), 30, 100))

    def _train(self, X, views):
        rng = np.random.default_rng(self.random_state)
        device, Xt = self._setup(X)
        torch = _nn().torch
        n = X.shape[0]
        with seeded_torch(self.random_state, device):
            sampler = NeighbourSampler.from_dense(self._mined(self._clip_k(self.k, n)).indices)
            model = self._make_model(X.shape[1]).to(device)
            per_step = []  # each step's per-head losses; the best head is chosen on the last epoch's

            def step_loss(rows):
                nb = sampler.sample(rows, rng)
                out = model(Xt[torch.as_tensor(np.concatenate([rows, nb]), device=device)])
                b = len(rows)
                per_head = torch.stack([scan_loss(out[h, :b], out[h, b:], self.entropy_weight)[0] for h in range(self.heads)])
                per_step.append(per_head.detach())
                loss = per_head.sum()
                return loss, float(loss.detach()) / self.heads

            self._train_epochs(self._optimiser(model), n, rng, step_loss)
            steps = self._steps_per_epoch(n)
            head_loss = torch.zeros(self.heads, device=device)
            for losses in per_step[-steps:]:
                head_loss += losses
            self.head_losses_ = (head_loss / steps).cpu().numpy()
            self.best_head_ = int(np.argmin(self.head_losses_))
            return self._finish(model, Xt, self.best_head_)


@register_clusterer
class UnicClusterer(_MLPMethod):
    """UNIC's clustering loss with positive/negative neighbour mining, head-only variant (§4).

    Positives: the ``tau1`` most similar samples; a sample whose positives' own positive sets have
    more than ``eta`` distinct members in their union is "noisy" and keeps only itself as positive.
    Negatives: drawn uniformly from the samples ranked ``tau2`` and beyond. Loss: BCE(<p_i,p_pos>, 1)
    + BCE(<p_i,p_neg>, 0) - ``entropy_weight`` · H(mean p). A 2-layer MLP head on standardised
    embeddings, Adam + cosine. UNIC also fine-tunes the encoder's last block; here the encoder is
    frozen, so this is the head-only variant.

    As in UNIC's Eq. 3-4 the sample counts among its own ``tau1`` positives (``self_positive``), so the
    cleaning union holds the positives themselves too. Measured on effnet-lite0 embeddings, seed 0
    (BENCHMARKS.md): AMI 93.7 against 93.2 without it on Imagenette, 37.6 against 37.1 on CIFAR-10.
    ``metric=euclidean`` ranks neighbours by euclidean distance on the raw features, as UNIC does;
    ``hidden`` is 512 here (A.10: 2048); see BENCHMARKS.md for both measured.

    Defaults scaled to data size (UNIC: τ1=10, η=70 on CIFAR-10/STL-10; τ1=50, η=1500 on ImageNet
    subsets; τ2 1000 to 10000): ``tau1`` 10; ``eta`` None = round(0.7·τ1²) (70 at τ1=10, 1750 at
    τ1=50); ``tau2`` None = 2·N/K (twice the mean cluster size: CIFAR-10's 10000 for N=50000, K=10),
    at least τ1+1 and at most N-2, N the rows it trains on (at most ``train_rows`` <= :data:`UNIC_MAX_ROWS`).
    """

    name = "unic"
    summary = "UNIC clustering head (positive/negative neighbour mining with cleaning), head-only variant"
    paper = "UNIC: Utilization of Neighbor Information for GCD and Image Clustering"
    params = (
        Param("tau1", 10, int, "positives per sample: its tau1 nearest neighbours", low=1),
        Param("tau2", None, int, "negatives come from rank tau2 on; None = 2·n_samples/n_clusters", low=2, nullable=True),
        Param("eta", None, int, "second-order neighbourhood size above which a sample's positives are dropped; None = 0.7·tau1²", low=1, nullable=True),
        Param("entropy_weight", 3.0, float, "weight of the entropy bonus on the mean prediction", low=0),
        _p_epochs("100"),
        P_BATCH,
        Param("lr", 1e-4, float, "Adam learning rate (cosine decay)", low=0, low_inclusive=False),
        Param("weight_decay", 0.0, float, "Adam weight decay", low=0),
        Param("hidden", 512, int, "hidden units of the 2-layer MLP head (UNIC A.10: 2048)", low=1),
        Param("self_positive", True, bool,
              "the sample is one of its own tau1 positives and of the cleaning union (UNIC Eq. 3-4)"),
        Param("metric", "cosine", str,
              "neighbour ranking: cosine (centred, l2-normalised) or euclidean on the raw features (UNIC)",
              choices=("cosine", "euclidean")),
        _p_train_rows(high=UNIC_MAX_ROWS),
        P_CENTER,
        P_DEVICE,
    )

    def _auto_epochs(self, n: int) -> int:
        return 100

    at_scale = (f"trains on at most train_rows rows (default {TRAIN_ROWS:,}, at most {UNIC_MAX_ROWS:,}: the "
                "negatives' threshold ranks every training row against all others, O(N²) time); above, on a "
                "seeded random sample of that many rows, and the trained head labels every row in batches")

    def _resolved(self, n: int) -> tuple[int, int, int]:
        tau1 = self._clip_k(self.tau1, n, "tau1")
        eta = int(self.eta) if self.eta is not None else int(round(0.7 * tau1 * tau1))
        tau2 = int(self.tau2) if self.tau2 is not None else int(round(2 * n / self.n_clusters))
        tau2 = int(min(max(tau2, tau1 + 1), n - 2))
        return tau1, tau2, eta

    def _train(self, X, views):
        n = X.shape[0]
        if n < 4:
            raise UsageError(f"unic needs at least 4 samples to mine positives and negatives; got {n}")
        rng = np.random.default_rng(self.random_state)
        device, Xt = self._setup(X)
        torch = _nn().torch
        tau1, tau2, eta = self._resolved(n)
        self.tau1_, self.tau2_, self.eta_ = tau1, tau2, eta
        Z, keys = euclidean_space(X) if self.metric == "euclidean" else (neighbour_space(X, self.center), None)
        with seeded_torch(self.random_state, device):
            others = tau1 - 1 if self.self_positive else tau1
            pos = self._mined(max(others, 1), self.metric).indices
            if self.self_positive:  # Eq. 3: the sample itself is one of its tau1 positives
                pos = np.hstack([np.arange(n)[:, None], pos[:, :others]])
            noisy = second_order_clean(pos, eta)
            self.noisy_ = noisy
            pos = np.where(noisy[:, None], np.arange(n)[:, None], pos)
            sampler = NeighbourSampler.from_dense(pos)
            # negatives: similarity below each sample's tau2-th highest (ranks tau2.. of the rest)
            neg_thr = torch.as_tensor(kth_similarity(Z, tau2, device, keys=keys), device=device)
            Zt = torch.as_tensor(Z, device=device)
            Kt = Zt if keys is None else torch.as_tensor(keys, device=device)
            model = self._make_model(X.shape[1]).to(device)

            def step_loss(rows):
                p = sampler.sample(rows, rng)
                q = self._negatives(rows, Zt, Kt, neg_thr, rng, device)
                out = model(Xt[torch.as_tensor(np.concatenate([rows, p, q]), device=device)])[0]
                b = len(rows)
                loss = unic_loss(out[:b], out[b : 2 * b], out[2 * b :], self.entropy_weight)[0]
                return loss, float(loss.detach())

            self._train_epochs(self._optimiser(model), n, rng, step_loss)
            return self._finish(model, Xt)

    @staticmethod
    def _negatives(rows, Zt, Kt, thr, rng, device, tries: int = 20) -> np.ndarray:
        """One negative per row: a uniform draw among samples less similar than its tau2-th neighbour."""
        import torch

        n = Zt.shape[0]
        out = rng.integers(0, n, len(rows))
        todo = np.arange(len(rows))
        for _ in range(tries):
            r = torch.as_tensor(rows[todo], device=device)
            c = torch.as_tensor(out[todo], device=device)
            ok = ((Zt[r] * Kt[c]).sum(dim=1) < thr[r]) & (r != c)
            todo = todo[~ok.cpu().numpy()]
            if todo.size == 0:
                break
            out[todo] = rng.integers(0, n, todo.size)
        return out
