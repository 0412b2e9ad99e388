"""The stationary per-slot load law pi (MODEL.md 4) as a float64 pmf on a lattice.

``pi(l) = Pr(P <= l <= P + D - 1) / E[D]``. When the support is wider than ``max_bins`` the
pmf is put on a coarser lattice of width ``width`` by splitting each point's mass linearly
between its two neighbouring lattice points: the mean is preserved exactly and the variance
grows by at most width**2 / 4 (docs/workloads.md states the resulting error bounds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class SlotLoadPMF:
    """pmf[i] = Pr(slot load = start + i * width); float64, sums to 1."""

    start: int
    width: int
    pmf: np.ndarray

    @property
    def support(self) -> np.ndarray:
        return self.start + self.width * np.arange(self.pmf.shape[0], dtype=np.float64)

    def mean(self) -> float:
        return float(np.dot(self.support, self.pmf))

    def var(self) -> float:
        x = self.support - self.mean()
        return float(np.dot(x * x, self.pmf))
