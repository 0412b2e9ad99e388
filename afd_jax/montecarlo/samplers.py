"""Host workload -> JAX sampler pytree.

``make_sampler(w, load_offset=0)`` returns a pytree accepted by
``afd_jax.kernels.sample_requests`` / ``sample_stationary`` / ``sample_slot_load``:

* :class:`~afd_jax.workload.containers.TraceWorkload` -> ``TableSampler`` over the rows
  (``prompt + load_offset``, ``decode``); rows with D = 0 get zero weight.
* :class:`~afd_jax.workload.containers.ParametricWorkload` ->
:class:`~afd_jax.kernels.copula.CopulaSampler`:
  padded inverse-CDF tables of every component (float32 CDFs, int32 values, prompt values
  shifted by ``load_offset``), mixture weights w_k and length-biased weights w_k E_k[D].

``load_offset`` is added to the prompt so that ``prompt + age`` is the slot load of
MODEL.md 1 (``P + k + load_offset``). Built with NumPy in float64, stored in float32/int32.

>>> from afd_jax.workload import families
>>> s = make_sampler(families.independent(families.geometric(10, min=0), families.geometric(5)))
>>> type(s).__name__
'CopulaSampler'
"""

from __future__ import annotations

import numpy as np

from afd_jax.errors import InputError
from afd_jax.kernels.copula import CopulaSampler
from afd_jax.kernels.sampling import TableSampler, table_sampler
from afd_jax.workload.containers import ParametricWorkload, TraceWorkload
from afd_jax.workload.families import gaussian_corr

__all__ = ["make_sampler"]

_INT32_MAX = np.iinfo(np.int32).max


def _cdf32(pmf: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(np.asarray(pmf, np.float64))
    cdf /= cdf[-1]
    cdf = cdf.astype(np.float32)
    cdf[-1] = 1.0
    return cdf


def _pad(rows: list[np.ndarray], fill_last: bool, pad_value, dtype) -> np.ndarray:
    n = max(r.size for r in rows)
    out = np.empty((len(rows), n), dtype)
    for i, r in enumerate(rows):
        out[i, : r.size] = r
        out[i, r.size :] = r[-1] if fill_last else pad_value
    return out


def _copula_sampler(w: ParametricWorkload, load_offset: int) -> CopulaSampler:
    import jax.numpy as jnp

    weights = np.asarray(w.weights, np.float64)
    mean_d = np.array([c.decode.mean() for c in w.components])
    pv, pc, dv, dc, dlb, rho = [], [], [], [], [], []
    for c in w.components:
        p = c.prompt.values.astype(np.int64) + int(load_offset)
        d = c.decode.values.astype(np.int64)
        if p.max() + d.max() > _INT32_MAX:
            raise InputError("prompt + decode exceed int32", field="workload")
        pv.append(p)
        pc.append(_cdf32(c.prompt.pmf))
        dv.append(d)
        dc.append(_cdf32(c.decode.pmf))
        dlb.append(_cdf32(c.decode.pmf * d.astype(np.float64)))
        rho.append(gaussian_corr(c.rank_corr))
    return CopulaSampler(
        comp_cdf=jnp.asarray(_cdf32(weights), jnp.float32),
        comp_cdf_lb=jnp.asarray(_cdf32(weights * mean_d), jnp.float32),
        rho=jnp.asarray(np.array(rho, np.float32), jnp.float32),
        prompt_values=jnp.asarray(_pad(pv, True, 0, np.int32), jnp.int32),
        prompt_cdf=jnp.asarray(_pad(pc, False, 2.0, np.float32), jnp.float32),
        decode_values=jnp.asarray(_pad(dv, True, 0, np.int32), jnp.int32),
        decode_cdf=jnp.asarray(_pad(dc, False, 2.0, np.float32), jnp.float32),
        decode_cdf_lb=jnp.asarray(_pad(dlb, False, 2.0, np.float32), jnp.float32),
    )


def make_sampler(w, load_offset: int = 0) -> TableSampler | CopulaSampler:
    """JAX sampler pytree of a workload (see the module docstring). ``load_offset`` in {0, 1}."""
    if int(load_offset) != load_offset or load_offset < 0:
        raise InputError(f"load_offset must be a non-negative integer, got {load_offset!r}")
    if isinstance(w, TraceWorkload):
        prompt = np.asarray(w.prompt, np.int64)
        decode = np.asarray(w.decode, np.int64)
        if not np.any(decode > 0):
            raise InputError("every decode length is 0: no slot is ever held", field="decode")
        if (prompt + decode).max() + load_offset > _INT32_MAX:
            raise InputError("prompt + decode exceed int32", field="workload")
        return table_sampler(prompt + int(load_offset), decode)
    if isinstance(w, ParametricWorkload):
        return _copula_sampler(w, int(load_offset))
    raise TypeError(f"expected a TraceWorkload or ParametricWorkload, got {type(w).__name__}")
