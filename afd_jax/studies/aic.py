"""Stage latencies of an AFD deployment from NVIDIA AIConfigurator's measured kernel tables.

Needs the optional extra ``pip install "afd-jax[hardware]"`` (packages ``aiconfigurator`` and
``aiconfigurator-core``, Apache-2.0); every import of them is inside a function, so the core
install imports this module fine and :func:`require_extra` says what is missing.

AIConfigurator's own AFD mode (its ``sdk/afd_partition.py`` and ``AFDInferenceSession``)
decides which op goes where; we reuse it unchanged and only sample the sides separately:

- Attention instance (``attn_gpus`` GPUs, tensor parallel): embedding, norms, QKV/MLA
  projections, attention decode over the KV cache, output projection, logits GEMM, plus the
  A-side reduce of the expert-parallel partial results. Sampled at batch B and context s (every
  request holds s tokens), so the worker's KV load is T = B * s.
- FFN instance (``ffn_gpus`` GPUs, expert parallel EP = ffn_gpus): routed + shared experts and
  the dense FFN layers, plus the F-side all-gather / reduce-scatter inside an F node. Sampled at
  N = r * B tokens.
- A<->F link: one A->F and one F->A point-to-point transfer of a worker's B tokens per layer
  (AIConfigurator's ``AFDTransfer``: each Attention worker has its own link, so X = B,
  ``comm_scaling = "per_worker"``), timed on both systems' tables, the slower side taken.

All times are per decode step over all layers, in microseconds (AIConfigurator reports ms).
"""

from __future__ import annotations

import copy
import logging
import math
import traceback
from pathlib import Path
from typing import NamedTuple
from unittest import mock

from afd_jax.errors import InputError

__all__ = ["Deployment", "coverage", "measure", "require_extra"]

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CONTEXTS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
FFN_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
COMM_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
GIB = 2.0**30
# Kernel families a decode step of these (MoE, MLA/GQA) models never queries.
UNUSED_FAMILIES = {"encoder_attention", "linear_attention", "mhc", "sparse_attention", "kda", "msa"}


class Deployment(NamedTuple):
    """One Attention instance and one FFN instance of ``model`` (the Hugging Face id as
    AIConfigurator names it) on AIConfigurator systems; ``framework`` trtllm/sglang/vllm."""

    model: str
    attn_system: str
    ffn_system: str
    framework: str
    attn_gpus: int
    ffn_gpus: int


def require_extra() -> str:
    """The installed AIConfigurator version; InputError (one line) when the extra is missing."""
    try:
        import aiconfigurator
        import aiconfigurator_core  # noqa: F401
    except ImportError as err:
        raise InputError(
            f"needs the optional extra: pip install 'afd-jax[hardware]' "
            f"(NVIDIA AIConfigurator; {err.name or 'aiconfigurator'} is not installed)"
        ) from err
    logging.getLogger("aiconfigurator").setLevel(logging.ERROR)
    logging.getLogger("aiconfigurator_core").setLevel(logging.ERROR)
    return str(aiconfigurator.__version__)


def coverage() -> dict:
    """Systems -> frameworks -> versions, and the models AIConfigurator's tables support."""
    version = require_extra()
    from aiconfigurator.sdk import common
    from aiconfigurator.sdk.perf_database import get_supported_databases

    systems = {
        s: {fw: list(v) for fw, v in fws.items()} for s, fws in get_supported_databases().items()
    }
    return {
        "aiconfigurator_version": version,
        "systems": dict(sorted(systems.items())),
        "models": sorted(common.DefaultHFModels),
    }


def _gpus_per_node(system: str) -> int:
    from aiconfigurator.sdk.perf_database import load_system_spec

    try:
        return int(load_system_spec(system)["node"]["num_gpus_per_node"])
    except Exception as err:  # a system yaml without a node section
        raise InputError(f"no node description for {system!r}", field="system") from err


def _session(dep: Deployment, system: str):
    """AIConfigurator's AFD session for ``dep`` on ``system``, built by its own estimate entry
    (quantisation defaults, database version) and stopped before it runs. The FFN side of a
    mixed deployment only uses the session's FFN model, so there the Attention TP is reduced
    to what one ``system`` node holds (AIConfigurator keeps an Attention worker in a node)."""
    from aiconfigurator.cli.api import cli_estimate
    from aiconfigurator.sdk import inference_session

    gpn = _gpus_per_node(system)
    attn_tp = dep.attn_gpus if system == dep.attn_system else math.gcd(dep.attn_gpus, gpn)
    if dep.ffn_gpus % gpn:
        raise InputError(
            f"must be a multiple of {system}'s {gpn} GPUs per node, got {dep.ffn_gpus}",
            field="ffn_gpus",
        )
    captured = {}

    class _Built(Exception):
        pass

    def stop(self, *args, **kwargs):
        captured["session"] = self
        raise _Built

    with mock.patch.object(inference_session.AFDInferenceSession, "run_afd", stop):
        try:
            cli_estimate(
                dep.model,
                system,
                mode="afd",
                backend_name=dep.framework,
                n_a_nodes=max(1, math.ceil(attn_tp / gpn)),
                a_tp_size=attn_tp,
                n_f_nodes=dep.ffn_gpus // gpn,
                f_moe_ep_size=dep.ffn_gpus,
                num_microbatches=1,
                afd_combined_with_pd=False,
            )
        except _Built:
            return captured["session"]
        except Exception as err:  # AIConfigurator's own message: unsupported model/system
            raise InputError(f"AIConfigurator cannot build {dep.model} on {system}: {err}") from err
    raise InputError(f"AIConfigurator did not build an AFD session for {dep.model} on {system}")


