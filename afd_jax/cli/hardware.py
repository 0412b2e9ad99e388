"""``afd-jax hardware``: latency presets from NVIDIA AIConfigurator's measured kernel tables.

``hardware list`` shows what the installed tables cover; ``hardware build`` writes one table
latency file for an Attention and an FFN instance (docs/hardware.md). Both need the optional
extra ``pip install "afd-jax[hardware]"``; without it they exit 2 with one line.
"""

from __future__ import annotations

import shlex
import sys

from afd_jax.cli.common import emit_json, fit_error_lines
from afd_jax.errors import InputError, check_output_file, positive_int
from afd_jax.studies.store import atomic_write


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "hardware",
        description=(
            "Build latency files for real models on real GPUs from NVIDIA AIConfigurator's "
            "measured kernel tables (needs pip install 'afd-jax[hardware]'; docs/hardware.md)."
        ),
    )
    sub = p.add_subparsers(dest="hardware_command", metavar="{list,build}", required=True)
    lst = sub.add_parser("list", help="systems, frameworks (versions) and models covered")
    lst.add_argument("--json", action="store_true", help="one JSON object on stdout")
    b = sub.add_parser("build", help="write one table latency file (MODEL@SYSTEM layout)")
    b.add_argument("--model", required=True, help="Hugging Face id, e.g. deepseek-ai/DeepSeek-V3")
    b.add_argument("--system", required=True, help="Attention system, e.g. h200_sxm, gb200")
    b.add_argument("--ffn-system", default=None, help="FFN system (default: --system)")
    b.add_argument("--framework", default="trtllm", help="trtllm (default), sglang or vllm")
    b.add_argument("--attn-gpus", type=int, default=8, help="GPUs of one Attention instance (TP)")
    b.add_argument("--ffn-gpus", type=int, default=16, help="GPUs of the FFN instance (EP)")
    b.add_argument("--out", required=True, metavar="FILE.toml")
    b.add_argument("--json", action="store_true", help="fit errors as one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from afd_jax.studies import aic
    from afd_jax.studies.hardware import list_hardware_presets

    if args.hardware_command == "list":
        cov = aic.coverage()
        if args.json:
            emit_json({**cov, "presets": list_hardware_presets()})
            return 0
        print(f"NVIDIA AIConfigurator {cov['aiconfigurator_version']} (Apache-2.0) covers:")
        print("systems (framework: versions):")
        for system, fws in cov["systems"].items():
            text = "; ".join(f"{fw}: {', '.join(v)}" for fw, v in sorted(fws.items()))
            print(f"  {system:<20} {text}")
        print(f"models ({len(cov['models'])}):")
        for model in cov["models"]:
            print(f"  {model}")
        print(f"shipped presets (--latency NAME): {', '.join(list_hardware_presets())}")
        return 0
    return _build(args)


def _build(args) -> int:
    from afd_jax.studies import aic
    from afd_jax.studies.hardware import build_preset

    dep = aic.Deployment(
        model=args.model,
        attn_system=args.system,
        ffn_system=args.ffn_system or args.system,
        framework=args.framework,
        attn_gpus=positive_int("attn_gpus", args.attn_gpus),
        ffn_gpus=positive_int("ffn_gpus", args.ffn_gpus),
    )
    out = check_output_file(args.out, "--out")
    flags = ["--model", dep.model, "--system", dep.attn_system, "--ffn-system", dep.ffn_system]
    flags += ["--framework", dep.framework, "--attn-gpus", str(dep.attn_gpus)]
    flags += ["--ffn-gpus", str(dep.ffn_gpus), "--out", out.name]
    text, errors, _ = build_preset(dep, "afd-jax hardware build " + shlex.join(flags))
    try:
        atomic_write(out, text)
    except OSError as err:
        raise InputError(f"cannot write: {err.strerror}", path=str(out)) from err
    print(f"wrote {out}", file=sys.stderr)
    if args.json:
        emit_json({"out": str(out), "fit": {s: e._asdict() for s, e in errors.items()}})
        return 0
    print("\n".join(fit_error_lines(errors)))
    return 0
