"""Recommend the A/F ratio r: the library verb behind ``afd-jax provision`` (docs/provisioning.md).

Three predictions of the throughput per instance for r = 1..r_max (docs/model.md 5), side by
side:

* mean field: ``tau_bar(r) = step_time(t_A(B theta), r)``, its closed-form continuous optimum r*
  and the binding regime (:func:`afd_jax.model.theory.mean_field_optimum`);
* Gaussian barrier: worker loads ~ N(B theta, B v), E[tau] by the tail integral
  (:func:`afd_jax.model.theory.gaussian_step_time`), its continuous optimum by a zoomed grid;
* exact steady state: pi convolved B times by FFT, the barrier max's law ``F_B^r``
  (:func:`afd_jax.model.exact.exact_step_times`).

Every throughput is :func:`afd_jax.model.latency.throughput` of the method's E[tau(r)]. The
result is a :class:`ProvisionResult`; the CLI prints its :meth:`ProvisionResult.to_json` or a
table of it. Enable float64 (``jax.config.update("jax_enable_x64", True)``, as the CLI does) for
the CLI's numbers; the library never flips that switch itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from afd_jax.errors import positive_int
from afd_jax.memory import CURVE_ROW_BYTES, require
from afd_jax.model.exact import (
    binning_error_bound,
    exact_step_times,
    host_latency,
    require_worker_load,
    worker_load_pmf,
)
from afd_jax.model.hardware import Hardware, feasible_ratios, user_metrics
from afd_jax.model.latency import (
    Latency,
    ModelOptions,
    has_tables,
    throughput,
    throughput_unit,
)
from afd_jax.model.latency_io import (
    latency_summary,
    resolve_latency,
    validate_latency,
    validate_options,
)
from afd_jax.model.theory import (
    Candidate,
    gaussian_optimum_continuous,
    gaussian_step_time_jit,
    gaussian_throughput_jit,
    mean_field_optimum,
    mean_field_step_time,
    mean_field_step_time_jit,
    mean_field_throughput,
    mean_field_throughput_jit,
    regime_segments,
)
from afd_jax.workload.slotload import SlotLoadPMF, slot_load_pmf
from afd_jax.workload.specs import resolve_workload
from afd_jax.workload.statistics import workload_stats

__all__ = ["METHODS", "ProvisionResult", "best_allowed_r", "hardware_json", "provision"]

METHODS = ("mean_field", "gaussian", "exact")


@dataclass(frozen=True)
class ProvisionResult:
    """Outcome of :func:`provision` (host NumPy float64 and Python scalars).

    r: ``1.0 .. r_max`` (float64, shape (r_max,)); throughput / step_time: {method: array of
    shape (r_max,)} in tokens/s per instance (per unit cost) and us, for every method of
    :data:`METHODS`; r_best: {method: best integer r}; r_star: continuous optima {"mean_field",
    "gaussian"}; regime: the mean-field binding stage ("attention", "communication", "ffn");
    candidates: the mean-field candidate points; regimes: [(r_from, r_to, regime)] over
    [1, r_max]; exact_lattice: sizes of the slot and worker lattices; timings_s: seconds per
    method.
    """

    workload: str
    batch: int
    r_max: int
    theta: float
    slot_var: float
    latency: Latency
    opts: ModelOptions
    latency_source: str
    r: np.ndarray
    throughput: dict
    step_time: dict
    r_best: dict
    r_star: dict
    regime: str
    candidates: tuple[Candidate, ...]
    regimes: tuple[tuple[float, float, str], ...]
    exact_lattice: dict
    timings_s: dict
    r_values: tuple[int, ...] | None = None
    hardware: Hardware | None = None

    @property
    def slot_std(self) -> float:
        """Standard deviation of a slot's load (tokens)."""
        return float(np.sqrt(self.slot_var))

    @property
    def throughput_unit(self) -> str:
        return throughput_unit(self.latency)

    def to_json(self) -> dict:
        """The ``afd-jax provision --json`` object (fresh dicts: the caller may add keys)."""
        lat, thr = self.latency, self.throughput
        exact = thr["exact"]
        return {
            "workload": self.workload,
            "batch": int(self.batch),
            "r_max": int(self.r_max),
            "theta": self.theta,
            "slot_std": self.slot_std,
            "load_offset": self.opts.load_offset,
            "latency_source": self.latency_source,
            "latency": {
                **latency_summary(lat),
                "comm_scaling": self.opts.comm_scaling,
                "overlap": self.opts.overlap,
            },
            "time_unit": "us",
            "regime": self.regime,
            "r_star": dict(self.r_star),
            "r_best": dict(self.r_best),
            "throughput_at_best": {m: float(thr[m][self.r_best[m] - 1]) for m in METHODS},
            # what each method's choice achieves under the exact steady state
            "exact_throughput_of_choice": {k: float(exact[v - 1]) for k, v in self.r_best.items()},
            "candidates": [
                {"name": c.name, "r": c.r, "throughput": c.throughput} for c in self.candidates
            ],
            "regimes": [{"from": a, "to": b, "regime": name} for a, b, name in self.regimes],
            "curve": [
                {"r": int(r), **{m: float(thr[m][i]) for m in METHODS}}
                for i, r in enumerate(self.r)
            ],
            "throughput_unit": self.throughput_unit,
            "exact_lattice": dict(self.exact_lattice),
            "timings_s": dict(self.timings_s),
            **self._hardware_json(),
        }

    def _hardware_json(self) -> dict:
        """``r_values`` when r is restricted; ``hardware`` and ``user_terms`` (the exact choice
        in tokens/s per GPU, tokens per USD, USD per million tokens, J per token, and the
        exact best r per GPU and per USD, which differ from the choice when the latency's
        costs are not the GPU counts or prices) when the GPU counts are known."""
        out = {}
        if self.r_values is not None:
            out["r_values"] = [int(v) for v in self.r_values]
        hw = self.hardware
        if hw is not None and hw.has_gpus:
            r = self.r_best["exact"]
            tau = self.step_time["exact"]
            out["hardware"] = hardware_json(hw)
            metrics = user_metrics(self.latency, hw, r, self.batch, tau[r - 1])
            curves = user_metrics(self.latency, hw, self.r, self.batch, tau)
            best = {}
            for key, unit in (
                ("per_gpu", "tokens_per_s_per_gpu"),
                ("per_dollar", "tokens_per_dollar"),
            ):
                if curves[unit] is not None:
                    rb = best_allowed_r(curves[unit], self.r_values)
                    best[f"best_r_{key}"] = rb
                    best[f"best_{unit}"] = float(curves[unit][rb - 1])
            out["user_terms"] = {"r": r, "batch": int(self.batch), **metrics, **best}
        return out


