"""Write examples/sample_trace.csv: 2,000 synthetic requests drawn from the `azure-conv-fit`
preset (a lognormal/copula fit to the Azure LLM 2023 conversation trace; synthetic, not the
trace itself), in the Azure CSV layout, so the README's trace examples run on a fresh clone.

    python examples/make_sample_trace.py
"""

from pathlib import Path

import jax
import numpy as np

from afd_jax.kernels import sample_requests
from afd_jax.montecarlo.samplers import make_sampler
from afd_jax.workload.specs import resolve_workload

OUT = Path(__file__).with_name("sample_trace.csv")


def main() -> None:
    sampler = make_sampler(resolve_workload("azure-conv-fit"))
    prompt, decode = sample_requests(jax.random.key(2023), sampler, (2000,))
    prompt, decode = np.asarray(prompt), np.asarray(decode)
    with OUT.open("w") as f:
        f.write("TIMESTAMP,ContextTokens,GeneratedTokens\n")
        for i, (p, d) in enumerate(zip(prompt, decode, strict=True)):
            f.write(f"{i * 0.5:.1f},{p},{d}\n")
    print(f"wrote {OUT} ({len(prompt)} rows)")


if __name__ == "__main__":
    main()
