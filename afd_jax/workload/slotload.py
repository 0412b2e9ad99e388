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


def _lattice_pi_trace(w) -> tuple[int, np.ndarray]:
    """Unnormalised pi of a trace on the lattice start..end: difference array (+1 at P_i,
    -1 at P_i + D_i), cumulative sum. Rows with D = 0 cancel (zero weight)."""
    prompt = np.asarray(w.prompt, np.int64)
    decode = np.asarray(w.decode, np.int64)
    keep = decode > 0
    if not np.any(keep):
        from afd_jax.errors import InputError

        raise InputError("every decode length is 0: no slot is ever held", field="decode")
    prompt, decode = prompt[keep], decode[keep]
    start = int(prompt.min())
    end = int((prompt + decode).max())  # exclusive
    n = end - start
    diff = np.bincount(prompt - start, minlength=n + 1).astype(np.float64)
    diff -= np.bincount(prompt + decode - start, minlength=n + 1)
    return start, np.cumsum(diff[:n])


def _convolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Full linear convolution of two float64 arrays: direct when small, else real FFT (absolute
    error ~1e-16 * max; the tiny negatives this can leave are clipped by the caller)."""
    if a.size * b.size <= 1 << 20:
        return np.convolve(a, b)
    n = a.size + b.size - 1
    nfft = 1 << (n - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(a, nfft) * np.fft.rfft(b, nfft), nfft)[:n]


def _lattice_pi_component(comp) -> tuple[int, np.ndarray]:
    """Unnormalised pi of one copula component (total mass E[D]) on the lattice start..end.

    ``Pr(P <= l <= P + D - 1) = Pr(P <= l) - Pr(P + D <= l)``: the cumulative sum of
    ``pmf_P(l) - pmf_{P+D}(l)``. For independent P, D the law of P + D is the convolution of the
    two pmfs (:func:`_convolve`, FFT when large); for a copula it is accumulated over the
    decode atoms d of ``pmf_D(d) * Pr(P = l - d | D = d)`` (the conditional rows of
    :func:`afd_jax.workload.families.copula_conditional_rows`, chunked), so pi, theta and v come
    from the
    same joint law.
    """
    from afd_jax.workload.families import copula_conditional_rows, gaussian_corr

    pv, pp = comp.prompt.values, comp.prompt.pmf
    dv, dp = comp.decode.values, comp.decode.pmf
    start = int(pv[0])
    end = int(pv[-1] + dv[-1])  # exclusive upper end of the support of P + D
    n = end - start
    lat_p = np.zeros(n + 1)
    lat_p[pv - start] = pp
    independent = gaussian_corr(comp.rank_corr) == 0.0 or dv.size == 1 or pv.size == 1
    if independent:
        lat_d = np.zeros(int(dv[-1]) + 1)
        lat_d[dv] = dp
        lat_s = _convolve(lat_p[: int(pv[-1]) - start + 1], lat_d)  # index l - start
        lat_s = np.concatenate([lat_s, np.zeros(max(0, n + 1 - lat_s.size))])[: n + 1]
    else:
        # P-marginal and P+D law both from the same quadrature joint law (consistency)
        lat_s = np.zeros(n + 1)
        marg_p = np.zeros(pv.size)
        for atoms, rows in copula_conditional_rows(comp):
            d = dv[atoms]
            joint = rows * dp[atoms, None]
            marg_p += joint.sum(axis=0)
            idx = (pv[None, :] - start) + d[:, None]
            lat_s += np.bincount(idx.ravel(), weights=joint.ravel(), minlength=n + 1)[: n + 1]
        lat_p[:] = 0.0
        lat_p[pv - start] = marg_p
    return start, np.cumsum(lat_p - lat_s)[:n]


def coarsen(start: int, pmf: np.ndarray, max_bins: int) -> SlotLoadPMF:
    """Put a pmf on the unit lattice ``start + i`` onto a lattice of width
    ``width = ceil((n - 1) / (max_bins - 1))`` with at most ``max_bins`` points.

    A point at ``start + width * j + r`` (0 <= r < width) sends ``(1 - r/width)`` of its mass to
    lattice point j and ``r/width`` to j + 1. The mean is unchanged; the variance grows by
    ``width^2 E[f (1 - f)] <= width^2 / 4`` (f = r/width), and every quantile moves by less than
    one width.
    """
    pmf = np.asarray(pmf, np.float64)
    n = pmf.size
    if max_bins < 2:
        raise ValueError("max_bins must be >= 2")
    if n <= max_bins:
        return SlotLoadPMF(int(start), 1, pmf)
    width = -(-(n - 1) // (max_bins - 1))
    i = np.arange(n)
    base, frac = i // width, (i % width) / width
    nb = (n - 1) // width + 1 + (1 if (n - 1) % width else 0)
    out = np.bincount(base, weights=(1.0 - frac) * pmf, minlength=nb)
    out += np.bincount(base + 1, weights=frac * pmf, minlength=nb)[:nb]
    return SlotLoadPMF(int(start), int(width), out[:nb])


def slot_load_pmf(w, load_offset: int = 0, max_bins: int = 1 << 16) -> SlotLoadPMF:
    """The stationary per-slot load law pi of a workload (float64), MODEL.md 4.

    ``pi(l) = Pr(P <= l <= P + D - 1) / E[D]``, shifted by ``load_offset`` (slot load at decode
    step k is ``P + k + load_offset``).

    * TraceWorkload: difference array over rows (+1 at P_i, -1 at P_i + D_i), cumsum, / sum D.
      Exact: its mean and variance are the trace's theta_hat and v_hat.
    * ParametricWorkload: per component ``pmf_P - pmf_{P+D}`` cumulated (see
      :func:`_lattice_pi_component`); a mixture weights component k by ``w_k E_k[D]``. Its mean
      and variance are those of :func:`afd_jax.workload.families.parametric_stats`.

    Then :func:`coarsen` to at most ``max_bins`` lattice points (mean exact, variance + at most
    width^2/4). Returns :class:`SlotLoadPMF` (start, width, pmf summing to 1).
    """
    from afd_jax.workload.containers import ParametricWorkload, TraceWorkload

    if isinstance(w, TraceWorkload):
        start, lat = _lattice_pi_trace(w)
    elif isinstance(w, ParametricWorkload):
        parts = [_lattice_pi_component(c) for c in w.components]
        start = min(s for s, _ in parts)
        end = max(s + p.size for s, p in parts)
        lat = np.zeros(end - start)
        for wk, (s, p) in zip(np.asarray(w.weights, np.float64), parts, strict=True):
            lat[s - start : s - start + p.size] += wk * p
    else:
        raise TypeError(f"expected a TraceWorkload or ParametricWorkload, got {type(w).__name__}")
    lat = np.maximum(lat, 0.0)  # remove rounding negatives (|x| ~ 1e-16)
    total = lat.sum()
    return coarsen(start + int(load_offset), lat / total, max_bins)
