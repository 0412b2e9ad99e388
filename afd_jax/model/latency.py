"""The one home of the stage-latency model: stage times, step time, idle and throughput
(docs/model.md 2, 3).

Every other module (mean field, Gaussian, exact, Monte Carlo, optimiser, sweep, reproduction)
calls these functions instead of writing the formulas again. Each function works on Python
floats, NumPy arrays (float64 references stay NumPy, no JAX dispatch) and JAX arrays or tracers
alike (differentiable, vmappable, jittable): only arithmetic and :func:`maximum` are used.

Stage latencies are *stage objects* (:mod:`afd_jax.model.stages`): an :class:`AffineStage`
``t(x) = alpha * x + beta`` or a measured table (:class:`TableStage`, PCHIP-interpolated; the
Attention stage as an :class:`AttnTable`, one table per batch B). :func:`stage_time` is the
single place that evaluates a stage; affine stages keep the affine formulas bit for bit.

Coefficients travel as a :class:`Latency` NamedTuple (a pytree: differentiable, vmappable); the
structural switches as a hashable :class:`ModelOptions` (static under ``jit``). Time unit:
microseconds; throughput in tokens/s.

Equations (docs/model.md 2-3), with X = r*B (``comm_scaling="aggregate"``) or B (``"per_worker"``)::

    t_A(T) = alpha_A T + beta_A          t_F(r) = alpha_F r B + beta_F
    t_C(r) = alpha_C X + beta_C          G(r) = max(t_C, t_F)  (pipelined) | t_C + t_F  (serial)
    tau    = max(max_j t_A(T_j), G(r))   (pipelined) | max_j t_A(T_j) + G(r)  (serial)
    throughput = 1e6 r B / ((r c_A + c_F) E[tau])     tokens/s per instance (per unit cost)

>>> lat = Latency(0.01, 100.0, 0.5, 443.0, 0.5, 100.0)
>>> float(other_stages(lat, 4, 64, ModelOptions(comm_scaling="per_worker")))
571.0
"""

from __future__ import annotations

import sys
from functools import partial
from typing import NamedTuple

import numpy as np

from afd_jax.model.stages import (
    AffineStage,
    AttnTable,
    TableStage,
    eval_stage,
    is_affine,
    scale_stage,
    slope_stage,
)

COMM_SCALINGS = ("aggregate", "per_worker")
OVERLAPS = ("pipelined", "serial")
COEFFICIENTS = ("alpha_attn", "beta_attn", "alpha_ffn", "beta_ffn", "alpha_comm", "beta_comm")
STAGES = ("attn", "ffn", "comm")
SCALAR_FIELDS = COEFFICIENTS + ("cost_attn", "cost_ffn")
"""The scalar fields of :class:`Latency` (every field but ``tables``)."""
AB = ("alpha", "beta")


class StageTables(NamedTuple):
    """The measured (table) stages of a :class:`Latency`; ``None`` where a stage is affine."""

    attn: AttnTable | None = None
    ffn: TableStage | None = None
    comm: TableStage | None = None


class Latency(NamedTuple):
    """Stage coefficients (us per token, us) and instance costs: every stage affine.

    t_A(T) = alpha_attn*T + beta_attn;  t_F(r) = alpha_ffn*r*B + beta_ffn;
    t_C(r) = alpha_comm*X + beta_comm with X = r*B ("aggregate") or B ("per_worker").
    The stage objects are :attr:`attn`, :attr:`ffn` and :attr:`comm` (evaluate them with
    :func:`stage_time` only); :attr:`tables` is None (see :class:`TableLatency`).
    """

    alpha_attn: float
    beta_attn: float
    alpha_ffn: float
    beta_ffn: float
    alpha_comm: float
    beta_comm: float
    cost_attn: float = 1.0
    cost_ffn: float = 1.0

    @property
    def tables(self) -> None:
        return None


TableLatency = NamedTuple(
    "TableLatency", [(name, float) for name in SCALAR_FIELDS] + [("tables", StageTables)]
)
TableLatency.__doc__ = """A :class:`Latency` with measured stages: the same eight scalars plus
``tables`` (:class:`StageTables`). A stage given in ``tables`` replaces its affine pair, which
is then NaN (so a stray direct read shows). Every model function takes either type."""


def _stage(lat, name: str):
    """Stage object ``name`` of a latency: its table, else ``AffineStage(alpha, beta)``."""
    table = None if lat.tables is None else getattr(lat.tables, name)
    if table is not None:
        return table
    return AffineStage(getattr(lat, f"alpha_{name}"), getattr(lat, f"beta_{name}"))


