"""The stationary per-slot load law pi (docs/model.md 4) as a float64 pmf on a lattice.

``pi(l) = Pr(P <= l <= P + D - 1) / E[D]``. When the support is wider than ``max_bins`` the
pmf is put on a coarser lattice of width ``width`` by splitting each point's mass linearly
between its two neighbouring lattice points: the mean is preserved exactly and the variance
grows by at most width**2 / 4 (docs/workloads.md states the resulting error bounds).

Memory is bounded before anything is allocated: no array has more than :data:`MAX_LATTICE`
points. A trace whose loads span more tokens than that (a row with P = 1e12) is binned straight
onto the coarse lattice (:func:`_coarse_pi_trace`, memory O(rows + max_bins)); a parametric
workload that wide, or a ``max_bins`` above the limit, is an
:class:`~afd_jax.errors.InputError` naming the size and the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from afd_jax.errors import InputError
from afd_jax.workload.containers import ParametricWorkload, TraceWorkload, content_digest
from afd_jax.workload.families import copula_conditional_rows, gaussian_corr

#: The most points of any lattice array built here (float64: 256 MiB per array).
MAX_LATTICE = 1 << 25


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


def _held_rows(w) -> tuple[np.ndarray, np.ndarray]:
    """The (P, D) rows of a trace that hold a slot (D > 0), int64."""
    prompt = np.asarray(w.prompt, np.int64)
    decode = np.asarray(w.decode, np.int64)
    keep = decode > 0
    if not np.any(keep):
        raise InputError("every decode length is 0: no slot is ever held", field="decode")
    return prompt[keep], decode[keep]


def _lattice_pi_trace(prompt: np.ndarray, decode: np.ndarray) -> tuple[int, np.ndarray]:
    """Unnormalised pi of a trace on the lattice start..end: difference array (+1 at P_i,
    -1 at P_i + D_i), cumulative sum."""
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
    from the same joint law.
    """
    pv, pp = comp.prompt.values, comp.prompt.pmf
    dv, dp = comp.decode.values, comp.decode.pmf
    start = int(pv[0])
    end = int(pv[-1] + dv[-1])  # exclusive upper end of the support of P + D
    n = end - start
    lat_p = np.zeros(n + 1)
    lat_p[pv - start] = pp
    if _independent(comp):
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


