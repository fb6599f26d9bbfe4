"""logprobs: each token's log-probability under the model, checked against llama.cpp's own logits."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import numpy as np
import openai
import pytest

from llmkit.logprobs import at
from tests.helpers import chat

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"


def test_logprobs_are_a_log_softmax_with_the_best_alternatives_first() -> None:
    logits = np.array([2.0, 1.0, 0.5, -3.0], dtype=np.float32)
    entry = at(logits, 1, 3)
    expected = np.log(np.exp(logits) / np.exp(logits).sum())
    assert entry.logprob == pytest.approx(expected[1], abs=1e-6)
    assert [t for t, _ in entry.top] == [0, 1, 2]
    assert [lp for _, lp in entry.top] == pytest.approx(list(expected[:3]), abs=1e-6)
    huge = np.array([1e4, -1e4], dtype=np.float32)  # never -inf, never NaN
    assert math.isfinite(at(huge, 1, 1).logprob or 0.0)


@pytest.fixture(scope="module")
def reference(gemma_gguf: Path) -> Iterator[tuple[list[int], np.ndarray]]:
    """The prompt's tokens and llama.cpp's log-softmax after each, computed in this process.

    With flash attention, as the engine's context has it (llama.cpp's default, "auto", turns it
    on here): without, the logits differ by up to a few tenths of a nat."""
    llama = llama_cpp.Llama(
        model_path=str(gemma_gguf),
        n_ctx=256,
        logits_all=True,
        verbose=False,
        n_threads=2,
        flash_attn=True,
    )
    tokens = llama.tokenize(PROMPT.encode(), add_bos=True, special=True)
    llama.eval(tokens)
    scores = np.array(llama.scores[: len(tokens)], dtype=np.float64)
    llama.close()
    peak = scores.max(axis=1, keepdims=True)
    log_softmax = scores - peak - np.log(np.exp(scores - peak).sum(axis=1, keepdims=True))
    yield tokens, log_softmax


def test_the_best_tokens_are_those_of_a_full_sort_whatever_the_logits() -> None:
    import numpy as np

    from llmkit.logprobs import best_tokens

    rng = np.random.default_rng(1)
    cases = [(rng.standard_normal(262144) * scale).astype(np.float32) for scale in (0.01, 1.0, 8.0)]
    peaked = np.full(262144, -50.0, np.float32)
    peaked[[7, 70_000, 262_143]] = [3.0, 2.0, 1.0]  # the last one past every whole chunk
    cases += [peaked, rng.standard_normal(3000).astype(np.float32)]  # a small vocabulary
    for logits in cases:
        for top in (1, 5, 20):
            expected = np.argsort(logits, kind="stable")[::-1][:top]
            assert list(logits[best_tokens(logits, top)]) == list(logits[expected])
    assert list(best_tokens(peaked, 3)) == [7, 70_000, 262_143]


def test_completions_with_echo_give_the_prompts_logprobs_as_llama_cpp_computes_them(
    llmkit_server: openai.OpenAI, reference: tuple[list[int], np.ndarray]
) -> None:
    tokens, log_softmax = reference
    response = llmkit_server.completions.create(
        model="x", prompt=PROMPT, max_tokens=3, temperature=0, logprobs=2, echo=True
    )
    lp = response.choices[0].logprobs
    assert lp is not None and lp.token_logprobs and lp.top_logprobs and lp.tokens
    n = len(tokens)
    assert len(lp.tokens) == n + 3 == len(lp.token_logprobs) == len(lp.text_offset or [])
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing before it
    for i in range(1, n):  # prompt token i, from the logits after token i - 1
        assert lp.token_logprobs[i] == pytest.approx(log_softmax[i - 1, tokens[i]], abs=0.01)
    # The first generated token (greedy): the argmax after the whole prompt.
    assert lp.token_logprobs[n] == pytest.approx(log_softmax[n - 1].max(), abs=0.01)
    assert "".join(lp.tokens) == response.choices[0].text
    assert all(len(top) == 2 for top in lp.top_logprobs[1:] if top is not None)


def test_chat_logprobs_list_every_generated_token_streamed_or_not(
    llmkit_server: openai.OpenAI,
) -> None:
    response = chat(
        llmkit_server, "Say hi", max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
    )
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    assert "".join(e.token for e in content) == response.choices[0].message.content
    for entry in content:
        assert math.isfinite(entry.logprob) and entry.logprob <= 0
        assert bytes(entry.bytes or []).decode(errors="replace") == entry.token
        alternatives = [t.logprob for t in entry.top_logprobs]
        assert len(alternatives) == 3 and alternatives == sorted(alternatives, reverse=True)
        assert entry.logprob == pytest.approx(alternatives[0])  # greedy picks the best
    stream = chat(
        llmkit_server,
        "Say hi",
        max_tokens=8,
        temperature=0,
        logprobs=True,
        stream=True,
        stream_options={"include_usage": True},
    )
    streamed, usage = [], None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            if choice.logprobs and choice.logprobs.content:
                streamed += choice.logprobs.content
    assert usage is not None and len(streamed) == usage.completion_tokens
    assert [e.token for e in streamed] == [e.token for e in content]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ],
)
def test_bad_chat_logprobs_requests_are_400s(
    llmkit_server: openai.OpenAI, kwargs: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        chat(llmkit_server, "Hi", max_tokens=1, **kwargs)
    assert caught.value.body["param"] == param  # type: ignore[index]


def test_completions_cap_logprobs_at_five(llmkit_server: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="logprobs: .*than or equal to 5"):
        llmkit_server.completions.create(model="x", prompt="Hi", max_tokens=1, logprobs=6)


# More tokens than a batch holds (512): decoded in pieces of as many rows as the context reserves.
LONG_PROMPT = " ".join(f"word{i}" for i in range(160))
# What a request's own Python objects (its logprobs, the response) and the allocator may add to
# the process, beyond the logits llama.cpp holds.
RSS_MARGIN = 32 * 1024 * 1024


def rss(pid: int) -> int:
    """The process's resident memory (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_long_prompts_logprobs_stay_in_the_memory_the_plan_counts_and_are_llama_cpps(
    server_models_dir: Path, gemma_gguf: Path
) -> None:
    import llmkit
    from llmkit.engine import DEFAULT_N_BATCH
    from llmkit.engine.context import logit_rows
    from llmkit.modelinfo import read_model_info
    from tests.helpers import clean_env

    # A server of its own: the session's may have grown its buffers already.
    with llmkit.serve(
        "gemma-3-270m",
        threads=2,
        ctx=4096,
        offline=True,
        env=clean_env(LLMKIT_MODELS_DIR=str(server_models_dir)),
    ) as client:
        pid = client.llmkit_process.pid  # type: ignore[attr-defined]
        # The same prompt without logprobs first: what any long prompt takes (activations).
        client.completions.create(model="x", prompt=LONG_PROMPT, max_tokens=1)
        before = rss(pid)
        response = client.completions.create(
            model="x", prompt=LONG_PROMPT, max_tokens=1, temperature=0, logprobs=1, echo=True
        )
        grown = rss(pid) - before
    info = read_model_info(gemma_gguf)
    counted = info.logits_bytes(logit_rows(4, info.n_vocab, DEFAULT_N_BATCH))
    # 128 MiB for Gemma 3; it grew by over 1 GiB when a decode had a row for each of 512 tokens.
    assert grown < counted + RSS_MARGIN, f"grew {grown / 2**20:.0f} MiB"

    llama = llama_cpp.Llama(
        model_path=str(gemma_gguf),
        n_ctx=1024,
        logits_all=True,
        verbose=False,
        n_threads=2,
        flash_attn=True,
    )
    tokens = llama.tokenize(LONG_PROMPT.encode(), add_bos=True, special=True)
    llama.eval(tokens)
    expected = []
    for i in range(1, len(tokens)):  # one row at a time: the whole log-softmax would be 1 GB
        row = np.asarray(llama.scores[i - 1], dtype=np.float64)
        peak = row.max()
        expected.append(row[tokens[i]] - peak - np.log(np.exp(row - peak).sum()))
    llama.close()
    lp = response.choices[0].logprobs
    assert lp is not None and lp.token_logprobs is not None
    assert len(tokens) > DEFAULT_N_BATCH and response.usage.prompt_tokens == len(tokens)
    assert lp.token_logprobs[1 : len(tokens)] == pytest.approx(expected, abs=0.01)
