"""Workload containers: what a request stream looks like.

A workload is the law of a request (P, D): P >= 0 prompt tokens, D >= 1 decode steps
(docs/model.md 1, 4). Two kinds, both immutable dataclasses of float64/int64 NumPy arrays
(host-side descriptions; the JAX samplers in ``afd_jax.kernels.sampling`` are built from them):

* :class:`TraceWorkload` -- the empirical law of a request trace (rows with D = 0 are kept but
  carry zero weight: they never hold a slot).
* :class:`ParametricWorkload` -- a finite mixture of :class:`CopulaComponent`: independent
  marginals for P and D on integer supports, tied by a Gaussian copula with a given rank
  (Spearman) correlation (0 = independent).

Statistics (theta, v, ...) are free functions in :mod:`afd_jax.workload.statistics`; the stationary
slot-load law in :mod:`afd_jax.workload.slotload`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class TraceWorkload:
    """Empirical request law of a trace.

    prompt, decode: int64 arrays of shape (n,), decode already mapped to decode steps
    (``decode_mapping``) and possibly 0 (zero weight).
    """

    name: str
    prompt: np.ndarray
    decode: np.ndarray
    source: str = ""
    format: str = ""
    decode_mapping: str = "output"

    @property
    def n_requests(self) -> int:
        return int(self.prompt.shape[0])


@dataclass(frozen=True, eq=False)
class Marginal:
    """A law on non-negative integers: sorted unique ``values`` (int64) with ``pmf`` (float64,
    sums to 1)."""

    values: np.ndarray
    pmf: np.ndarray

    def mean(self) -> float:
        return float(np.dot(self.values.astype(np.float64), self.pmf))


@dataclass(frozen=True, eq=False)
class CopulaComponent:
    """P and D marginals joined by a Gaussian copula; ``rank_corr`` is the Spearman rank
    correlation of the latent copula (0 = independent)."""

    prompt: Marginal
    decode: Marginal
    rank_corr: float = 0.0


@dataclass(frozen=True, eq=False)
class ParametricWorkload:
    """Finite mixture of copula components with mixture ``weights`` (float64, sum to 1).

    ``label`` says where it comes from (for a preset fitted to a trace: "fit to ...")."""

    name: str
    components: tuple[CopulaComponent, ...]
    weights: np.ndarray
    label: str = ""
    params: dict = field(default_factory=dict)


Workload = TraceWorkload | ParametricWorkload


def content_digest(w: Workload) -> bytes:
    """A digest of what defines a workload's law (the rows of a trace; the weights, marginals
    and correlations of a parametric workload): caches of values computed from a workload
    key on it, so that arrays changed in place make new values (the dataclasses are frozen,
    their arrays are not). Milliseconds for the shared traces."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    if isinstance(w, TraceWorkload):
        parts = [w.prompt, w.decode]
    else:
        parts = [w.weights]
        for c in w.components:
            parts += [c.prompt.values, c.prompt.pmf, c.decode.values, c.decode.pmf]
            parts.append(np.array([c.rank_corr], np.float64))
    for a in parts:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.digest()


@dataclass(frozen=True)
class WorkloadStats:
    """Summary statistics of a workload (float64). ``theta`` and ``slot_var`` follow
    docs/model.md 4: theta = E[D P + D (D-1)/2] / E[D], slot_var = v. For traces,
    ``n_requests`` counts rows and ``n_zero_decode`` the rows with D = 0 (kept, zero weight); for
    parametric workloads both are 0 and the moments are exact."""

    n_requests: int
    n_zero_decode: int
    mean_prompt: float
    mean_decode: float
    naive_mean_sum: float
    theta: float
    slot_var: float
    corr_prompt_decode: float

    @property
    def slot_std(self) -> float:
        return float(np.sqrt(self.slot_var))