def _coarse_lattice(n: int, max_bins: int) -> tuple[int, int]:
    """(width, number of points) of the coarse lattice for ``n`` unit points, ``max_bins`` >= 2:
    ``width = ceil((n - 1) / (max_bins - 1))``, at most ``max_bins`` points."""
    width = -(-(n - 1) // (max_bins - 1))
    return width, (n - 1) // width + 1 + (1 if (n - 1) % width else 0)


def _coarse_pi_trace(
    prompt: np.ndarray, decode: np.ndarray, max_bins: int
) -> tuple[int, int, np.ndarray]:
    """Unnormalised pi of a trace put straight onto the coarse lattice of :func:`coarsen`,
    without the unit lattice: (start, width, masses), memory O(rows + max_bins).

    Row i adds 1 at each load offset m in [a, b) = [P_i - start, P_i + D_i - start); offset
    ``m = q w + r`` sends ``1 - r/w`` to lattice point q and ``r/w`` to q + 1 (as
    :func:`coarsen` does). Summed in closed form per row, with only positive terms (no
    cancellation of large numbers):

    * a and b in one cell q (points r = r_a..r_b - 1, D of them): ``(2w - r_a - r_b + 1) D / 2w``
      to q and ``(r_a + r_b - 1) D / 2w`` to q + 1;
    * otherwise the first, partial cell (t = w - r_a points): ``t (t + 1) / 2w`` to q_a and
      ``t - t (t + 1) / 2w`` to q_a + 1; every full cell c in q_a + 1..q_b - 1: ``(w + 1)/2`` to c
      and ``(w - 1)/2`` to c + 1 (range sums by difference arrays of integer counts); the last,
      partial cell (r_b points): ``r_b - r_b (r_b - 1) / 2w`` to q_b, ``r_b (r_b - 1) / 2w`` to
      q_b + 1.
    """
    start = int(prompt.min())
    n = int((prompt + decode).max()) - start
    width, nb = _coarse_lattice(n, max_bins)
    lo, hi = prompt - start, prompt + decode - start
    qa, qb = lo // width, hi // width
    w = float(width)
    ra, rb = (lo % width).astype(np.float64), (hi % width).astype(np.float64)
    size = int(qb.max()) + 2
    out = np.zeros(size)

    def add(idx, weights):
        out[:] += np.bincount(idx, weights=weights, minlength=size)[:size]

    one = qa == qb
    d = decode[one].astype(np.float64)
    add(qa[one], (2.0 * w - ra[one] - rb[one] + 1.0) * d / (2.0 * w))
    add(qa[one] + 1, (ra[one] + rb[one] - 1.0) * d / (2.0 * w))
    qa, qb, ra, rb = qa[~one], qb[~one], ra[~one], rb[~one]
    t = w - ra
    add(qa, t * (t + 1.0) / (2.0 * w))
    add(qa + 1, t - t * (t + 1.0) / (2.0 * w))
    full_own = np.cumsum(np.bincount(qa + 1, minlength=size) - np.bincount(qb, minlength=size))
    full_next = np.cumsum(
        np.bincount(qa + 2, minlength=size + 1) - np.bincount(qb + 1, minlength=size + 1)
    )
    out += full_own[:size] * ((w + 1.0) / 2.0) + full_next[:size] * ((w - 1.0) / 2.0)
    add(qb, rb - rb * (rb - 1.0) / (2.0 * w))
    add(qb + 1, rb * (rb - 1.0) / (2.0 * w))
    return start, width, out[:nb]


def _check_bins(max_bins: int) -> None:
    """InputError (field ``slot_bins``, the CLI's ``--slot-bins``) unless ``max_bins`` >= 2."""
    if not isinstance(max_bins, int | np.integer) or max_bins < 2:
        raise InputError(f"must be an integer >= 2, got {max_bins!r}", field="slot_bins")


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
    _check_bins(max_bins)
    if n <= max_bins:
        return SlotLoadPMF(int(start), 1, pmf)
    width, nb = _coarse_lattice(n, max_bins)
    i = np.arange(n)
    base, frac = i // width, (i % width) / width
    out = np.bincount(base, weights=(1.0 - frac) * pmf, minlength=nb)
    out += np.bincount(base + 1, weights=frac * pmf, minlength=nb)[:nb]
    return SlotLoadPMF(int(start), int(width), out[:nb])


def _check_size(points: int, what: str, option: str, field: str) -> None:
    if points > MAX_LATTICE:
        raise InputError(
            f"{what} needs {points:,} lattice points ({8 * points / 2**30:,.1f} GiB per array), "
            f"more than the limit of {MAX_LATTICE:,}; {option}",
            field=field,
        )


def _trace_pi(w: TraceWorkload, max_bins: int) -> tuple[int, int, np.ndarray]:
    """(start, width, unnormalised masses) of a trace's pi, coarsened to at most ``max_bins``."""
    prompt, decode = _held_rows(w)
    n = int((prompt + decode).max()) - int(prompt.min())
    _check_size(min(n, max_bins), "the slot-load law", "lower max_bins (--slot-bins)", "slot_bins")
    if n > MAX_LATTICE:  # too wide for the unit lattice: bin straight onto the coarse one
        return _coarse_pi_trace(prompt, decode, max_bins)
    start, lat = _lattice_pi_trace(prompt, decode)
    return start, 1, lat


def needs_quadrature(w: ParametricWorkload) -> bool:
    """Whether pi of ``w`` comes from the copula quadrature (a component with correlated P
    and D, both not single-valued: seconds for a wide support), rather than a convolution."""
    return not all(_independent(c) for c in w.components)


def _independent(comp) -> bool:
    return (
        gaussian_corr(comp.rank_corr) == 0.0
        or comp.decode.values.size == 1
        or comp.prompt.values.size == 1
    )


_PARAMETRIC_PI: list = []  # (content digest, (start, lattice)), newest first
_PARAMETRIC_PI_KEPT = 2


def _parametric_pi(w: ParametricWorkload) -> tuple[int, np.ndarray]:
    """(start, unnormalised masses on the unit lattice) of a parametric workload's pi, computed
    once per workload content (:func:`~afd_jax.workload.containers.content_digest`; the exact
    method and the barrier sampler's table both need it, and the copula quadrature takes
    seconds for a wide support). The lattice is read-only."""
    key = content_digest(w)
    for i, (seen, value) in enumerate(_PARAMETRIC_PI):
        if seen == key:
            _PARAMETRIC_PI.insert(0, _PARAMETRIC_PI.pop(i))
            return value
    value = _compute_parametric_pi(w)
    value[1].flags.writeable = False
    _PARAMETRIC_PI.insert(0, (key, value))
    del _PARAMETRIC_PI[_PARAMETRIC_PI_KEPT:]
    return value


def unit_span(w) -> int:
    """The number of unit lattice points of pi of a workload (loads min P .. max P + D - 1),
    from the supports alone: what :func:`slot_load_pmf` would build before coarsening."""
    if isinstance(w, TraceWorkload):
        prompt, decode = _held_rows(w)
        return int((prompt + decode).max()) - int(prompt.min())
    start, end = _parametric_bounds(w)
    return end - start


def _parametric_bounds(w: ParametricWorkload) -> tuple[int, int]:
    comps = w.components
    start = min(int(c.prompt.values[0]) for c in comps)
    return start, max(int(c.prompt.values[-1] + c.decode.values[-1]) for c in comps)


def _compute_parametric_pi(w: ParametricWorkload) -> tuple[int, np.ndarray]:
    comps = w.components
    start, end = _parametric_bounds(w)
    _check_size(
        end - start,
        f"the slot-load law of {w.name!r} (loads {start:,}..{end:,})",
        "narrow the token ranges of the workload (for example prompt_max, decode_max)",
        "workload",
    )
    parts = [_lattice_pi_component(c) for c in comps]
    lat = np.zeros(end - start)
    for wk, (s, p) in zip(np.asarray(w.weights, np.float64), parts, strict=True):
        lat[s - start : s - start + p.size] += wk * p
    return start, lat


def slot_load_pmf(w, load_offset: int = 0, max_bins: int = 1 << 16) -> SlotLoadPMF:
    """The stationary per-slot load law pi of a workload (float64), docs/model.md 4.

    ``pi(l) = Pr(P <= l <= P + D - 1) / E[D]``, shifted by ``load_offset`` (slot load at decode
    step k is ``P + k + load_offset``).

    * TraceWorkload: difference array over rows (+1 at P_i, -1 at P_i + D_i), cumsum, / sum D.
      Exact: its mean and variance are the trace's theta_hat and v_hat. A trace spanning more
      than :data:`MAX_LATTICE` tokens is binned straight onto the coarse lattice
      (:func:`_coarse_pi_trace`).
    * ParametricWorkload: per component ``pmf_P - pmf_{P+D}`` cumulated (see
      :func:`_lattice_pi_component`); a mixture weights component k by ``w_k E_k[D]``. Its mean
      and variance are those of :func:`afd_jax.workload.families.parametric_stats`.

    Then :func:`coarsen` to at most ``max_bins`` lattice points (mean exact, variance + at most
    width^2/4). Returns :class:`SlotLoadPMF` (start, width, pmf summing to 1).

    Raises:
      InputError: a lattice of more than :data:`MAX_LATTICE` points would be needed
        (``max_bins`` above it, or a parametric workload that wide).
    """
    _check_bins(max_bins)
    if isinstance(w, TraceWorkload):
        start, width, lat = _trace_pi(w, max_bins)
    elif isinstance(w, ParametricWorkload):
        (start, lat), width = _parametric_pi(w), 1
    else:
        raise TypeError(f"expected a TraceWorkload or ParametricWorkload, got {type(w).__name__}")
    lat = np.maximum(lat, 0.0)  # remove rounding negatives (|x| ~ 1e-16)
    total = lat.sum()
    if width > 1:
        return SlotLoadPMF(start + int(load_offset), width, lat / total)
    return coarsen(start + int(load_offset), lat / total, max_bins)
