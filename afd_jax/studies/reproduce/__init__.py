"""The research reproduction (issue 7): the paper's claims checked at scale, one entry point.

``run_reproduction(out, quick=False, seed=0, traces_dir=None)`` writes into ``out``:

* ``v1_curves.csv``   the v1 setup (docs/model.md 6), per r: mean-field, Gaussian and exact
  throughput, stationary Monte Carlo (``simulate``, barrier kernel) with its CI, and the
  paper's cold-start finite-pool simulator (:mod:`afd_jax.montecarlo.pool`: nominal FFN
  tokens; a subset of r also with active-token FFN cost) with its CI across pools.
* ``v1_summary.csv``  one row per quantity: every method's r*, the simulation optima and the
  relative gaps; the r = 32 shortfall against mean field and the part the barriers explain.
* ``v1_drain.csv``    the r = 32 cold-start shortfall as the pool grows (the drain hypothesis).
* ``workloads.csv``   one row per (workload, B, regime): r* of every method, relative error
  against the simulation optimum, throughput regret, idle fractions at r = 1, at the naive
  E[P]+E[D] mean-field r and at the recommended r.
* ``workload_curves.csv`` per scenario and r: mean-field, Gaussian, exact, MC throughput.
* ``report.md`` (claims that hold and fail, with numbers), ``*.png`` figures, ``meta.json``
  (timings, device: not part of the reproducible tables).

Floats in the CSVs are written with 6 significant digits, so the same seed regenerates them
byte for byte. Every part is written to ``out/parts/<config hash>/`` as soon as it is done; a
rerun with the same configuration skips finished parts (resume).

Modules: :mod:`.configs` (configurations, workloads, traces folder, latency scenarios),
:mod:`.methods` (every method on one scenario), :mod:`.runs` (the parts), :mod:`.parts` (the
table writer and resume-by-parts store), :mod:`.report`, :mod:`.plots`, :mod:`.runner` (the
entry point).
"""

from afd_jax.studies.reproduce.configs import CONFIGS, config, regime_latency
from afd_jax.studies.reproduce.plots import write_plots
from afd_jax.studies.reproduce.report import write_report
from afd_jax.studies.reproduce.runner import plan_reproduction, run_reproduction

__all__ = [
    "CONFIGS",
    "config",
    "plan_reproduction",
    "regime_latency",
    "run_reproduction",
    "write_plots",
    "write_report",
]
