"""JAX sampler of parametric workloads: a mixture of Gaussian-copula components.

Each component k has integer marginals for P and D and a latent normal correlation ``rho_k``.
A fresh request, from three Threefry blocks (two for a single component; :func:`copula_blocks`):

    k   ~ Categorical(w)                                   (mixture weight; mixtures only)
    D   ~ pmf_D (Walker alias table of the atoms' indices)
    U_D ~ Uniform[F_D(D-), F_D(D))                         (the latent uniform given D)
    Z_1 = ndtri(U_D);      Z_2 = rho_k Z_1 + sqrt(1 - rho_k^2) eps,   eps ~ N(0, 1)
    P   = the atom p_i with z_{i-1} <= Z_2 < z_i,  z_i = Phi^-1(F_P(p_i))  (a guided search)

which is the copula's law (U_D uniform on [0, 1) and D = F_D^-1(U_D), drawn in the other
order). A length-biased request (probability proportional to D, docs/model.md 4) is the same
with k ~ w_k E_k[D] and D ~ d pmf(d) / E_k[D] (a second alias table).

P is found in the latent normal's own scale: its thresholds z_i (float64 on the host, stored
float32, +inf after the last atom) are searched for Z_2, which needs no ``ndtr`` and resolves
the prompt's far tail (a float32 CDF loses atoms of mass below ~6e-8 near 1; a float32
threshold moves its CDF value by at most phi(z) ulp(z) / 2 < 1.45e-8, an atom by twice that).
The search
starts from a guide table (:func:`guided_rows`): Z_2's bin of width 1/256 on [-8, 8) gives
the count of thresholds below the bin, and a branchless search of ``len(steps)`` halvings
covers the widest bin (4 to 6 dependent gathers for the fitted presets instead of 14 to 15).

Tables (built on the host by ``afd_jax.montecarlo.samplers.make_sampler``): alias tables from
the float64 pmfs (acceptance rounded to 2^-24); D's CDFs float32 with the last real entry
exactly 1 and padding 2.0 (never selected); values int32 padded with the row's last value.
Uniforms are on the 2^-24 grid; the latent uniform is clipped to [2^-25, 1 - 2^-24] before
``ndtri``, and eps is ``ndtri`` of a grid uniform plus 2^-25 clipped the same way (|eps| <=
5.5: a normal tail of about 1e-7 left out). Nothing here imports afd_jax.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

from .alias import pick_component, unit24, value_alias_pick

__all__ = ["CopulaSampler", "copula_blocks", "copula_from_words", "guided_rows"]

GUIDE_LOW = -8.0
"""The lower end of the guide table's range of Z_2 (|Z_2| <= 5.5 sqrt(2) < 8)."""
GUIDE_SCALE = 256
"""Guide bins per unit of Z_2 (a power of two: the bin index is exact in float32)."""
GUIDE_BINS = 16 * GUIDE_SCALE
"""Guide bins on [-8, 8); Z_2 outside is clipped into the end bins."""


class CopulaSampler(NamedTuple):
    """Mixture of K Gaussian-copula components (a pytree; every field is traced).

    comp_cdf, comp_cdf_lb: float32[K] cumulative mixture weights w_k and w_k E_k[D];
    rho: float32[K] latent normal correlation; prompt_values: int32[K, NP]; prompt_z:
    float32[K, NP + 2^J] thresholds z_i = Phi^-1(F_P(p_i)) padded with +inf, prompt_guide:
    int32[K, GUIDE_BINS] thresholds below each bin, prompt_steps: int32[J] the search's
    halvings 2^(J-1) .. 1 (:func:`guided_rows`); decode_values: int32[K, ND], decode_cdf,
    decode_cdf_lb: float32[K, ND] (F_D and the length-biased CDF sum_{d' <= d} d' pmf(d') /
    E[D]); decode_alias, decode_lb_alias: int32[K, NA, 4], alias tables of the atoms'
    indices 0..ND-1 under pmf_D and under d pmf_D(d) / E[D]
    (``kernels.alias.value_alias_rows``), or NA = 0 (more decode atoms than the builder
    tabulates: D is then found by a binary search of the CDFs with a 24-bit uniform).
    """

    comp_cdf: jax.Array
    comp_cdf_lb: jax.Array
    rho: jax.Array
    prompt_values: jax.Array
    prompt_z: jax.Array
    prompt_guide: jax.Array
    prompt_steps: jax.Array
    decode_values: jax.Array
    decode_cdf: jax.Array
    decode_cdf_lb: jax.Array
    decode_alias: jax.Array
    decode_lb_alias: jax.Array


