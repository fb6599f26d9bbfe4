#!/usr/bin/env python3
"""Benchmark `llmkit serve` against its own engine in-process (no HTTP) and other servers.

The same as `llmkit bench` (the code is in llmkit/bench/); `--help` lists the options.

    scripts/bench.py                                   # gemma-3-270m, 2 threads, median of 3
    scripts/bench.py --quick --json /tmp/bench.json    # a smoke run in under a minute
    scripts/bench.py --peer-url llama-server=http://127.0.0.1:8081 --plot docs/bench.png
"""

import sys
from pathlib import Path

# Run from a checkout, the checkout's llmkit is the one measured.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmkit.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.argv[1:1] = ["bench"]
    main()
