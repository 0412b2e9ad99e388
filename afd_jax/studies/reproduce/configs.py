"""What the reproduction runs: the configurations, the workloads, the traces folder and the
latency scenarios (docs/reproduction.md; the paper's setup is docs/model.md 6).

Latency scenarios. The v1 setup uses the ``paper-v1`` preset (r* = 9.3 at theta = 599,
B = 256). Elsewhere, coefficient sets are ``paper-v1`` rescaled to each (workload, B) so the
optimum lands in a chosen regime (verified with :func:`afd_jax.model.theory.mean_field_optimum`):
with ``s = tA_bar / tA_bar_v1`` (``tA_bar = alpha_A B theta + beta_A``, Attention coefficients
kept), every FFN/communication intercept is multiplied by s and every slope by ``s * 256 / B``
("attention": the balance point stays r* = 9.3); "communication": the per-worker
communication time is raised to ``1.25 tA_bar`` (plateau, then the FFN crossover at r = 12.5);
"ffn": ``beta_F = 1.1 tA_bar`` with the FFN peak ``sqrt(beta_F / (alpha_F B)) = 8``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from afd_jax.errors import InputError
from afd_jax.model.latency import Latency, ModelOptions
from afd_jax.model.latency_io import resolve_latency
from afd_jax.model.theory import mean_attention_time
from afd_jax.workload.containers import content_digest
from afd_jax.workload.specs import resolve_workload

__all__ = [
    "CONFIGS",
    "GRID_METHODS",
    "NO_TRACES",
    "PAPER_R",
    "PARAMETRIC",
    "TRACES",
    "available_workloads",
    "check_traces_dir",
    "config",
    "config_hash",
    "load_workload",
    "regime_latency",
    "trace_digests",
    "v1_latency",
]

V1_TA_BAR = 0.01 * 256 * 599 + 100.0  # paper-v1 tA_bar at theta = 599, B = 256 (us)
PAPER_R = (1, 2, 4, 8, 16, 24, 32)
# the methods compared on the workload grid (columns r_<method>, relerr_<method>, ...)
GRID_METHODS = ("mean_field", "gaussian", "exact", "optimiser", "naive_mean_field")

PARAMETRIC = {
    "geometric": "paper-v1",
    "deterministic": "deterministic:prompt=100,decode=500",
    "lognormal": "lognormal:prompt=800,decode=150,sigma=0.8,decode_max=2000",
    "zipf": "zipf:prompt=1..16000,decode=1..2000,exponent=1.1",
    "copula": "lognormal:prompt=800,decode=150,sigma=0.8,decode_max=2000,corr=0.6",
}
TRACES = {
    "azure-conv": "azure_llm_2023_conv.csv",
    "azure-code": "azure_llm_2023_code.csv",
    "mooncake": "mooncake_conversation.jsonl",
}
# why the trace scenarios are left out when no folder is given (log line and report)
NO_TRACES = "no traces folder given: --traces-dir or AFD_TRACES_DIR"

CONFIGS = {
    "full": dict(
        v1_batch=256,
        v1_r_max=64,
        v1_pool_requests=10_000,
        v1_pool_replications=4,
        v1_pool_r=list(range(1, 65)),
        v1_active_r=list(PAPER_R),
        v1_drain_requests=[10_000, 20_000, 40_000, 80_000],
        v1_drain_replications=2,
        v1_sim_steps=2048,
        v1_sim_replications=2,
        completion_fraction=0.8,
        slot_bins=2048,
        workloads=list(PARAMETRIC) + list(TRACES),
        batches=[32, 64, 128, 256],
        grid_r_max=64,
        grid_sim_r_max=32,
        grid_sim_steps=512,
        grid_sim_replications=2,
        optimiser=True,
    ),
    "quick": dict(
        v1_batch=64,
        v1_r_max=32,
        v1_pool_requests=2500,
        v1_pool_replications=2,
        v1_pool_r=[1, 2, 4, 8, 9, 10, 12, 16, 24, 32],
        v1_active_r=[32],
        v1_drain_requests=[2500, 5000],
        v1_drain_replications=2,
        v1_sim_steps=256,
        v1_sim_replications=2,
        completion_fraction=0.8,
        slot_bins=1024,
        workloads=["geometric", "zipf"],
        batches=[64],
        grid_r_max=32,
        grid_sim_r_max=32,
        grid_sim_steps=128,
        grid_sim_replications=2,
        optimiser=False,  # compiling the optimiser alone takes ~17 s on the 2-core CPU
    ),
}


def config(quick: bool, seed: int) -> dict:
    """The configuration of a run (a plain dict; its hash names the parts folder)."""
    cfg = dict(CONFIGS["quick" if quick else "full"])
    cfg["mode"] = "quick" if quick else "full"
    cfg["seed"] = int(seed)
    return cfg


def config_hash(cfg: dict) -> str:
    """12 hex digits of the SHA-1 of the configuration (sorted-key JSON)."""
    return hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


def check_traces_dir(traces_dir) -> Path | None:
    """The traces folder as a Path (None when not given). A given folder that is missing or
    holds none of the expected trace files (:data:`TRACES`) raises :class:`InputError`."""
    if traces_dir is None:
        return None
    folder = Path(traces_dir)
    if not any((folder / name).is_file() for name in TRACES.values()):
        raise InputError(
            "traces folder holds none of the expected traces "
            f"({', '.join(TRACES.values())}); give the folder that holds them "
            "(--traces-dir or AFD_TRACES_DIR), or none to run without the trace scenarios",
            path=str(folder),
        )
    return folder


def available_workloads(cfg: dict, traces_dir: Path | None) -> tuple[list[str], list[str]]:
    """(used, skipped) workload names: traces are skipped in quick mode and when missing."""
    used, skipped = [], []
    for name in cfg["workloads"]:
        if name in TRACES and (traces_dir is None or not (traces_dir / TRACES[name]).is_file()):
            skipped.append(name)
        else:
            used.append(name)
    return used, skipped


def trace_digests(names: list[str], traces_dir: Path) -> dict[str, str]:
    """{workload: the digest of its rows as read (:func:`content_digest`, hex)} for the traces
    among ``names``: each trace is read, and so checked, before any work, and the digests join
    the configuration, so parts computed from other trace rows never resume."""
    return {
        name: content_digest(load_workload(name, traces_dir)).hex()
        for name in names
        if name in TRACES
    }


def load_workload(name: str, traces_dir: Path | None):
    """A parametric workload by name (:data:`PARAMETRIC`) or a trace from ``traces_dir``."""
    if name in PARAMETRIC:
        return resolve_workload(PARAMETRIC[name])
    return resolve_workload(str(traces_dir / TRACES[name]))


def regime_latency(theta: float, batch: int, regime: str) -> tuple[Latency, ModelOptions]:
    """paper-v1 rescaled to (theta, B) with the optimum in ``regime`` (module docstring)."""
    base, opts = resolve_latency("paper-v1")
    ta = mean_attention_time(base, theta, batch)
    s = ta / V1_TA_BAR
    k = s * 256.0 / batch
    lat = base._replace(
        alpha_ffn=float(base.alpha_ffn) * k,
        beta_ffn=float(base.beta_ffn) * s,
        alpha_comm=float(base.alpha_comm) * k,
        beta_comm=float(base.beta_comm) * s,
    )
    if regime == "communication":
        lat = lat._replace(beta_comm=1.25 * ta - float(lat.alpha_comm) * batch)
    elif regime == "ffn":
        beta_f = 1.1 * ta
        lat = lat._replace(beta_ffn=beta_f, alpha_ffn=beta_f / (batch * 64.0))
    elif regime != "attention":
        raise InputError(f"unknown regime {regime!r}", field="regime")
    return lat, opts


def v1_latency(batch: int) -> tuple[Latency, ModelOptions]:
    """The v1 setup's latency: the paper-v1 preset at B = 256, else rescaled to B."""
    if batch == 256:
        return resolve_latency("paper-v1")
    return regime_latency(599.0, batch, "attention")