for _cls in (Latency, TableLatency):
    for _name in STAGES:
        setattr(_cls, _name, property(partial(_stage, name=_name)))


def make_latency(scalars, tables: StageTables | None = None):
    """:class:`Latency` of the eight scalars, or :class:`TableLatency` when ``tables`` is given."""
    if tables is None:
        return Latency(*scalars)
    return TableLatency(*scalars, tables=tables)


def table_latency(
    attn=None, ffn=None, comm=None, *, affine: Latency | None = None, costs=(1.0, 1.0)
) -> TableLatency:
    """A :class:`TableLatency` with the given table stages; the other stages keep the affine
    pairs of ``affine`` (NaN pairs where a table replaces them, or where ``affine`` is None)."""
    base = affine if affine is not None else Latency(*(float("nan"),) * 6, *costs)
    tables = StageTables(attn, ffn, comm)
    nan = float("nan")
    repl = {f"{k}_{s}": nan for s in STAGES if getattr(tables, s) is not None for k in AB}
    return make_latency(tuple(base[: len(SCALAR_FIELDS)]), tables)._replace(**repl)


def host_latency(lat):
    """The latency with every coefficient a Python float and every table float64 NumPy (NumPy
    arithmetic, no JAX dispatch); same type as ``lat``."""
    tables = lat.tables
    if tables is not None:
        import jax  # tables are JAX pytrees (afd_jax.model.stages imports JAX)

        tables = jax.tree_util.tree_map(lambda a: np.asarray(a, dtype=np.float64), tables)
    return make_latency([float(v) for v in lat[: len(SCALAR_FIELDS)]], tables)


def scale_latency(lat, scales: dict):
    """``lat`` with stage times multiplied, ``scales`` = {stage: s} (s > 0; stages not named
    keep their times): the one home of stage-time scaling (the sweep's ``attn_scale``,
    ``ffn_scale``, ``comm_scale``). An affine stage becomes ``(s alpha, s beta)``, a table
    :func:`afd_jax.model.stages.scale_stage`; same type as ``lat``."""
    pairs, tables = {}, lat.tables
    for name, s in scales.items():
        scaled = scale_stage(getattr(lat, name), s)
        if is_affine(scaled):
            pairs.update({f"{k}_{name}": v for k, v in zip(AB, scaled, strict=True)})
        else:
            tables = tables._replace(**{name: scaled})
    lat = lat._replace(**pairs)
    return lat if tables is None else lat._replace(tables=tables)


def has_tables(lat) -> bool:
    """True when any stage of ``lat`` is a measured table."""
    return lat.tables is not None and any(t is not None for t in lat.tables)


class ModelOptions(NamedTuple):
    """Static switches of the model (hashable)."""

    comm_scaling: str = "aggregate"
    overlap: str = "pipelined"
    load_offset: int = 0


DEFAULT_OPTIONS = ModelOptions()


def _is_jax(*xs) -> bool:
    """Whether any input is a JAX array (JAX is not imported for that: without it loaded there
    are none, so NumPy-only callers such as ``afd-jax theta`` start without JAX)."""
    jax = sys.modules.get("jax")
    return jax is not None and any(isinstance(x, jax.Array) for x in xs)


def _jnp():
    import jax.numpy as jnp

    return jnp


def maximum(a, b):
    """Elementwise max: NumPy for NumPy/Python inputs, ``jnp`` when either is a JAX array."""
    return _jnp().maximum(a, b) if _is_jax(a, b) else np.maximum(a, b)


def stage_time(stage, tokens, *factors, batch=None):
    """Time (us) of one stage (the only place a stage is evaluated) for the token count
    ``tokens * factors[0] * ...``. Affine: the factors are applied to ``alpha`` left to right
    (``alpha * r * B``, not ``alpha * (r * B)``), the float rounding every caller had before.
    Table: the PCHIP interpolation of :func:`afd_jax.model.stages.eval_stage` (``batch`` picks
    the Attention table)."""
    if not is_affine(stage):
        for factor in factors:
            tokens = tokens * factor
        return eval_stage(stage, tokens, batch)
    scaled = stage.alpha * tokens
    for factor in factors:
        scaled = scaled * factor
    return scaled + stage.beta


def stage_slope(stage, tokens, batch=None):
    """dt/dx of a stage at the token count x (us per token): ``alpha`` when affine."""
    return slope_stage(stage, tokens, batch)


def t_attn(lat: Latency, load, batch=None):
    """Attention time for a worker load T (tokens): ``alpha_A T + beta_A`` (a table: the
    interpolated time of the tables for ``batch``)."""
    return stage_time(lat.attn, load, batch=batch)