def _side(session):
    from aiconfigurator.sdk.afd_partition import build_afd_ops_partition
    from aiconfigurator.sdk.config import RuntimeConfig

    try:
        a_model, f_model = session._build_models()
    except ValueError as err:  # e.g. a quantisation block that the split does not divide
        raise InputError(f"AIConfigurator rejects this split: {err}") from err
    return (
        a_model,
        f_model,
        build_afd_ops_partition(a_model, phase="generation").attn_ops,
        build_afd_ops_partition(f_model, phase="generation").ffn_ops,
        RuntimeConfig(isl=1, osl=2, batch_size=1),
    )


def _ops_us(session, ops, model, rc, batch: int, context: int) -> float:
    ms, _ = session._sum_latency(
        ops, batch_size=batch, seq_len=context, model=model, runtime_config=rc, is_context=False
    )
    return 1000.0 * float(ms)


def _ffn_collectives(session, f_model):
    """F-node all-gather / reduce-scatter ops billed by the total tokens N (one A worker)."""
    from aiconfigurator.sdk.operations import AFDFAllGather, AFDFReduceScatter

    cfg = session._afd_config
    shared = dict(
        hidden_size=f_model._hidden_size,
        n_a_workers=1,
        n_f_workers=cfg.n_f_workers,
        gpus_per_node=cfg.gpus_per_node,
        num_experts=int(getattr(f_model, "_num_experts", 0) or 0),
        topk=int(getattr(f_model, "_topk", 0) or 0),
        comm_quant_mode=session._a_model_config.comm_quant_mode,
    )
    return AFDFAllGather("afd_f_allgather", 1.0, **shared), AFDFReduceScatter(
        "afd_f_reducescatter", 1.0, **shared
    )


def _attention(session, side) -> dict:
    a_model, f_model, a_ops, _, rc = side
    combine = session._build_afd_comm_ops(a_model, f_model).a_combine
    layers = int(a_model._num_layers)
    out = {}
    for b in BATCHES:
        extra = 1000.0 * layers * float(combine.query(session._database, x=b))
        out[b] = [_ops_us(session, a_ops, a_model, rc, b, s) + extra for s in CONTEXTS]
    return out


def _ffn(session, side) -> list[float]:
    _, f_model, _, f_ops, rc = side
    ag, rs = _ffn_collectives(session, f_model)
    layers, db = int(f_model._num_layers), session._database
    return [
        _ops_us(session, f_ops, f_model, rc, n, 1)
        + 1000.0 * layers * (float(ag.query(db, x=n)) + float(rs.query(db, x=n)))
        for n in FFN_TOKENS
    ]


def _comm(session, side) -> tuple[list[float], str]:
    """Link times, and AIConfigurator's label of where they come from ("empirical": its
    bandwidth/latency model of the system, "silicon": a measured table)."""
    a_model, f_model, *_ = side
    ops = session._build_afd_comm_ops(a_model, f_model)
    layers, db = int(a_model._num_layers), session._database
    times = [
        1000.0 * layers * (float(ops.a2f.query(db, x=x)) + float(ops.f2a.query(db, x=x)))
        for x in COMM_TOKENS
    ]
    return times, str(getattr(ops.a2f.query(db, x=1), "source", "unknown"))


def _table_files(db, system: str) -> list[str]:
    """The kernel-table files of ``db``'s framework/version for ``system`` (package paths)."""
    import aiconfigurator_core

    root = Path(aiconfigurator_core.__file__).parent / "systems" / "data" / system
    files = root.glob(f"*/{db.backend}/{db.version}/*.parquet")
    keep = (p for p in files if p.parent.parent.parent.name not in UNUSED_FAMILIES)
    return sorted(str(p.relative_to(root.parents[2])) for p in keep if "context" not in p.name)


