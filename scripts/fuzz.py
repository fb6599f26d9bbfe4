#!/usr/bin/env python3
"""Fuzz `llmkit serve` with schemathesis over the server's own /openapi.json, then check it lives.

    pip install schemathesis && scripts/fuzz.py                 # smollm2-135m-instruct, seed 1
    scripts/fuzz.py --max-examples 100 --seed 7 --model PATH.gguf
    scripts/fuzz.py --max-examples 5 --include-path /v1/completions   # the rest: schemathesis'
    scripts/fuzz.py --exclude-path /v1/completions --ctx 128   # room for chat's system prompt

Every phase runs (examples, coverage, fuzzing, stateful), with valid and invalid data. The checks
are the ones the server promises: no 5xx, statuses and content types as documented, response
bodies matching their schema, and the request bodies as documented: schema-valid data accepted
(positive_data_acceptance), schema-invalid data refused (negative_data_rejection). The request
schemas are llmkit.server.bodies' models, bounds and all, with what JSON Schema can say between fields
(top_logprobs needs logprobs: true, best_of is 1 or n, tool_choice needs tools, ...).

What JSON Schema cannot say is excused, narrowly, from positive_data_acceptance only (a 400 whose
message is one of EXCUSED below; any other 400 on valid data still fails): a grammar or a
response_format JSON schema that does not compile; a tool's parameters that are no JSON schema
llguidance compiles; tool names that repeat; a tool_choice naming a tool not offered; messages
the chat template refuses (gemma's: roles must alternate user/assistant); a prompt, or prompt plus
max_tokens, longer than the context; an embedding input longer than the embedding context; an
empty prompt to a model with no BOS token; a Messages request whose last message is the
assistant's (prefill, refused; JSON Schema cannot point at the last item); a completion with echo
and logprobs and n above 1 (JSON Schema can say it, as one more anyOf beside best_of's, but then
schemathesis generates nothing for /v1/completions at all); prompts × n over what the server
holds in one request (its slots and queue: a product JSON Schema cannot bound).
Exits 1 if anything failed or if the server stopped answering /health.

The model is the tiny instruct one, which ends its answers (a base model writes to the context),
with 64-token slots: schema-valid requests ask for up to 16 choices each. Even so the whole run is
long (the coverage phase of /v1/completions alone sends some 2,400 requests, 35 minutes on 2
cores): run it alone, or an operation at a time with --include-path.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmkit import launcher  # noqa: E402

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
    "valid_data_accepted,negative_data_rejection"
)
# The server's own words for a request that JSON Schema calls valid and that cannot be honoured.
EXCUSED = re.compile(
    r"^(grammar: |response_format: |grammar cannot be enforced|response_format cannot be enforced"
    r"|(tools|functions|input|text\.format)\S*parameters: |tools\S*input_schema: |text\.format: "
    r"|two (tools|functions) are named |(tool_choice|function_call) names "
    r"|the model's chat template refused these messages"
    r"|messages\[\d+\]: the last message is the assistant's"
    r"|the prompt is \d+ tokens; this server's context holds |.* longer than the embedding context"
    r"|the prompt is \d+ bytes, more than this server's context holds "
    r"|the prompt is empty, and this model has no BOS token"
    r"|echo with logprobs takes n: 1 "
    r"|this request has \d+ choices \(prompts × n\); this server takes at most \d+ in one request)"
)


def excused(status: int, body: bytes) -> bool:
    """Whether a 400 on schema-valid data is one JSON Schema cannot foresee (EXCUSED)."""
    if status != 400:
        return False
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return False
    return bool(EXCUSED.match(message))


def _register() -> None:
    """schemathesis' positive_data_acceptance as the check `valid_data_accepted`, but for the
    400s excused(); loaded by schemathesis through SCHEMATHESIS_HOOKS=fuzz."""
    import schemathesis
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    @schemathesis.check
    def valid_data_accepted(ctx, response, case):  # type: ignore[no-untyped-def]
        if excused(response.status_code, response.content):
            return None
        return positive_data_acceptance(ctx, response, case)


if __name__ != "__main__":
    _register()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--max-examples", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--ctx", type=int, default=64, help="tokens a slot (64; chat's default system prompt "
        "fills much of that, so chat runs best at 128)",
    )  # fmt: skip
    args, passed_on = parser.parse_known_args()  # the rest goes to schemathesis run
    # A short context keeps every generated request quick (schema-valid data may ask for n=16
    # choices of max_tokens past the context: at 256 tokens a slot such a request took minutes);
    # four slots exercise batching.
    with launcher.serve(args.model, ctx=args.ctx, parallel=4, threads=2) as client:
        root = str(client.base_url).removesuffix("/").removesuffix("/v1")
        run = subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli", "run", f"{root}/openapi.json",
                "--checks", CHECKS, "--max-examples", str(args.max_examples),
                "--seed", str(args.seed), "--workers", "1", "--request-timeout", "120",
                *passed_on,
            ],
            env={
                **os.environ,
                "SCHEMATHESIS_HOOKS": "fuzz",
                "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")]),
            },
            check=False,
        )  # fmt: skip
        with urllib.request.urlopen(f"{root}/health", timeout=10) as health:
            alive = health.status == 200
    print(f"server still serving after the run: {'yes' if alive else 'NO'}")
    return 0 if run.returncode == 0 and alive else 1


if __name__ == "__main__":
    sys.exit(main())
