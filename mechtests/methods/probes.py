"""Linear truth probes behind one interface: ``fit(acts, labels)``, ``predict``, ``direction``.

Three probes, chosen by name with :func:`make_probe`:

``mm_lr`` (the paper's, default)
    Du et al. 2025 ``probes.py:MMProbe`` (paper code Knowledge+Truthfulness/probes.py:MMProbe):
    ``d = mu_T - mu_F`` over the
    training activations, then an unpenalised logistic regression with intercept on the 1-D
    score ``s = x . d``. The paper calls sklearn ``LogisticRegression(penalty=None)``; sklearn is
    not a dependency, so :func:`fit_logistic_1d` solves the same maximum-likelihood problem by
    Newton's method in float64 (on separable data both stop with the threshold in the gap).
``mass_mean`` / ``mass_mean_iid``
    geometry-of-truth ``probes.py:MMProbe`` (Marks & Tegmark 2023, saprmarks/geometry-of-truth):
    ``sigmoid(x . d)`` with no bias, or with ``iid=True`` ``sigmoid(x Sigma^+ d)`` where Sigma is
    the pooled within-class covariance (divided by n) and ``^+`` is
    ``pinv(hermitian=True, atol=1e-3)``.
``logistic``
    geometry-of-truth ``LRProbe``: ``sigmoid(w . x)``, no bias, BCE, AdamW (lr 1e-3, weight
    decay 0.1), 1000 full-batch epochs. Deviation: ``w`` starts at zero instead of PyTorch's
    random init, so the probe is deterministic.

Probes work on whatever activations they are given; the paper trains and evaluates on
per-dataset centered activations (:func:`mechtests.data.statements.center_per_dataset`).

Example:
    >>> x = torch.tensor([[2.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [-2.0, 1.0]])
    >>> y = torch.tensor([1, 1, 0, 0])
    >>> accuracy(make_probe("mm_lr").fit(x, y), x, y)
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np
import torch

from mechtests.methods.directions import diff_of_means
from mechtests.phases import one_item, timed_phase

__all__ = [
    "PROBE_KINDS",
    "LogisticProbe",
    "MassMeanProbe",
    "Probe",
    "ProjectionLRProbe",
    "accuracy",
    "correct",
    "fit_logistic_1d",
    "make_probe",
    "transfer_matrix",
]


class Probe(Protocol):
    """A linear truth probe."""

    name: str

    def fit(self, acts: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> Probe:
        """Fit on ``[n, d]`` activations and 0/1 labels; return ``self``."""
        ...

    def score(self, acts: torch.Tensor) -> torch.Tensor:
        """Decision values ``[n]`` (float64): positive means "true"."""
        ...

    def predict(self, acts: torch.Tensor) -> torch.Tensor:
        """Predicted labels ``[n]`` (int64, 0/1)."""
        ...

    @property
    def direction(self) -> torch.Tensor:
        """The probe's direction in activation space (float64, ``[d]``)."""
        ...


def _labels01(labels: torch.Tensor | Sequence[int]) -> torch.Tensor:
    return (torch.as_tensor(labels).reshape(-1) > 0.5).to(torch.int64)


def _not_fitted(name: str) -> RuntimeError:
    return RuntimeError(f"probe {name!r} is not fitted; call fit(acts, labels) first")


