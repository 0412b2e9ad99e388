"""Sensitivity sweeps at scale: a TOML spec -> one table row per (scenario, r) (docs/sweep.md).

A **scenario** is one (workload, batch B, latency coefficients and costs). For every scenario and
every r = 1..r_max the sweep reports the throughput per instance (tokens/s, docs/model.md 3) of
each requested method (mean_field, gaussian, exact, mc, optimize), the mean-field binding
``regime`` at each r, and ``r_best_<method>`` per scenario.

The package is split by job, each module importing only those above it in this list:

* :mod:`~afd_jax.studies.sweep.fields`   shared vocabulary: method, latency-field, column names
* :mod:`~afd_jax.studies.sweep.spec`     TOML parsing and validation (``load_spec``,
  ``parse_sweep_spec``, ``grid_values``, ``SweepSpec``)
* :mod:`~afd_jax.studies.sweep.plan`     the scenario table (``make_plan``, ``SweepPlan``)
* :mod:`~afd_jax.studies.sweep.evaluate` the methods, chunk by chunk (``Evaluator``)
* :mod:`~afd_jax.studies.sweep.table`    CSV rows and reading a table back (``read_table``)
* :mod:`~afd_jax.studies.sweep.run`      ``run_sweep``: chunks over processes and devices, parts
  in :class:`afd_jax.studies.store.PartStore`, resume, merge
* :mod:`~afd_jax.studies.sweep.plots`    regime and error maps (matplotlib)

>>> from afd_jax.studies.sweep import parse_sweep_spec, make_plan
>>> plan = make_plan(parse_sweep_spec({"batch": [64], "workloads": {"specs": ["paper-v1"]},
...                                    "latency": {"base": "paper-v1"}}))
>>> plan.n_scenarios, plan.columns()[:4]
(1, ['scenario', 'workload', 'batch', 'alpha_attn'])
"""

from afd_jax.studies.sweep.evaluate import Evaluator, analytic_kernels
from afd_jax.studies.sweep.fields import FORMATS, LATENCY_FIELDS, METHODS, REGIMES, columns
from afd_jax.studies.sweep.plan import SweepPlan, WorkloadEntry, make_plan
from afd_jax.studies.sweep.plots import check_axes, plot_sweep
from afd_jax.studies.sweep.run import (
    SweepResult,
    default_chunk_size,
    part_name,
    parts_dir,
    run_sweep,
)
from afd_jax.studies.sweep.spec import SweepSpec, grid_values, load_spec, parse_sweep_spec
from afd_jax.studies.sweep.table import format_rows, read_table

__all__ = [
    "FORMATS",
    "LATENCY_FIELDS",
    "METHODS",
    "REGIMES",
    "Evaluator",
    "SweepPlan",
    "SweepResult",
    "SweepSpec",
    "WorkloadEntry",
    "analytic_kernels",
    "check_axes",
    "columns",
    "default_chunk_size",
    "format_rows",
    "grid_values",
    "load_spec",
    "make_plan",
    "parse_sweep_spec",
    "part_name",
    "parts_dir",
    "plot_sweep",
    "read_table",
    "run_sweep",
]
