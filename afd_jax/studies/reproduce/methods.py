"""Every provisioning method of the reproduction on one scenario (workload, latency, B): the
mean-field, Gaussian and exact throughput curves for r = 1..r_max with their optima, the
gradient optimiser and the stationary Monte Carlo (docs/model.md 3, 5).

Host-side curves are float64: the callers run inside a float64 scope (``jax.enable_x64``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from afd_jax.model.exact import exact_throughput, worker_load_pmf
from afd_jax.model.latency import Latency, ModelOptions, step_time, throughput
from afd_jax.model.theory import (
    MeanFieldOptimum,
    gaussian_optimum_continuous,
    gaussian_throughput_jit,
    mean_attention_time,
    mean_field_optimum,
)
from afd_jax.montecarlo.simulate import simulate
from afd_jax.studies.optimize import optimize
from afd_jax.workload.containers import WorkloadStats
from afd_jax.workload.slotload import SlotLoadPMF, slot_load_pmf
from afd_jax.workload.statistics import workload_stats

__all__ = [
    "MethodCurves",
    "mean_field_curve",
    "methods_curve",
    "optimiser_choice",
    "simulate_stationary",
]


class MethodCurves(NamedTuple):
    """Throughput (tokens/s per instance, float64 arrays of shape (r_max,)) of every method
    for r = 1..r_max, the optima and what they were computed from."""

    stats: WorkloadStats
    pmf: SlotLoadPMF
    worker_pmf: SlotLoadPMF
    mean_field: np.ndarray
    gaussian: np.ndarray
    exact: np.ndarray
    mf_opt: MeanFieldOptimum
    gauss_cont: float


def mean_field_curve(lat: Latency, theta: float, r, batch: float, opts: ModelOptions):
    """Mean-field throughput at r (NumPy float64, docs/model.md 3): the step time at the mean
    Attention time ``alpha_A B theta + beta_A``, then ``1e6 r B / ((r c_A + c_F) tau)``."""
    tau = step_time(lat, mean_attention_time(lat, theta, batch), r, batch, opts)
    return throughput(lat, r, batch, tau)


def methods_curve(w, lat, opts, batch: int, r_max: int, slot_bins: int) -> MethodCurves:
    """Mean-field, Gaussian, exact throughput for r = 1..r_max and the optima (host floats)."""
    st = workload_stats(w)
    pmf = slot_load_pmf(w, load_offset=int(opts.load_offset), max_bins=slot_bins)
    wp = worker_load_pmf(pmf, batch)
    rs = np.arange(1, r_max + 1, dtype=np.float64)
    theta, var = float(st.theta) + opts.load_offset, float(st.slot_var)
    gauss = np.asarray(
        gaussian_throughput_jit(lat, theta, var, jnp.asarray(rs), float(batch), opts, "tail"),
        np.float64,
    )
    return MethodCurves(
        stats=st,
        pmf=pmf,
        worker_pmf=wp,
        mean_field=mean_field_curve(lat, theta, rs, float(batch), opts),
        gaussian=gauss,
        exact=exact_throughput(pmf, lat, batch, r_max, opts, worker_pmf=wp),
        mf_opt=mean_field_optimum(lat, theta, batch, opts, r_max),
        gauss_cont=gaussian_optimum_continuous(lat, theta, var, batch, opts, r_max),
    )


def optimiser_choice(pmf, st, lat, opts, batch: int, r_max: int, enabled: bool = True):
    """The gradient optimiser's (r_continuous, r), or (nan, None) when disabled."""
    if not enabled:
        return math.nan, None
    theta = float(st.theta) + opts.load_offset
    res = optimize(pmf, theta, float(st.slot_var), lat, opts, batch=batch, r_max=r_max)
    return float(res.r_continuous), int(res.r)


def simulate_stationary(w, lat, opts, batch, r_max, steps, reps, seed):
    """Stationary Monte Carlo (barrier kernel) for r = 1..r_max."""
    return simulate(
        w,
        lat,
        batch,
        r_max,
        kernel="barrier",
        steps=steps,
        replications=reps,
        seed=seed,
        opts=opts,
    )