def hardware_json(hw: Hardware) -> dict:
    """The hardware echo of the JSON outputs: GPU counts, systems and the resolved per-GPU
    price (USD/h), power (W) and memory (GiB)."""
    return {
        "attn_gpus": hw.attn_gpus,
        "ffn_gpus": hw.ffn_gpus,
        "attn_system": hw.attn_system,
        "ffn_system": hw.ffn_system,
        "price_attn_usd_per_gpu_hour": hw.attn_price,
        "price_ffn_usd_per_gpu_hour": hw.ffn_price,
        "power_attn_w": hw.attn_power,
        "power_ffn_w": hw.ffn_power,
        "memory_attn_gib": hw.attn_memory_gib,
    }


def best_allowed_r(values: np.ndarray, r_values) -> int:
    """The r (1-based index into ``values``) with the largest value, among ``r_values`` (all r
    when None); ties go to the smallest r."""
    if r_values is None:
        return int(np.argmax(values)) + 1
    allowed = np.asarray(r_values, dtype=np.int64)
    return int(allowed[int(np.argmax(np.asarray(values)[allowed - 1]))])


def _resolve_inputs(workload, latency, opts):
    """(workload object, its name, Latency, ModelOptions, latency source) from objects or specs."""
    name = workload if isinstance(workload, str) else ""
    if isinstance(workload, str):
        workload = resolve_workload(workload)
    source = latency if isinstance(latency, str) else ""
    if isinstance(latency, str):
        latency, file_opts = resolve_latency(latency)
        opts = file_opts if opts is None else opts
    return workload, name, latency, opts if opts is not None else ModelOptions(), source


def _mean_field(lat, theta, rs, batch, opts, r_max):
    opt = mean_field_optimum(lat, theta, batch, opts, r_max)
    thr_fn, tau_fn = mean_field_throughput, mean_field_step_time
    if has_tables(lat):  # many small ops: compiled (affine stays eager, bit for bit)
        thr_fn, tau_fn = mean_field_throughput_jit, mean_field_step_time_jit
    thr = np.asarray(thr_fn(lat, theta, jnp.asarray(rs), batch, opts))
    tau = np.asarray(tau_fn(lat, theta, jnp.asarray(rs), batch, opts))
    return opt, thr, tau


def _gaussian(lat, theta, slot_var, rs, batch, opts, r_max):
    r = jnp.asarray(rs)
    thr = np.asarray(gaussian_throughput_jit(lat, theta, slot_var, r, batch, opts, "tail"))
    tau = np.asarray(gaussian_step_time_jit(lat, theta, slot_var, r, batch, opts, "tail"))
    r_star = gaussian_optimum_continuous(lat, theta, slot_var, batch, opts, r_max)
    return thr, tau, r_star