def _hardware(dep: Deployment, a_session, f_session, a_side, f_side) -> dict:
    a_model, f_model = a_side[0], f_side[1]
    one_token = dict(phase="decode", batch_size=1, isl=1, osl=1, prefix=0, max_seq_len=2)
    a_mem = a_session._estimate_a_memory_dict(
        a_model=a_model, a_partition=_Partition(a_side[2]), **one_token
    )
    f_mem = f_session._estimate_f_memory_dict(
        f_model=f_model, f_partition=_Partition(None, f_side[3]), **one_token
    )
    for side, mem, session in (("attn", a_mem, a_session), ("ffn", f_mem, f_session)):
        capacity = float(session._database.system_spec["gpu"]["mem_capacity"])
        if mem["total"] * GIB > capacity:
            raise InputError(
                f"does not fit: {mem['total']:.1f} GiB per GPU > {capacity / GIB:.1f} GiB; "
                f"use more GPUs",
                field=f"{side}_gpus",
            )
    from aiconfigurator.sdk.models import get_model

    one_gpu = copy.deepcopy(a_session._a_model_config)
    one_gpu.tp_size = one_gpu.moe_tp_size = 1
    kv = get_model(dep.model, one_gpu, a_session._backend.name.value)
    return {
        "model": dep.model,
        "attn_system": dep.attn_system,
        "ffn_system": dep.ffn_system,
        "framework": dep.framework,
        "attn_gpus": dep.attn_gpus,
        "ffn_gpus": dep.ffn_gpus,
        "attn_parallelism": f"TP{dep.attn_gpus}",
        "ffn_parallelism": f"EP{dep.ffn_gpus}",
        "kv_bytes_per_token": int(kv.get_kvcache_bytes_per_sequence(1)),
        "attn_weight_bytes": float(round(a_mem["weights"] * GIB * dep.attn_gpus)),
        "ffn_weight_bytes": float(round(f_mem["weights"] * GIB * dep.ffn_gpus)),
    }


def _quantization(model) -> str:
    """The quantisation AIConfigurator resolved for the model (its defaults for the system)."""
    cfg = model.config
    modes = (("gemm", cfg.gemm_quant_mode), ("moe", cfg.moe_quant_mode))
    modes += (("kv cache", cfg.kvcache_quant_mode),)
    return ", ".join(f"{name} {getattr(mode, 'name', mode)}" for name, mode in modes)


class _Partition(NamedTuple):
    attn_ops: list | None
    ffn_ops: list | None = None


def measure(dep: Deployment) -> dict:
    """Measured points of every stage of ``dep`` (us per step, all layers) and provenance.

    Returns ``{"attn": {B: [t(s) for s in CONTEXTS]}, "ffn": [...], "comm": [...],
    "hardware": {...}, "provenance": {...}}``; the grids are the module constants.
    """
    version = require_extra()
    try:
        return _measure(dep, version)
    except InputError:
        raise
    except Exception as err:  # AIConfigurator's own errors (missing table rows, bad split)
        if not _raised_by_aiconfigurator(err):
            raise
        raise InputError(f"AIConfigurator: {str(err).strip().splitlines()[0]}") from err


def _raised_by_aiconfigurator(err: Exception) -> bool:
    """An error of AIConfigurator's own type, or any error (its asserts on the split, e.g.
    "num_heads 128 should be divisible by tp_size 1024") raised inside its package."""
    if type(err).__module__.startswith("aiconfigurator"):  # and aiconfigurator_core
        return True
    frames = traceback.extract_tb(err.__traceback__)
    parts = Path(frames[-1].filename).parts if frames else ()
    return any(p.startswith("aiconfigurator") for p in parts)  # also aiconfigurator_core


def _validate(dep: Deployment) -> None:
    """Model, systems and framework known to the installed tables (before any work)."""
    cov = coverage()
    if dep.model not in cov["models"] and not Path(dep.model).is_dir():
        raise InputError(
            f"{dep.model!r} is not among AIConfigurator's models (afd-jax hardware list)",
            field="model",
        )
    for field, system in (("system", dep.attn_system), ("ffn_system", dep.ffn_system)):
        frameworks = cov["systems"].get(system)
        if frameworks is None:
            known = ", ".join(cov["systems"])
            raise InputError(f"unknown system {system!r} (known: {known})", field=field)
        if dep.framework not in frameworks:
            raise InputError(
                f"no {dep.framework!r} tables for {system} (has: {', '.join(sorted(frameworks))})",
                field="framework",
            )


def _measure(dep: Deployment, version: str) -> dict:
    _validate(dep)
    a_session = _session(dep, dep.attn_system)
    same = dep.ffn_system == dep.attn_system
    f_session = a_session if same else _session(dep, dep.ffn_system)
    a_side = _side(a_session)
    f_side = a_side if same else _side(f_session)
    comm, comm_source = _comm(a_session, a_side)
    if not same:  # the link runs at the slower side's rate
        comm = [max(a, f) for a, f in zip(comm, _comm(f_session, f_side)[0], strict=True)]
    dbs = {a_session._database.version, f_session._database.version}
    return {
        "attn": _attention(a_session, a_side),
        "ffn": _ffn(f_session, f_side),
        "comm": comm,
        "hardware": _hardware(dep, a_session, f_session, a_side, f_side),
        "provenance": {
            "aiconfigurator_version": version,
            "framework_version": ", ".join(sorted(dbs)),
            "comm_source": f"AIConfigurator AFDTransfer P2P, source = {comm_source}",
            "quantization": _quantization(f_side[1]),
            "table_files": sorted(
                set(_table_files(a_session._database, dep.attn_system))
                | set(_table_files(f_session._database, dep.ffn_system))
            ),
        },
    }
