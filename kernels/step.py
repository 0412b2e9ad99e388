"""Step-time arithmetic shared by the Monte Carlo kernels (MODEL.md 2, 3).

The driver precomputes the non-Attention stage time per r; the kernels only need the Attention
coefficients to turn worker loads into tau. No imports from afd_jax.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class StepModel(NamedTuple):
    """alpha_attn, beta_attn: scalars (float32). other: float32[r_max], the non-Attention stage
    time for r = 1..r_max (max(t_C, t_F) when pipelined, t_C + t_F when serial). t_ffn:
    float32[r_max], the FFN time (for its idle time)."""

    alpha_attn: jax.Array
    beta_attn: jax.Array
    other: jax.Array
    t_ffn: jax.Array


def step_times(max_attn_time, other, serial: bool):
    """tau from the barrier Attention time and the other stages (broadcasting)."""
    return max_attn_time + other if serial else jnp.maximum(max_attn_time, other)


def bundle_step_stats(worker_loads, model: StepModel, serial: bool):
    """Per-r step statistics from the worker loads of one step.

    worker_loads: int32[..., r_max] (loads of workers 1..r_max). For every r = 1..r_max the
    bundle is made of the first r workers (common random numbers across r). Returns a dict of
    float32[..., r_max]: ``tau``, ``attn_idle`` (sum over j <= r of tau - t_A,j), ``barrier_wait``
    (sum over j <= r of max_i t_A,i - t_A,j), ``ffn_idle`` (tau - t_F), ``max_load``.
    """
    loads = worker_loads.astype(jnp.float32)
    lead = (1,) * (loads.ndim - 1)  # explicit broadcasting (rank promotion may be "raise")
    max_load = jax.lax.cummax(loads, axis=loads.ndim - 1)
    sum_load = jnp.cumsum(loads, axis=-1)
    r = jnp.arange(1, loads.shape[-1] + 1, dtype=jnp.float32).reshape(lead + (-1,))
    max_ta = model.alpha_attn * max_load + model.beta_attn
    sum_ta = model.alpha_attn * sum_load + model.beta_attn * r
    tau = step_times(max_ta, model.other.reshape(lead + (-1,)), serial)
    return {
        "tau": tau,
        "attn_idle": r * tau - sum_ta,
        "barrier_wait": r * max_ta - sum_ta,
        "ffn_idle": tau - model.t_ffn.reshape(lead + (-1,)),
        "max_load": max_load,
    }
