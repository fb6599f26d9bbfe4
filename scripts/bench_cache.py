#!/usr/bin/env python3
"""The prompt-cache benchmark (issue 29): llmkit with its prompt cache, without it, and llama-server.

16 conversations, each with its own ~1,500-token document, 3 turns rotating over 4 slots, then a
restart of each server and a 4th turn; time to first token by turn. The logic is in
llmkit/bench/cache.py.

    scripts/bench_cache.py --model /tmp/gemma.gguf --chat-format gemma --llama-server /path/to/llama-server
    scripts/bench_cache.py --model /tmp/gemma.gguf --chat-format gemma --conversations 4   # a quick run, llmkit only
"""

import argparse
import sys
from pathlib import Path

# Run from a checkout, the checkout's llmkit is the one measured.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmkit.bench.cache import report, run_benchmark, save  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="The GGUF both servers load.")
    parser.add_argument("--llama-server", help="llama-server's binary (omit: llmkit only).")
    parser.add_argument("--conversations", type=int, default=16)
    parser.add_argument(
        "--words", type=int, default=1100, help="Words per document (~1,500 tokens)."
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument(
        "--chat-format", help="For a GGUF without a chat template (gemma for gemma-3-270m)."
    )
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    parser.add_argument("--quiet", action="store_true", help="No line per request.")
    args = parser.parse_args()
    figures = run_benchmark(
        args.model,
        args.llama_server,
        conversations=args.conversations,
        words=args.words,
        threads=args.threads,
        parallel=args.parallel,
        max_tokens=args.max_tokens,
        chat_format=args.chat_format,
        log=(lambda _: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True)),
    )
    print(report(figures))
    if args.json:
        save(figures, args.json)


if __name__ == "__main__":
    main()
