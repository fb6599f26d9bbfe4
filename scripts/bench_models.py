#!/usr/bin/env python3
"""The several-models benchmark (issue 28): SmolLM2 and Gemma 270M behind one llmkit serve.

Alternating requests under a budget that holds one model and under one that holds both, 8
concurrent requests for an unloaded model, a long stream while the other model is asked for. The
logic is in llmkit/bench/models.py; it needs llmkit[tiny] (no network).

    scripts/bench_models.py --json bench-models.json
"""

import argparse
import sys
from pathlib import Path

# Run from a checkout, the checkout's llmkit is the one measured.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmkit.bench.models import report, run_benchmark, save  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    parser.add_argument("--quiet", action="store_true", help="No line per request.")
    args = parser.parse_args()
    figures = run_benchmark(
        threads=args.threads,
        log=(lambda _: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True)),
    )
    print(report(figures))
    if args.json:
        save(figures, args.json)


if __name__ == "__main__":
    main()
