#!/usr/bin/env python3
"""llmkit with n-gram speculation against llmkit without, on the copy-heavy set and ordinary text.

    scripts/bench_speculation.py                       # gemma-3-270m, 1 and 4 clients, median of 3
    scripts/bench_speculation.py --repeats 1 --max-tokens 64
    scripts/bench_speculation.py --peer-url "llama-server=http://127.0.0.1:18802" \
        --peer-url "llama-server ngram-mod=http://127.0.0.1:18803"

Prints each median tokens/s, the ratios (speculation / none, / each peer; JSON schema / free text)
and whether the copy set's texts at temperature 0 are the same (where not: the first differing
token and the logit gap there); the prompts are scripts/copy_prompts.json. Peers are started by
hand (README, Performance), with `--parallel` slots as the clients (`-np 4`).
"""

import argparse
import json
import sys
from pathlib import Path

# Run from a checkout, the checkout's llmkit is the one measured.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmkit.bench import speculation  # noqa: E402
from llmkit.bench.config import parse_peer  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--prompts", type=Path, default=Path(__file__).with_name("copy_prompts.json")
    )
    parser.add_argument("--peer-url", action="append", default=[], metavar="[NAME=]URL")
    args = parser.parse_args()
    report = speculation.run(
        args.model,
        args.prompts,
        threads=args.threads,
        clients=args.clients,
        repeats=args.repeats,
        max_tokens=args.max_tokens,
        peers=[parse_peer(p) for p in args.peer_url],
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    print(json.dumps(report, indent=2))