def _exact(slot: SlotLoadPMF, lat, rs, batch, opts, r_max) -> tuple[np.ndarray, np.ndarray, dict]:
    worker = worker_load_pmf(slot, batch)
    tau = exact_step_times(slot, lat, batch, r_max, opts, worker_pmf=worker)
    thr = throughput(host_latency(lat), rs, float(batch), tau)
    lattice = {
        "slot_bins": int(slot.pmf.shape[0]),
        "width": int(slot.width),
        "worker_points": int(worker.pmf.shape[0]),
        # relative bound on the lattice's error in the exact throughput, worst r
        "max_rel_error": float(np.max(binning_error_bound(lat, batch, slot.width, tau))),
    }
    return thr, tau, lattice


def provision(
    workload,
    latency,
    batch: int,
    *,
    r_max: int = 64,
    opts: ModelOptions | None = None,
    slot_bins: int = 4096,
    workload_name: str | None = None,
    latency_source: str | None = None,
    r_values=None,
    hardware: Hardware | None = None,
) -> ProvisionResult:
    """Throughput per instance vs r = 1..r_max by mean field, Gaussian barrier and exact steady
    state; the best integer r of each, the continuous optima and the binding regime.

    workload: a workload object or a spec (trace path, preset, parametric spec: docs/workloads.md);
    latency: a :class:`~afd_jax.model.latency.Latency` or a preset name / TOML path (its
    ``comm_scaling``/``overlap`` are used unless ``opts`` is given); batch: B, slots per
    Attention instance; slot_bins: lattice points of the slot-load law for the exact method.
    workload_name / latency_source: labels for the output (default: the specs given);
    r_values: the feasible r (integers in 1..r_max; None = all): every method's best integer r
    is chosen among them (the continuous optima are not); hardware: GPU counts, prices and power
    (:class:`~afd_jax.model.hardware.Hardware`) for the outputs in user terms.
    Raises :class:`~afd_jax.errors.InputError` for bad input.

    >>> import jax; jax.config.update("jax_enable_x64", True)  # float64, as the CLI
    >>> from afd_jax import provision
    >>> res = provision("paper-v1", "paper-v1", 256, r_max=16)
    >>> res.regime, round(res.r_star["mean_field"], 3), res.r_best["exact"]
    ('attention', 9.3, 10)
    >>> res.throughput["exact"].shape, res.to_json()["throughput_unit"]
    ((16,), 'tokens/s per instance')
    """
    w, name, lat, opts, source = _resolve_inputs(workload, latency, opts)
    batch, r_max = positive_int("batch", batch), positive_int("r_max", r_max)
    require(CURVE_ROW_BYTES * r_max, f"the r = 1..{r_max} curve", "lower --r-max")
    validate_latency(lat, batch=batch)
    validate_options(opts)
    allowed = None if r_values is None else feasible_ratios(list(r_values), r_max=r_max)
    slot = slot_load_pmf(w, load_offset=opts.load_offset, max_bins=slot_bins)
    require_worker_load(slot.pmf.shape[0], batch)  # the FFT, before any other work
    stats = workload_stats(w)
    theta = float(stats.theta) + opts.load_offset
    slot_var = float(stats.slot_var)
    rs = np.arange(1, r_max + 1, dtype=np.float64)
    timings = {}

    t0 = time.perf_counter()
    mf_opt, mf_thr, mf_tau = _mean_field(lat, theta, rs, batch, opts, r_max)
    timings["mean_field_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    g_thr, g_tau, g_star = _gaussian(lat, theta, slot_var, rs, batch, opts, r_max)
    timings["gaussian_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ex_thr, ex_tau, lattice = _exact(slot, lat, rs, batch, opts, r_max)
    timings["exact_s"] = time.perf_counter() - t0

    return ProvisionResult(
        workload=name if workload_name is None else workload_name,
        batch=int(batch),
        r_max=int(r_max),
        theta=theta,
        slot_var=slot_var,
        latency=lat,
        opts=opts,
        latency_source=source if latency_source is None else latency_source,
        r=rs,
        throughput={"mean_field": mf_thr, "gaussian": g_thr, "exact": ex_thr},
        step_time={"mean_field": mf_tau, "gaussian": g_tau, "exact": ex_tau},
        r_best={
            "mean_field": int(mf_opt.r_best)
            if allowed is None
            else best_allowed_r(mf_thr, allowed),
            "gaussian": best_allowed_r(g_thr, allowed),
            "exact": best_allowed_r(ex_thr, allowed),
        },
        r_star={"mean_field": float(mf_opt.r_continuous), "gaussian": float(g_star)},
        regime=mf_opt.regime,
        candidates=tuple(mf_opt.candidates),
        regimes=tuple(regime_segments(lat, theta, batch, opts, r_max)),
        exact_lattice=lattice,
        timings_s=timings,
        r_values=None if allowed is None else tuple(int(v) for v in allowed),
        hardware=hardware,
    )