def t_ffn(lat: Latency, r, batch):
    """FFN time for r workers of batch B (aggregated r*B tokens): ``alpha_F r B + beta_F``."""
    return stage_time(lat.ffn, r, batch)


def comm_tokens(r, batch, opts: ModelOptions = DEFAULT_OPTIONS):
    """Tokens X on the A<->F link per step: r*B (aggregate) or B (per_worker), shaped like r."""
    if opts.comm_scaling == "aggregate":
        return r * batch
    ones = _jnp().ones_like(r * 1.0) if _is_jax(r) else np.ones_like(np.asarray(r) * 1.0)
    return batch * ones


def t_comm(lat: Latency, r, batch, opts: ModelOptions = DEFAULT_OPTIONS):
    """Communication time ``alpha_C X + beta_C``, X = r*B (aggregate) or B (per_worker)."""
    return stage_time(lat.comm, comm_tokens(r, batch, opts))


def combine(opts: ModelOptions, a, b):
    """How two stage times compose: max (pipelined, overlapped) or sum (serial)."""
    return maximum(a, b) if opts.overlap == "pipelined" else a + b


def other_stages(lat: Latency, r, batch, opts: ModelOptions = DEFAULT_OPTIONS):
    """G(r): the non-Attention part of the step, max(t_C, t_F) (pipelined) or t_C + t_F."""
    return combine(opts, t_comm(lat, r, batch, opts), t_ffn(lat, r, batch))


def step_time(lat: Latency, attn_time, r, batch, opts: ModelOptions = DEFAULT_OPTIONS):
    """tau given the barrier Attention time ``max_j t_A(T_j)``: combine(attn, G(r))."""
    return combine(opts, attn_time, other_stages(lat, r, batch, opts))


def step_time_from_other(attn_time, other, opts: ModelOptions = DEFAULT_OPTIONS):
    """tau from the barrier Attention time and a precomputed G(r) (vectorised callers)."""
    return combine(opts, attn_time, other)


def instance_cost(lat: Latency, r):
    """Cost of an rA-1F bundle: r*c_A + c_F (= r + 1 with unit costs)."""
    return r * lat.cost_attn + lat.cost_ffn


def throughput_unit(lat: Latency) -> str:
    """The unit of :func:`throughput`: per instance with unit costs, else per unit cost."""
    unit = float(lat.cost_attn) == 1.0 and float(lat.cost_ffn) == 1.0
    return "tokens/s per instance" if unit else "tokens/s per unit cost"


def throughput(lat: Latency, r, batch, mean_step_time):
    """Throughput per instance (per unit cost) in tokens/s: 1e6 r B / ((r c_A + c_F) E[tau])."""
    return 1e6 * r * batch / (instance_cost(lat, r) * mean_step_time)


def token_rate(lat: Latency, r, tokens, elapsed):
    """Tokens/s per instance (per unit cost) from a token count over an elapsed time (us):
    1e6 tokens / ((r c_A + c_F) elapsed) (finite-pool runs, where slots may be empty)."""
    return 1e6 * tokens / (instance_cost(lat, r) * elapsed)


def ffn_idle(lat: Latency, tau, r, batch):
    """FFN idle time in a step of length tau: ``tau - t_F(r)``."""
    return tau - t_ffn(lat, r, batch)


def bundle_idle_fraction(attn_idle, ffn_idle_time, r, tau):
    """Bundle idle fraction ``(sum_j (tau - t_A,j) + (tau - t_F)) / ((r + 1) tau)``, given the
    summed Attention idle ``sum_j (tau - t_A,j)`` and the FFN idle ``tau - t_F`` (sums over steps
    allowed: pass the summed tau)."""
    return (attn_idle + ffn_idle_time) / ((r + 1) * tau)


def microbatch_step_time(attn, comm, ffn):
    """Step time of m micro-batches in a ping-pong schedule (docs/model.md 12): a flow shop
    Attention -> communication -> FFN, each stage taking the micro-batches in order.
    ``attn``: sequence of the m barrier Attention times A_i (arrays broadcasting together);
    ``comm``, ``ffn``: the stage times of one micro-batch, t_C(r, B/m) and t_F(r, B/m).
    ``a_i = a_{i-1} + A_i``, ``c_i = max(c_{i-1}, a_i) + comm``, ``f_i = max(f_{i-1}, c_i) + ffn``,
    tau = f_m; m = 1 gives the serial step ``A + t_C + t_F``."""
    a = c = f = 0.0
    for attn_i in attn:
        a = a + attn_i
        c = maximum(c, a) + comm
        f = maximum(f, c) + ffn
    return f