def fit_logistic_1d(
    scores: np.ndarray, labels: np.ndarray, max_iter: int = 100, tol: float = 1e-10
) -> tuple[float, float]:
    """Unpenalised 1-D logistic regression with intercept: ``(w, b)`` for ``sigmoid(w s + b)``.

    Newton's method with step halving on the standardised score, in float64; the result is
    mapped back to the raw score. On separable data the likelihood has no maximum: the iteration
    stops after ``max_iter`` steps (as sklearn's lbfgs does) with the threshold in the gap.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.where(np.asarray(labels).reshape(-1) > 0.5, 1.0, -1.0)
    mean, std = float(s.mean()), float(s.std())
    std = std if std > 0 else 1.0
    z = np.stack([(s - mean) / std, np.ones_like(s)], axis=1)

    def loss(theta: np.ndarray) -> float:
        return float(np.logaddexp(0.0, -y * (z @ theta)).sum())

    theta = np.zeros(2)
    current = loss(theta)
    for _ in range(max_iter):
        margin = y * (z @ theta)
        p = 0.5 * (1.0 + np.tanh(-margin / 2.0))  # sigmoid(-margin), overflow-free
        grad = -(z * (y * p)[:, None]).sum(0)
        if float(np.abs(grad).max()) < tol * len(s):
            break
        weights = p * (1.0 - p)
        hess = (z * weights[:, None]).T @ z + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-8:
            candidate = theta - t * step
            new = loss(candidate)
            if new <= current:
                break
            t /= 2.0
        else:
            break
        theta, improved = candidate, current - new
        current = new
        if improved < tol:
            break
    w = theta[0] / std
    b = theta[1] - theta[0] * mean / std
    return float(w), float(b)


class ProjectionLRProbe:
    """The paper's probe: mass-mean direction + 1-D logistic regression (see module doc).

    With ``direction`` given, only the 1-D regression is fitted on the projection onto it (the
    paper's ``MMProbe.from_probe``); a random ``direction`` gives a chance-level control probe.
    """

    name = "mm_lr"

    def __init__(self, direction: torch.Tensor | None = None) -> None:
        self._fixed = None if direction is None else direction.reshape(-1).to(torch.float64)
        self._d: torch.Tensor | None = None
        self._wb: tuple[float, float] = (1.0, 0.0)

    @timed_phase("probes", items=one_item)
    def fit(self, acts: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> ProjectionLRProbe:
        y = _labels01(labels)
        self._d = diff_of_means(acts, y) if self._fixed is None else self._fixed
        proj = (acts.to(torch.float64) @ self._d).numpy()
        self._wb = fit_logistic_1d(proj, y.numpy())
        return self

    def score(self, acts: torch.Tensor) -> torch.Tensor:
        if self._d is None:
            raise _not_fitted(self.name)
        w, b = self._wb
        return w * (acts.to(torch.float64) @ self._d) + b

    def predict(self, acts: torch.Tensor) -> torch.Tensor:
        return (self.score(acts) > 0).to(torch.int64)

    @property
    def direction(self) -> torch.Tensor:
        if self._d is None:
            raise _not_fitted(self.name)
        return self._d


class _WeightVectorProbe:
    """A probe that scores ``acts @ w`` with no bias and predicts ``score > 0``."""

    name = "weight_vector"
    _w: torch.Tensor | None = None

    def score(self, acts: torch.Tensor) -> torch.Tensor:
        if self._w is None:
            raise _not_fitted(self.name)
        return acts.to(torch.float64) @ self._w

    def predict(self, acts: torch.Tensor) -> torch.Tensor:
        return (self.score(acts) > 0).to(torch.int64)

    @property
    def direction(self) -> torch.Tensor:
        if self._w is None:
            raise _not_fitted(self.name)
        return self._w


class MassMeanProbe(_WeightVectorProbe):
    """geometry-of-truth's mass-mean probe, optionally with the covariance correction.

    ``direction`` is the vector scored: ``d`` without the correction, ``Sigma^+ d`` with it.
    """

    def __init__(self, iid: bool = False, atol: float = 1e-3) -> None:
        self.iid = iid
        self.atol = atol
        self.name = "mass_mean_iid" if iid else "mass_mean"
        self._d: torch.Tensor | None = None
        self._w: torch.Tensor | None = None

    @timed_phase("probes", items=one_item)
    def fit(self, acts: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> MassMeanProbe:
        y = _labels01(labels).bool()
        self._d = diff_of_means(acts, y)
        self._w = self._d
        if self.iid:
            x = acts.to(torch.float64)
            pos, neg = x[y], x[~y]
            centered = torch.cat([pos - pos.mean(0), neg - neg.mean(0)], 0)
            cov = centered.T @ centered / x.shape[0]
            inv = torch.linalg.pinv(cov, hermitian=True, atol=self.atol)
            self._w = inv @ self._d
        return self


class LogisticProbe(_WeightVectorProbe):
    """geometry-of-truth's ``LRProbe`` (see module doc); zero-initialised."""

    name = "logistic"

    def __init__(self, lr: float = 1e-3, weight_decay: float = 0.1, epochs: int = 1000) -> None:
        self.lr, self.weight_decay, self.epochs = lr, weight_decay, epochs
        self._w: torch.Tensor | None = None

    @timed_phase("probes", items=one_item)
    def fit(self, acts: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> LogisticProbe:
        x = acts.to(torch.float32)
        y = _labels01(labels).to(torch.float32)
        w = torch.zeros(x.shape[1], requires_grad=True)
        opt = torch.optim.AdamW([w], lr=self.lr, weight_decay=self.weight_decay)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        for _ in range(self.epochs):
            opt.zero_grad()
            loss = loss_fn(x @ w, y)
            loss.backward()
            opt.step()
        self._w = w.detach().to(torch.float64)
        return self


PROBE_KINDS: Mapping[str, Callable[[], Probe]] = {
    "mm_lr": ProjectionLRProbe,
    "mass_mean": lambda: MassMeanProbe(iid=False),
    "mass_mean_iid": lambda: MassMeanProbe(iid=True),
    "logistic": LogisticProbe,
}


def make_probe(kind: str = "mm_lr") -> Probe:
    """A fresh, unfitted probe of ``kind`` (one of :data:`PROBE_KINDS`)."""
    if kind not in PROBE_KINDS:
        raise ValueError(
            f"unknown probe kind {kind!r}; expected one of {', '.join(sorted(PROBE_KINDS))}"
        )
    return PROBE_KINDS[kind]()


@timed_phase("probes")
def correct(probe: Probe, acts: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> np.ndarray:
    """Per-example correctness (float64 0/1 array), the input of a bootstrap over statements."""
    pred = probe.predict(acts)
    return (pred == _labels01(labels)).to(torch.float64).numpy()


@timed_phase("probes")
def accuracy(probe: Probe, acts: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> float:
    """Fraction of examples the probe classifies correctly (``nan`` for no examples)."""
    hits = correct(probe, acts, labels)
    return float(hits.mean()) if hits.size else math.nan


Split = tuple[torch.Tensor, torch.Tensor]


def transfer_matrix(
    train: Mapping[str, Split], test: Mapping[str, Split], kind: str = "mm_lr"
) -> dict[tuple[str, str], float]:
    """Accuracy of the probe trained on model X's ``train`` split, evaluated on model Y's ``test``.

    Keys are ``(train_model, test_model)`` for every pair (paper code
    Knowledge+Truthfulness/probe_transfer.py: probe1/probe2 on
    model1/model2, extended to every role).
    """
    probes = {name: make_probe(kind).fit(acts, labels) for name, (acts, labels) in train.items()}
    return {
        (src, dst): accuracy(probe, *test[dst]) for src, probe in probes.items() for dst in test
    }
