"""Sweep evaluation: the methods, chunk by chunk (docs/sweep.md, "Methods").

* ``mean_field`` and ``gaussian`` (:mod:`afd_jax.model.theory`, JAX): ``jax.vmap`` over scenarios
  and r, jitted once per chunk shape, the chunk sharded over every local device along a 1-D
  ``"scenarios"`` mesh axis (:class:`jax.sharding.NamedSharding`). Each scenario's numbers are
  computed independently of every other, so results do not depend on the chunk size or the
  device count.
* ``exact`` (float64 NumPy): the worker-load law ``pi^{*B}``
  (:func:`afd_jax.model.exact.worker_load_pmf`, FFT) depends only on (workload, B); it is
  computed once per group and turned into :func:`afd_jax.model.exact.max_law_tables`, after which
  every scenario's step time is O(1) per r (:func:`afd_jax.model.exact.max_law_step_times`).
* ``mc`` (:func:`afd_jax.montecarlo.simulate.simulate`, one call per scenario; small sweeps
  only) and ``optimize`` (:func:`afd_jax.studies.optimize.solve_continuous_batched`, vmapped).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from afd_jax.model import latency as L
from afd_jax.model import theory
from afd_jax.model.exact import (
    MaxLawTables,
    max_law_curve_step_times,
    max_law_step_times,
    max_law_tables,
    worker_load_pmf,
)
from afd_jax.model.latency import AffineStage, Latency, ModelOptions
from afd_jax.montecarlo.dynamics import DYNAMICS_KEYS, dynamics_options
from afd_jax.montecarlo.simulate import simulate
from afd_jax.montecarlo.spine import local_devices_only
from afd_jax.studies.optimize import make_scenario, solve_continuous_batched
from afd_jax.studies.sweep.fields import LATENCY_FIELDS
from afd_jax.studies.sweep.plan import SweepPlan
from afd_jax.workload.slotload import slot_load_pmf

__all__ = [
    "DeviceMesh",
    "Evaluator",
    "ExactGroups",
    "analytic_kernels",
    "exact_chunk",
    "mc_chunk",
    "other_stage_times",
]


@functools.lru_cache(maxsize=8)
def analytic_kernels(opts: ModelOptions, r_max: int, gauss_method: str) -> dict:
    """Jitted chunk kernels, vmapped over scenarios (r = 1..r_max broadcasts inside); cached per
    (options, r_max, method), so sweeps of one shape in a process compile once.

    Inputs (all shape [n], one float dtype): a :class:`Latency` of [n] arrays, theta, slot_var,
    batch. ``"mean_field"`` returns ``regime`` int32[n, r_max] (0 attention, 1 communication,
    2 FFN: the stage with the largest mean-field time at r, ties in that order as in
    :func:`afd_jax.model.theory.mean_field_regime`) and ``tput_mean_field``; ``"gaussian"`` returns
    ``tput_gaussian`` (tokens/s, float[n, r_max]).
    """

    def mean_field(lat: Latency, theta, slot_var, batch):
        r = jnp.arange(1, r_max + 1, dtype=theta.dtype)
        ta = theory.mean_attention_time(lat, theta, batch)
        tc, tf = L.t_comm(lat, r, batch, opts), L.t_ffn(lat, r, batch)
        top = jnp.maximum(jnp.maximum(tc, tf), ta) * (1 - 1e-12)
        regime = jnp.where(
            ta >= top, jnp.int32(0), jnp.where(tc >= top, jnp.int32(1), jnp.int32(2))
        )
        tput = theory.mean_field_throughput(lat, theta, r, batch, opts)
        return {"regime": regime, "tput_mean_field": tput}

    def gaussian(lat: Latency, theta, slot_var, batch):
        r = jnp.arange(1, r_max + 1, dtype=theta.dtype)
        with theory.tail_by_node():  # traced here: the CPU layout for large chunks
            tput = theory.gaussian_throughput(lat, theta, slot_var, r, batch, opts, gauss_method)
        return {"tput_gaussian": tput}

    return {"mean_field": jax.jit(jax.vmap(mean_field)), "gaussian": jax.jit(jax.vmap(gaussian))}


class DeviceMesh:
    """A 1-D mesh over the local devices; puts scenario arrays sharded along axis 0."""

    def __init__(self):
        devs = jax.local_devices()
        self.n = len(devs)
        self.mesh = Mesh(np.array(devs), ("scenarios",))
        self.sharded = NamedSharding(self.mesh, PartitionSpec("scenarios"))

    def put(self, x):
        return jax.device_put(x, self.sharded)


def _default_float():
    """The JAX default float: float64 under x64, float32 otherwise."""
    return jnp.zeros(()).dtype


def padded_index(lo: int, hi: int, padded: int) -> np.ndarray:
    """Scenario indices lo..hi-1, padded to ``padded`` entries by repeating the last one (a fixed
    chunk shape compiles once)."""
    idx = np.arange(lo, hi)
    return np.concatenate([idx, np.full(padded - (hi - lo), hi - 1)])


class ExactGroups:
    """Caches the slot-load law of the current workload and the max-law tables of the current
    (workload, B) group (scenarios are ordered workload, batch, latency, so each group is built
    once)."""

    def __init__(self, plan: SweepPlan):
        self.plan = plan
        self._slot_key = self._slot = self._tables_key = self._tables = None

    def _worker_pmf(self, wl: int, batch: int):
        spec = self.plan.spec
        if self._slot_key != wl:
            kw = {}
            if "slot_bins" in spec.exact:
                kw["max_bins"] = int(spec.exact["slot_bins"])
            w = self.plan.workloads[wl].workload
            self._slot = slot_load_pmf(w, load_offset=spec.load_offset, **kw)
            self._slot_key = wl
        return worker_load_pmf(self._slot, batch)

    def tables(self, wl: int, batch: int) -> MaxLawTables:
        key = (wl, batch)
        if key != self._tables_key:
            noise_floor = float(self.plan.spec.exact.get("noise_floor", 1e-14))
            self._tables = max_law_tables(
                self._worker_pmf(wl, batch), self.plan.spec.r_max, noise_floor
            )
            self._tables_key = key
        return self._tables


def other_stage_times(lat: Latency, r, batch, opts: ModelOptions) -> np.ndarray:
    """G(r) = combine(t_C, t_F) (docs/model.md 2) for a :class:`Latency` of [n, 1] arrays, r of
    shape [1, r_max] and B of shape [n, 1], from :mod:`afd_jax.model.latency`'s stage functions.

    The FFN time is evaluated as ``(alpha_F r) B + beta_F`` (an affine stage of slope
    ``alpha_F r`` in B), the rounding order of :func:`afd_jax.model.exact.other_stage_times` and
    of every sweep table so far; :func:`afd_jax.model.latency.t_ffn` rounds
    ``alpha_F (r B) + beta_F``, which differs in the last bit for about one entry in ten.
    """
    if L.is_affine(lat.ffn):
        t_f = L.stage_time(AffineStage(lat.alpha_ffn * r, lat.beta_ffn), batch)
    else:
        t_f = L.t_ffn(lat, r, batch)
    return L.combine(opts, L.t_comm(lat, r, batch, opts), t_f)


def exact_chunk(groups: ExactGroups, sl: slice) -> np.ndarray:
    """Exact throughput float64[n, r_max] of the scenarios in ``sl`` (docs/model.md 5).

    Stage scales (:attr:`SweepPlan.scales`) multiply affine pairs per scenario; a table stage,
    shared by the scenarios, is scaled once per distinct row of scales in the chunk."""
    p = groups.plan
    idx = np.arange(sl.start, sl.stop)
    if p.scales is None or p.tables is None:
        scales = None if p.scales is None else p.scales[idx].T[:, :, None]
        return _exact_rows(groups, idx, _chunk_latency(p, idx, scales))
    out = np.empty((idx.shape[0], p.spec.r_max), dtype=np.float64)
    rows, which = np.unique(p.scales[idx], axis=0, return_inverse=True)
    for k, row in enumerate(rows):
        sel = np.flatnonzero(which.reshape(-1) == k)
        out[sel] = _exact_rows(groups, idx[sel], _chunk_latency(p, idx[sel], row))
    return out


def _chunk_latency(p: SweepPlan, idx: np.ndarray, scales) -> Latency:
    """Scalars of scenarios ``idx`` as [n, 1] arrays, the base's tables as they are, stage
    scales (``scales``: 3 numbers or 3 [n, 1] arrays, or None) applied."""
    lat = L.make_latency([p.coeffs[idx, j][:, None] for j in range(len(LATENCY_FIELDS))], p.tables)
    if scales is None:
        return lat
    return L.scale_latency(lat, dict(zip(L.STAGES, scales, strict=True)))


def _exact_rows(groups: ExactGroups, idx: np.ndarray, lat: Latency) -> np.ndarray:
    """Exact throughput of scenarios ``idx`` (increasing) whose latency is ``lat``."""
    p = groups.plan
    r_max = p.spec.r_max
    wl, b = p.wl_index[idx], p.batch[idx]
    r = np.arange(1, r_max + 1, dtype=np.float64)[None, :]
    batch = b.astype(np.float64)[:, None]
    other = other_stage_times(lat, r, batch, p.opts)  # G(r), float64[n, r_max]
    tau = np.empty((wl.shape[0], r_max), dtype=np.float64)
    group = wl * (int(p.batch.max()) + 1) + b
    starts = np.flatnonzero(np.diff(group, prepend=-1))
    ends = np.append(starts[1:], wl.shape[0])
    for s, e in zip(starts, ends, strict=True):
        tables = groups.tables(int(wl[s]), int(b[s]))
        if L.is_affine(lat.attn):
            alpha, beta = lat.alpha_attn[s:e, 0], lat.beta_attn[s:e, 0]
            tau[s:e] = max_law_step_times(tables, alpha, beta, other[s:e], p.opts)
        else:
            w = tables.start + tables.width * np.arange(tables.n, dtype=np.float64)
            t_a = L.t_attn(lat, w, float(b[s]))
            tau[s:e] = max_law_curve_step_times(tables, t_a, other[s:e], p.opts)
    return L.throughput(lat, r, batch, tau)


def mc_chunk(plan: SweepPlan, sl: slice) -> tuple[np.ndarray, np.ndarray]:
    """Monte Carlo throughput and its standard error (delta method from the SE of E[tau]),
    one :func:`afd_jax.montecarlo.simulate.simulate` call per scenario with seed = mc.seed +
    scenario index (so results do not depend on chunking)."""
    spec = plan.spec
    kw = {k: v for k, v in spec.mc.items() if k not in DYNAMICS_KEYS}
    seed = int(kw.pop("seed", 0))
    dynamics = dynamics_options(spec.mc, "mc.")
    if dynamics is not None:
        kw.pop("kernel", None)
    vals, errs = [], []
    for i in range(sl.start, sl.stop):
        with local_devices_only():  # processes work on different scenarios
            res = simulate(
                plan.workloads[int(plan.wl_index[i])].workload,
                plan.latency(i, float),
                int(plan.batch[i]),
                spec.r_max,
                seed=seed + i,
                opts=plan.opts,
                dynamics=dynamics,
                **kw,
            )
        tput = np.asarray(res.throughput, dtype=np.float64)
        vals.append(tput)
        errs.append(tput * np.asarray(res.se_tau) / np.asarray(res.mean_tau))
    return np.stack(vals), np.stack(errs)


class Evaluator:
    """Evaluates chunks of a plan (:meth:`evaluate`); caches the compiled kernels and the exact
    groups, and adds the wall time of each method to :attr:`seconds`."""

    def __init__(self, plan: SweepPlan, chunk_size: int):
        self.plan = plan
        self.spec = plan.spec
        self.seconds = dict.fromkeys(self.spec.methods, 0.0)
        self.dev = DeviceMesh()
        self.padded = -(-chunk_size // self.dev.n) * self.dev.n  # fixed shape: one compile
        self.fns = analytic_kernels(
            plan.opts, self.spec.r_max, self.spec.gaussian.get("method", "tail")
        )
        self._theta = np.array([e.theta for e in plan.workloads], dtype=np.float64)
        self._var = np.array([e.slot_var for e in plan.workloads], dtype=np.float64)
        self.groups = ExactGroups(plan)

    def evaluate(self, lo: int, hi: int) -> dict:
        """Column arrays [hi - lo, r_max] of scenarios lo..hi-1: regime and tput_<method>."""
        sl = slice(lo, hi)
        res = self._analytic(sl)
        if "exact" in self.spec.methods:
            t0 = time.perf_counter()
            res["tput_exact"] = exact_chunk(self.groups, sl)
            self.seconds["exact"] += time.perf_counter() - t0
        if "mc" in self.spec.methods:
            t0 = time.perf_counter()
            res["tput_mc"], res["tput_mc_stderr"] = mc_chunk(self.plan, sl)
            self.seconds["mc"] += time.perf_counter() - t0
        if "optimize" in self.spec.methods:
            res["r_continuous_optimize"] = self._optimize(sl)
        return res

    def _analytic(self, sl: slice) -> dict:
        p, dt = self.plan, _default_float()
        n = sl.stop - sl.start
        idx = padded_index(sl.start, sl.stop, self.padded)
        put = self.dev.put
        lat = p.latency(idx, lambda a: put(jnp.asarray(a, dt)))
        args = (
            lat,
            put(jnp.asarray(self._theta[p.wl_index[idx]], dt)),
            put(jnp.asarray(self._var[p.wl_index[idx]], dt)),
            put(jnp.asarray(p.batch[idx], dt)),
        )
        out = {}
        for m in ("mean_field", "gaussian"):
            if m == "gaussian" and m not in self.spec.methods:
                continue
            t0 = time.perf_counter()
            res = jax.device_get(self.fns[m](*args))
            if m in self.seconds:
                self.seconds[m] += time.perf_counter() - t0
            out.update({k: np.asarray(v)[:n] for k, v in res.items()})
        return out

    def _optimize(self, sl: slice) -> np.ndarray:
        """Continuous optimum r_c of the smoothed Gaussian objective
        (:mod:`afd_jax.studies.optimize`), vmapped over the chunk (padded to a fixed shape,
        sharded like the analytic kernels)."""
        p = self.plan
        n = sl.stop - sl.start
        idx = padded_index(sl.start, sl.stop, self.padded)
        t0 = time.perf_counter()
        scen = make_scenario(
            p.latency(idx),
            self._theta[p.wl_index[idx]],
            self._var[p.wl_index[idx]],
            p.batch[idx].astype(np.float64),
            r_max=float(self.spec.r_max),
        )
        scen = jax.tree_util.tree_map(lambda x: self.dev.put(jnp.asarray(x)), scen)
        sol = solve_continuous_batched(scen, opts=p.opts)
        r_c = np.asarray(jax.device_get(sol.r), dtype=np.float64)[:n]
        self.seconds["optimize"] += time.perf_counter() - t0
        return r_c
