"""Linear stage-latency model (MODEL.md 2, 3).

Coefficients travel as a :class:`Latency` NamedTuple (a pytree: differentiable, vmappable);
the structural switches as a hashable :class:`ModelOptions` (static under ``jit``).
Time unit: microseconds.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

COMM_SCALINGS = ("aggregate", "per_worker")
OVERLAPS = ("pipelined", "serial")
COEFFICIENTS = ("alpha_attn", "beta_attn", "alpha_ffn", "beta_ffn", "alpha_comm", "beta_comm")


class Latency(NamedTuple):
    """Stage coefficients (us per token, us) and instance costs.

    t_A(T) = alpha_attn*T + beta_attn;  t_F(r) = alpha_ffn*r*B + beta_ffn;
    t_C(r) = alpha_comm*X + beta_comm with X = r*B ("aggregate") or B ("per_worker").
    """

    alpha_attn: float
    beta_attn: float
    alpha_ffn: float
    beta_ffn: float
    alpha_comm: float
    beta_comm: float
    cost_attn: float = 1.0
    cost_ffn: float = 1.0


class ModelOptions(NamedTuple):
    """Static switches of the model (hashable)."""

    comm_scaling: str = "aggregate"
    overlap: str = "pipelined"
    load_offset: int = 0


DEFAULT_OPTIONS = ModelOptions()


def t_attn(lat: Latency, load):
    """Attention time for a worker load T (tokens)."""
    return lat.alpha_attn * load + lat.beta_attn


def t_ffn(lat: Latency, r, batch):
    """FFN time for r workers of batch B."""
    return lat.alpha_ffn * r * batch + lat.beta_ffn


def t_comm(lat: Latency, r, batch, opts: ModelOptions = DEFAULT_OPTIONS):
    """Communication time: X = r*B (aggregate) or B (per_worker)."""
    x = r * batch if opts.comm_scaling == "aggregate" else batch * jnp.ones_like(r * 1.0)
    return lat.alpha_comm * x + lat.beta_comm


def other_stages(lat: Latency, r, batch, opts: ModelOptions = DEFAULT_OPTIONS):
    """The non-Attention part of the step: max(t_C, t_F) (pipelined) or t_C + t_F (serial)."""
    tc, tf = t_comm(lat, r, batch, opts), t_ffn(lat, r, batch)
    return jnp.maximum(tc, tf) if opts.overlap == "pipelined" else tc + tf


def step_time(lat: Latency, attn_time, r, batch, opts: ModelOptions = DEFAULT_OPTIONS):
    """tau given the barrier Attention time max_j t_A(T_j)."""
    g = other_stages(lat, r, batch, opts)
    return jnp.maximum(attn_time, g) if opts.overlap == "pipelined" else attn_time + g


def instance_cost(lat: Latency, r):
    """Cost of an rA-1F bundle: r*c_A + c_F (= r + 1 with unit costs)."""
    return r * lat.cost_attn + lat.cost_ffn


def throughput(lat: Latency, r, batch, mean_step_time):
    """Throughput per instance (per unit cost) in tokens/s: r B / ((r c_A + c_F) E[tau]) * 1e6."""
    return 1e6 * r * batch / (instance_cost(lat, r) * mean_step_time)
