"""Workload statistics (docs/model.md 4), host-side float64 NumPy.

For a trace {(P_i, D_i)}, i = 1..n (renewal-reward estimators; every slot-step of the trace
counts once):

* ``theta_hat = sum_i N_i / sum_i D_i`` with ``N_i = D_i P_i + D_i (D_i - 1) / 2``
  (the mean over all slot-steps of the slot load P_i + k, k = 0..D_i-1);
* ``v_hat = sum_i S_i / sum_i D_i`` with ``S_i = sum_k (P_i + k - theta_hat)^2
  = D_i c_i^2 + c_i D_i (D_i - 1) + D_i (D_i - 1)(2 D_i - 1) / 6``, ``c_i = P_i - theta_hat``
  (the same as the raw-moment form ``E[D P^2 + P D (D-1) + D (D-1)(2D-1)/6] / E[D] - theta^2``
  of docs/model.md 4, written centred so no large terms cancel);
* ``mean_prompt``, ``mean_decode``: plain means over *all* rows (rows with D = 0 included, as a
  spreadsheet would compute them); ``naive_mean_sum`` = their sum (the paper's v1 E[P] + E[D]);
* ``corr_prompt_decode``: Pearson correlation of P and D over the rows with D > 0 (those that
  hold a slot); NaN when either is constant.

A confidence interval for theta: :func:`theta_confidence_interval` (delta method for the ratio
estimator, or a seeded percentile bootstrap); :func:`theta_interval_note` says why an interval
has zero width (a one-row trace, or rows without spread), so that it is never shown silently.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from afd_jax.errors import InputError, check_level
from afd_jax.memory import require
from afd_jax.workload.containers import ParametricWorkload, TraceWorkload, WorkloadStats
from afd_jax.workload.families import parametric_stats

CI_METHODS = ("delta", "bootstrap")


def _as_arrays(prompt, decode) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(prompt, dtype=np.float64).reshape(-1)
    d = np.asarray(decode, dtype=np.float64).reshape(-1)
    if p.shape != d.shape:
        raise ValueError(f"prompt and decode differ in length: {p.shape} vs {d.shape}")
    if p.size == 0:
        raise InputError("empty trace: no request rows")
    if np.any(d < 0) or np.any(p < 0):
        raise InputError("negative token counts")
    if not np.any(d > 0):
        raise InputError("every decode length is 0: no request holds a slot")
    return p, d


def slot_step_reward(prompt, decode) -> np.ndarray:
    """Per-row reward ``N_i = D_i P_i + D_i (D_i - 1) / 2`` (sum of the loads P_i + k over the
    row's D_i slot-steps), float64 of shape (n,)."""
    p = np.asarray(prompt, dtype=np.float64)
    d = np.asarray(decode, dtype=np.float64)
    return d * p + d * (d - 1.0) / 2.0


def trace_stats(prompt, decode) -> WorkloadStats:
    """Statistics of a trace (see the module docstring for the formulas).

    Args:
      prompt, decode: integer arrays of shape (n,) (decode = mapped decode steps, may be 0).

    Returns:
      :class:`WorkloadStats` in float64.

    >>> s = trace_stats([10, 0], [2, 1])
    >>> s.theta  # slot-steps carry loads 10, 11, 0
    7.0
    """
    p, d = _as_arrays(prompt, decode)
    sum_d = float(np.sum(d))
    theta = float(np.sum(slot_step_reward(p, d)) / sum_d)
    c = p - theta
    s = d * c * c + c * d * (d - 1.0) + d * (d - 1.0) * (2.0 * d - 1.0) / 6.0
    slot_var = max(float(np.sum(s) / sum_d), 0.0)
    held = d > 0
    ph, dh = p[held], d[held]
    if ph.size >= 2 and np.std(ph) > 0 and np.std(dh) > 0:
        corr = float(np.corrcoef(ph, dh)[0, 1])
    else:
        corr = float("nan")
    mean_p, mean_d = float(np.mean(p)), float(np.mean(d))
    return WorkloadStats(
        n_requests=int(p.size),
        n_zero_decode=int(np.sum(~held)),
        mean_prompt=mean_p,
        mean_decode=mean_d,
        naive_mean_sum=mean_p + mean_d,
        theta=theta,
        slot_var=slot_var,
        corr_prompt_decode=corr,
    )


def workload_stats(w) -> WorkloadStats:
    """Statistics of any workload: a :class:`TraceWorkload` (estimators above) or a
    :class:`ParametricWorkload` (exact moments,
    :func:`afd_jax.workload.families.parametric_stats`)."""
    if isinstance(w, TraceWorkload):
        return trace_stats(w.prompt, w.decode)
    if isinstance(w, ParametricWorkload):
        return parametric_stats(w)
    raise TypeError(f"not a workload: {type(w).__name__}")


# Work bound of the bootstrap: resamples x rows drawn (about a minute of host work).
MAX_BOOTSTRAP_DRAWS = 10**10


def theta_confidence_interval(
    prompt,
    decode,
    level: float = 0.95,
    method: str = "delta",
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Two-sided confidence interval for theta from a trace (rows i.i.d.).

    ``method="delta"`` (default, deterministic): theta_hat = sum N_i / sum D_i is a ratio
    estimator; by the delta method its standard error is
    ``se = sqrt( sum_i (N_i - theta_hat D_i)^2 / (n (n - 1)) ) / mean(D)`` and the interval is
    ``theta_hat -+ z_{(1+level)/2} se``, its lower end cut at 0 (theta is a mean of token
    counts; a few rows with a wide spread put the normal interval below 0).

    ``method="bootstrap"``: percentile bootstrap, ``n_boot`` resamples of the rows drawn with a
    NumPy ``Generator`` seeded by ``seed`` (host-side float64 code; same seed, same interval).

    Args:
      prompt, decode: integer arrays of shape (n,).
      level: coverage in (0, 1).

    Returns:
      (low, high) as Python floats.
    """
    check_level(level)
    if method not in CI_METHODS:
        raise InputError(
            f"unknown CI method {method!r} (known: {', '.join(CI_METHODS)})", field="ci_method"
        )
    p, d = _as_arrays(prompt, decode)
    n = p.size
    reward = slot_step_reward(p, d)
    theta = float(np.sum(reward) / np.sum(d))
    if n < 2:
        return theta, theta
    if method == "delta":
        z = NormalDist().inv_cdf(0.5 + level / 2.0)
        resid = reward - theta * d
        se = float(np.sqrt(np.sum(resid * resid) / (n * (n - 1.0))) / np.mean(d))
        return max(theta - z * se, 0.0), theta + z * se  # theta >= 0
    if n_boot < 2:
        raise InputError(f"n_boot must be >= 2, got {n_boot}", field="n_boot")
    if n_boot * n > MAX_BOOTSTRAP_DRAWS:
        raise InputError(
            f"n_boot x rows = {n_boot} x {n} resampled rows is over the limit of "
            f"{MAX_BOOTSTRAP_DRAWS:.0e} (minutes of work); lower --n-boot",
            field="n_boot",
        )
    require(8 * n_boot, f"{n_boot} bootstrap resamples", "lower --n-boot")
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 2_000_000 // n))
    thetas = np.empty(n_boot, dtype=np.float64)
    done = 0
    while done < n_boot:
        m = min(chunk, n_boot - done)
        idx = rng.integers(0, n, size=(m, n))
        sum_d = d[idx].sum(axis=1)
        sum_r = reward[idx].sum(axis=1)
        # A resample with no decode steps (only possible with many D = 0 rows) has no theta.
        thetas[done : done + m] = np.where(
            sum_d > 0, sum_r / np.where(sum_d > 0, sum_d, 1.0), np.nan
        )
        done += m
    thetas = thetas[np.isfinite(thetas)]
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(thetas, [alpha, 1.0 - alpha])
    return float(low), float(high)


def theta_interval_note(decode, low: float, high: float) -> str | None:
    """Why the interval (low, high) for theta has zero width, or None when it has width.

    A trace in which a single row holds a slot (D > 0) gives no spread to estimate; rows whose
    loads all average the same per decode step (``N_i = theta D_i``, e.g. identical rows) give a
    standard error of 0. Either way the interval is [theta, theta] and says nothing about the
    uncertainty of theta: the CLI prints this note next to it (JSON ``theta_ci_note``).

    >>> theta_interval_note([5], 12.0, 12.0)
    'zero-width interval: only 1 request row holds a slot, so there is no spread to estimate'
    >>> theta_interval_note([5, 3], 11.0, 13.0) is None
    True
    """
    if high > low:
        return None
    held = int(np.sum(np.asarray(decode) > 0))
    if held < 2:
        return (
            f"zero-width interval: only {held} request row holds a slot, so there is no spread "
            "to estimate"
        )
    return (
        f"zero-width interval: the {held} rows that hold a slot all have the same mean load per "
        "decode step, so they show no spread"
    )
