"""Run the benchmarks: ``python benchmarks/run.py [--quick] [name ...]``.

Each benchmark prints its rates and the ratio to a baseline measured in the same run (a bare
``uproot.iterate`` of the same branches, a pyhf fit, the reference DisCo, a plain DataLoader
loop), so numbers are comparable across machines.  Results are also written as JSON to
``benchmarks/output/<name>.json``.  Available: see ``BENCHMARKS`` below.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "io": "bench_io",  # toy generation, caching vs bare uproot, export, peak memory
    "train": "bench_train",  # engine events/s (none, disco, adversarial) vs a DataLoader loop
    "weights": "bench_weights",  # weight-network training rate; formulation comparison (toy)
    "fit": "bench_fit",  # signal-strength fit (analytic gradients) vs pyhf, same model/tolerance
    "limits": "bench_limits",  # CLs upper limits (q-tilde, asymptotic) vs pyhf's upper_limit
    "evaluation": "bench_evaluation",  # evaluation time per model for 1 M events
    "toys": "bench_toys",  # diagnostics toys (generate + fit) per second, 1 and 2 workers
    "dag": "bench_dag",  # dry-run DAG of a 500-point scan (1000 trainings) vs trivial jobs
    "stability": "bench_stability",  # decorrelated methods over 20 seeds: no-collapse rate, spread
    "chain": "bench_chain",  # the default chain's wall time, per-rule breakdown (benchmark: files)
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default all: {', '.join(BENCHMARKS)})"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.path.insert(0, str(HERE))
    out_dir = HERE / "output"
    out_dir.mkdir(exist_ok=True)
    for name in args.names or list(BENCHMARKS):
        module = importlib.import_module(BENCHMARKS[name])
        result = module.run(quick=args.quick)
        (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        logging.info("%s: %s", name, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