def guided_rows(thresholds):
    """Host (NumPy) tables of the guided search for K sorted float32 rows of thresholds, each
    ending with +inf: (table float32[K, N + 2^J] padded with +inf, guide int32[K,
    GUIDE_BINS], steps int32[J]). guide[k, b] counts row k's thresholds below bin b's lower
    edge; J is the fewest halvings that reach, from there, every threshold below the bin's
    upper edge (both edges widened by 1e-4, far beyond the float32 rounding of the bin
    index), so the search is exact for every Z_2 the bin can hold."""
    edges = GUIDE_LOW + np.arange(GUIDE_BINS + 1, dtype=np.float64) / GUIDE_SCALE
    guides, widest = [], 1
    for t in thresholds:
        t = np.asarray(t, np.float64)
        below = np.searchsorted(t, edges - 1e-4, side="right")
        upto = np.searchsorted(t, edges + 1e-4, side="right")
        below[0], upto[-1] = 0, t.size
        guides.append(below[:-1])
        widest = max(widest, int((upto[1:] - below[:-1]).max()))
    halvings = widest.bit_length()
    table = np.full((len(guides), max(len(t) for t in thresholds) + (1 << halvings)), np.inf)
    for k, t in enumerate(thresholds):
        table[k, : len(t)] = t
    steps = 1 << np.arange(halvings - 1, -1, -1)
    return table.astype(np.float32), np.stack(guides).astype(np.int32), steps.astype(np.int32)


def _counted(table, row, x, pos, steps):
    """Entries of the sorted rows ``table[row]`` that are <= x, by a branchless search from
    ``pos`` (a count already known to be <= x) taking each of ``steps`` (descending powers of
    two) where the entry it reaches is <= x; entries past a row's end read as its last one,
    which must exceed every x. The answer must lie within sum(steps) of ``pos``."""
    n = table.shape[1]
    flat = table.reshape(-1)
    base = row.astype(jnp.int32) * jnp.int32(n)

    def body(i, pos):
        step = steps[i]
        return jnp.where(flat[base + jnp.minimum(pos + step - 1, n - 1)] <= x, pos + step, pos)

    return jax.lax.fori_loop(0, steps.shape[0], body, pos)


def _row_search(table, row, u):
    """Number of entries of ``table[row]`` that are <= u, clipped to the last column (the CDF
    rows end with 1.0 or padding 2.0, above every u < 1). table: float32[K, N]; row:
    int32[...]; u: float32[...] -> int32[...]."""
    n = table.shape[1]
    steps = jnp.asarray(1 << np.arange(int(n).bit_length() - 1, -1, -1), jnp.int32)
    return jnp.minimum(_counted(table, row, u, jnp.zeros(u.shape, jnp.int32), steps), n - 1)


def _prompt_index(s: CopulaSampler, comp, z):
    """Index of P's atom for the latent normal z: thresholds <= z (:func:`guided_rows`)."""
    b = jnp.floor((z - jnp.float32(GUIDE_LOW)) * jnp.float32(GUIDE_SCALE)).astype(jnp.int32)
    start = s.prompt_guide.reshape(-1)[comp * GUIDE_BINS + jnp.clip(b, 0, GUIDE_BINS - 1)]
    j = _counted(s.prompt_z, comp, z, start, s.prompt_steps)
    return jnp.minimum(j, s.prompt_values.shape[1] - 1)


def copula_blocks(s: CopulaSampler) -> int:
    """Threefry blocks per request: D's alias pair, (latent uniform, eps), and a word for the
    component when there are several (static)."""
    return 2 if s.comp_cdf.shape[0] == 1 else 3


def copula_from_words(s: CopulaSampler, words, length_biased: bool = False):
    """(prompt, decode) int32 from :func:`copula_blocks` pairs of uint32 words per request
    (``words[j] = (w0, w1)``), as the module docstring says. ``length_biased`` (static)."""
    (a0, a1), (b0, b1) = words[0], words[1]
    word = words[2][0] if len(words) > 2 else None
    comp = pick_component(s.comp_cdf_lb if length_biased else s.comp_cdf, word, a0.shape)
    if s.decode_alias.shape[1]:
        j = value_alias_pick(s.decode_lb_alias if length_biased else s.decode_alias, a0, a1, comp)
    else:  # no alias tables: the inverse CDF
        j = _row_search(s.decode_cdf_lb if length_biased else s.decode_cdf, comp, unit24(a0))
    decode = s.decode_values[comp, j]
    hi = s.decode_cdf[comp, j]
    lo = jnp.where(j > 0, s.decode_cdf[comp, jnp.maximum(j - 1, 0)], jnp.float32(0.0))
    z1 = ndtri(jnp.clip(lo + (hi - lo) * unit24(b0), 2.0**-25, 1.0 - 2.0**-24))
    # the grid's midpoints, clipped as the latent is: u + 2^-25 rounds to 1.0 at the top word
    eps = ndtri(jnp.clip(unit24(b1) + jnp.float32(2.0**-25), 2.0**-25, 1.0 - 2.0**-24))
    rho = s.rho[comp]
    z2 = rho * z1 + jnp.sqrt(jnp.maximum(1.0 - rho * rho, 0.0)) * eps
    return s.prompt_values[comp, _prompt_index(s, comp, z2)], decode
