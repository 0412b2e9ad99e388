"""The targets of issue 14 read off one run of ``bench_gpu.sh``: every kernel row of the
``bench_kernels.py`` tables in its output folder (kernels.md, fast_256.md, trajectory_256.md,
levers.md), labelled by the options of the command under its table, the fastest per kernel,
and whether it reaches its target (fast >= 1e12 slot-steps/s, trajectory and barrier >= 1e11).

    python experiments/bench_gpu_summary.py OUT_DIR [--out FILE]

Reads only what the benchmarks wrote; measures nothing. A folder without any kernel row is an
error (exit 2), so a run that failed everywhere does not pass for a summary.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

FILES = ("kernels.md", "fast_256.md", "trajectory_256.md", "levers.md")
TARGETS = {"fast": 1e12, "trajectory": 1e11, "barrier": 1e11}
VARIANT_OPTIONS = (
    "--replications",
    "--memory-budget-mb",
    "--step-unroll",
    "--segment-steps",
    "--barrier-halves",
    "--plain-carry",
)
_FLAGS = ("--barrier-halves", "--plain-carry")  # options without a value
_ROW = re.compile(r"^\| (fast|trajectory|barrier) kernel \|")
_COMMAND = re.compile(r"^Command: `(.*)`")


def _variant(command: str) -> str:
    """The options of a bench_kernels command that change the program or its size."""
    words, out = command.split(), []
    for i, w in enumerate(words):
        if w in VARIANT_OPTIONS:
            takes_value = w not in _FLAGS and i + 1 < len(words)
            out.append(f"{w} {words[i + 1]}" if takes_value else w)
    return " ".join(out) or "default"


def read_rows(path: str) -> list[dict]:
    """Kernel rows of one bench_kernels.py Markdown file: kernel, replications, rate and the
    variant (from the ``Command:`` line that ends the row's table)."""
    rows, pending = [], []
    with open(path) as f:
        for line in f:
            if _ROW.match(line):
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                kernel = cells[0].split()[0]
                pending.append(dict(kernel=kernel, reps=int(cells[2]), rate=float(cells[5])))
            elif (m := _COMMAND.match(line)) and pending:
                for row in pending:
                    row.update(file=os.path.basename(path), variant=_variant(m.group(1)))
                rows += pending
                pending = []
    for row in pending:  # a table whose command line is missing (a cut run)
        row.update(file=os.path.basename(path), variant="?")
    return rows + pending


def summary(folder: str) -> str:
    rows = []
    for name in FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            rows += read_rows(path)
    if not rows:
        raise ValueError(f"no kernel rows in {', '.join(FILES)} under {folder}")
    lines = [
        "## Targets (issue 14), from " + os.path.abspath(folder),
        "",
        "| kernel | file | variant | replications | slot-steps/s | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = TARGETS[r["kernel"]]
        lines.append(
            f"| {r['kernel']} | {r['file']} | {r['variant']} | {r['reps']} | {r['rate']:.3e} "
            f"| {target:.0e} | {'yes' if r['rate'] >= target else 'no'} |"
        )
    lines.append("")
    for kernel, target in TARGETS.items():
        mine = [r for r in rows if r["kernel"] == kernel]
        if not mine:
            lines.append(f"- {kernel}: no row")
            continue
        best = max(mine, key=lambda r: r["rate"])
        verdict = "met" if best["rate"] >= target else "not met"
        lines.append(
            f"- {kernel}: fastest {best['rate']:.3e} ({best['file']}, {best['variant']}, "
            f"{best['reps']} replications): target {target:.0e} {verdict}"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", help="bench_gpu.sh's output folder")
    ap.add_argument("--out", default=None, help="Markdown file to write")
    args = ap.parse_args(argv)
    try:
        text = summary(args.folder)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
