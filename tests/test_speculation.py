"""N-gram speculation: the drafter alone, then the engine on the real model (argmax, KV cache, limits)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmkit.speculation import (
    CROWDED_MATCH,
    KEY,
    MAX_DRAFT,
    MAX_MATCH,
    MIN_MATCH,
    RECALL_TOKENS,
    Drafter,
    DraftLength,
    Recall,
)

# A copy-heavy prompt: a block of text, then the start of the same block again (to a line's end, so
# that the tokens match the first block's).
BLOCK = "\n".join(
    f"def handler_{i}(request):\n    return respond(request, status={200 + i}, body='item {i}')"
    for i in range(6)
)
COPY = f"Here is a file:\n{BLOCK}\n\nHere is the same file again:\n{BLOCK[: BLOCK.index('def', 9)]}"


# The drafter (pure) -------------------------------------------------------------------------


def test_a_draft_is_what_followed_the_latest_earlier_occurrence_of_a_long_match() -> None:
    text = list(range(10, 10 + MIN_MATCH))
    d = Drafter([*text, 1, 2, 3, 9, *text])
    assert d.match() == (MIN_MATCH, MIN_MATCH) and d.draft(3) == [1, 2, 3]
    d.extend([1, 2, 7, 5, *text])  # matched twice before: the latest occurrence wins
    assert d.draft(3) == [1, 2, 7]


def test_a_short_match_gives_no_draft_and_a_long_one_is_measured_back() -> None:
    # Common in prose: the last KEY tokens occurred before, but not the tokens before them.
    d = Drafter([1, 2, 3, 4, 5, 6, 7, 0, 0, 9, 3, 4, 5, 6])
    assert d.match() == (6, KEY) and d.draft(4) == []
    assert d.draft(4, min_match=KEY) == [7, 0, 0, 9]
    long = list(range(100, 100 + 2 * MAX_MATCH))
    assert Drafter([*long, 5, *long]).match()[1] == MAX_MATCH  # measured up to MAX_MATCH


def test_no_earlier_occurrence_gives_no_draft() -> None:
    assert Drafter(list(range(20))).draft(4) == []
    assert Drafter([]).draft(4) == [] and Drafter([1, 2] * 10).draft(0) == []


def test_a_repeating_pattern_is_continued_past_the_end_of_what_is_known() -> None:
    d = Drafter([5] + [1, 2] * MIN_MATCH)
    assert d.draft(5) == [1, 2, 1, 2, 1]


def test_a_long_match_drafts_half_its_length() -> None:
    long = list(range(100, 140))
    d = Drafter([*long, 5, *long[:30]])
    assert d.match()[1] == 30
    assert d.draft(4) == [*long[30:], 5, *long[:4]]  # 15 tokens: copying that far goes on
    longer = list(range(100, 100 + 2 * MAX_MATCH))
    assert len(Drafter([*longer, 5, *longer]).draft(4)) == min(MAX_DRAFT, MAX_MATCH // 2)


def test_a_sequence_drafts_from_a_recent_one_where_that_matches_longer() -> None:
    prompt, answer = list(range(100, 120)), list(range(500, 540))
    recall = Recall()
    recall.remember(Drafter([*prompt, *answer]))  # an earlier request, finished
    again = Drafter(prompt)
    assert again.draft(8) == []  # nothing repeats within the prompt alone
    drafted = again.draft(8, recall=recall)
    assert drafted == answer[: len(drafted)] and len(drafted) >= 8
    # Its own text wins where it matches longer; a recent sequence only drafts up to its end.
    own = Drafter([1, *answer, 7, 1, *answer[:30]])
    assert own.draft(4, recall=recall) == [*answer[30:], 7, 1, *answer[:3]]
    tail = Drafter([9, 9, *prompt, *answer[:36]])
    assert tail.draft(8, recall=recall) == answer[36:]


def test_recall_keeps_the_newest_sequences_within_its_capacity() -> None:
    recall = Recall(capacity=100)
    sequences = [Drafter(list(range(i * 1000, i * 1000 + 40))) for i in range(4)]
    for sequence in sequences:
        recall.remember(sequence)
    assert list(recall.recent()) == sequences[:1:-1] and recall.tokens == 80
    recall.remember(Drafter(list(range(101))))  # longer than all it keeps: not kept
    assert recall.tokens == 80 and RECALL_TOKENS >= 32768
    few = Recall(count=2)
    for sequence in sequences:
        few.remember(sequence)
    assert (
        list(few.recent()) == sequences[:1:-1]
    )  # each draft looks in all: their number is kept low


def test_draft_length_doubles_while_accepted_and_pauses_where_drafts_keep_failing() -> None:
    length = DraftLength()
    start = length.length(crowded=False)
    length.update(start, start)
    assert length.length(crowded=False) == 2 * start
    for _ in range(10):
        length.update(length.k, length.k)
    assert length.length(crowded=False) == MAX_DRAFT
    length.update(MAX_DRAFT, 10)  # a rejected draft restarts from what was accepted
    assert length.length(crowded=False) == 11
    for _ in range(DraftLength.MISSES):
        length.update(length.length(crowded=False), 0)
    paused = [length.length(crowded=False) for _ in range(8)]
    assert paused == [0] * 8  # text that stopped repeating stops paying for drafts
    # Each later pause is longer: failing drafts cost less and less.
    for _ in range(DraftLength.MISSES):
        length.update(max(1, length.length(crowded=False)), 0)
    assert length.pause > 8


def test_a_full_batch_drafts_less_and_only_where_drafts_pay() -> None:
    good, bad = DraftLength(k=8, rate=0.9), DraftLength(k=8, rate=0.2)
    assert good.length(crowded=True) == 4 and bad.length(crowded=True) == 0
    assert bad.length(crowded=False) == 8
    assert CROWDED_MATCH > MIN_MATCH  # and a crowded batch drafts only from longer matches


def test_the_benchmarks_copy_heavy_set_has_each_task_and_ordinary_text() -> None:
    import json

    from llmkit.bench.speculation import load_prompts

    path = Path(__file__).resolve().parent.parent / "scripts" / "copy_prompts.json"
    tasks = {p["task"] for p in json.loads(path.read_text())["copy"]}
    sets = load_prompts(path)
    assert tasks == {"repeat", "edit", "quotes"} and len(sets["ordinary"]) >= 1
    assert all(isinstance(p, str) and len(p) > 200 for p in sets["copy"])


# The engine on gemma ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma(gemma_gguf: Path) -> Iterator[Any]:
    import llama_cpp

    llama = llama_cpp.Llama(model_path=str(gemma_gguf), n_ctx=256, verbose=False, logits_all=False)
    yield llama
    llama.close()


def tokens(llama: Any, text: str) -> list[int]:
    return llama.tokenize(text.encode(), add_bos=True, special=True)  # type: ignore[no-any-return]


def engine(gemma: Any, **options: Any) -> Any:
    from llmkit.engine import Engine

    settings = {"parallel": 1, "slot_ctx": 1024, "threads": 2, "max_queue": 64, **options}
    return Engine(gemma.model, **settings)


def run(e: Any, prompt: list[int], **params: Any) -> tuple[list[Any], str, str | None]:
    """One choice: its token logprobs (token ids with their top alternatives), text, finish."""
    from llmkit.engine import Choice, Delta
    from llmkit.sampling import SamplingParams

    options = {"temperature": 0, "max_tokens": 64, "logprobs": 2, **params}
    job = e.submit([Choice(prompt, SamplingParams(**options))])
    out, text, finish = [], "", None
    for item in job.events(timeout=120):
        if isinstance(item, Delta):
            out += item.logprobs or []
            text += item.text
            finish = item.finish_reason or finish
    return out, text, finish


@pytest.mark.slow
def test_every_accepted_greedy_token_is_the_argmax_and_the_text_equals_plain_decoding(
    gemma: Any,
) -> None:
    prompt = tokens(gemma, COPY)
    plain, fast = engine(gemma, speculation=False), engine(gemma)
    try:
        expected, expected_text, _ = run(plain, prompt)
        got, got_text, _ = run(fast, prompt)
        assert fast.tokens_draft_accepted > 10  # it did speculate, and drafts were accepted
        assert plain.tokens_drafted == 0
    finally:
        plain.close()
        fast.close()
    for position in got:  # the argmax of the logits row it was verified on
        assert position.logprob == pytest.approx(position.top[0][1], abs=1e-6)
    assert_same_greedy(got, expected)
    if [a.token for a in got] == [b.token for b in expected]:
        assert got_text == expected_text


@pytest.mark.slow
def test_rejected_drafts_leave_a_consistent_cache_for_a_follow_up_that_reuses_the_prefix(
    gemma: Any,
) -> None:
    import llama_cpp

    # A repeated sentence is drafted again, and " mat", which every draft of it holds, is banned:
    # the drafts are rejected there whatever this CPU's rounding makes of the rest.
    prompt = tokens(
        gemma, "The cat sat on the mat. The cat sat on the mat. The cat sat on the mat. The cat sat"
    )
    (mat,) = gemma.tokenize(b" mat", add_bos=False, special=False)
    fast, plain = engine(gemma), engine(gemma, speculation=False)
    try:
        first, _, _ = run(fast, prompt, max_tokens=48, logit_bias={mat: -100.0})
        assert mat not in [p.token for p in first]
        assert fast.tokens_drafted > fast.tokens_draft_accepted  # some drafts were rejected
        # The cache holds exactly the slot's tokens: no rejected draft's cell is left behind.
        slot = fast._slots[0]
        assert llama_cpp.llama_memory_seq_pos_max(fast.memory, 0) == len(slot.cached) - 1
        assert slot.cached == prompt + [p.token for p in first][: len(slot.cached) - len(prompt)]
        follow_up = prompt + [p.token for p in first] + tokens(gemma, " Again:")[1:]
        cached_before = fast.prompt_tokens_cached
        again, _, _ = run(fast, follow_up, max_tokens=24, speculation=False)
        assert fast.prompt_tokens_cached - cached_before >= len(prompt)  # it reused the slot
        fresh, _, _ = run(plain, follow_up, max_tokens=24)
    finally:
        fast.close()
        plain.close()
    assert_same_greedy(again, fresh)


@pytest.mark.slow
def test_with_draft_from_recent_a_request_again_is_drafted_from_the_earlier_answer(
    gemma: Any,
) -> None:
    prompt = tokens(gemma, "Write a short essay about bees.\n\nEssay:\n")
    default = engine(gemma)
    assert default.recall is None  # only when asked for
    default.close()
    fast = engine(gemma, draft_from_recent=True)
    try:
        first, _, _ = run(fast, prompt, max_tokens=48)
        calls, accepted = fast.decode_calls, fast.tokens_draft_accepted
        assert fast.recall.tokens == len(prompt) + len(first) - 1  # all but the last token
        second, _, _ = run(fast, prompt, max_tokens=48)
        assert fast.tokens_draft_accepted - accepted >= 16  # copied from the first answer
        assert fast.decode_calls - calls < 0.75 * calls
        kept = fast.recall.tokens
        run(fast, tokens(gemma, "The moon is"), max_tokens=8, speculation=False)
        assert fast.recall.tokens == kept  # a request without speculation is not remembered
    finally:
        fast.close()
    # Each token is still the argmax of its row; where the texts part, a batch of drafts rounded
    # a near tie the other way (the first request decoded its opening token by token).
    for position in second:
        assert position.logprob == pytest.approx(position.top[0][1], abs=1e-6)
    assert [p.token for p in second[:6]] == [p.token for p in first[:6]]


def assert_same_greedy(got: list[Any], expected: list[Any]) -> None:
    """The same tokens, but where a near tie (a different batch shape's rounding) went the other way."""
    for i, (a, b) in enumerate(zip(got, expected, strict=False)):
        if a.token != b.token:
            gap = b.top[0][1] - b.top[1][1]
            assert gap < 0.05, f"differs at token {i} with a logit gap of {gap}"
            return
    assert len(got) == len(expected)


@pytest.mark.slow
def test_drafts_never_push_a_step_past_n_batch_or_a_slot_past_its_context(gemma: Any) -> None:
    import llama_cpp

    prompt = tokens(gemma, COPY)
    slot_ctx = len(prompt) + 40
    e = engine(gemma, parallel=2, n_batch=8, slot_ctx=slot_ctx)
    try:
        from llmkit.engine import Choice
        from llmkit.sampling import SamplingParams

        params = SamplingParams(temperature=0, max_tokens=None, min_tokens=10**9)
        jobs = [e.submit([Choice(prompt, params)]) for _ in range(2)]
        finishes = []
        for job in jobs:
            finishes += [i.finish_reason for i in job.events(timeout=120) if hasattr(i, "index")]
            # As without drafts: the last token is never decoded, the cache holds slot_ctx - 1.
            assert job.usage.prompt_tokens + job.usage.completion_tokens <= slot_ctx
        assert finishes.count("length") == 2
        assert e.tokens_drafted > 0 and e.batch_tokens_max <= 8
        for seq in (0, 1):
            assert llama_cpp.llama_memory_seq_pos_max(e.memory, seq) < slot_ctx
    finally:
        e.close()


@pytest.mark.slow
def test_grammar_constrained_output_speculates_only_with_drafts_the_grammar_accepts(
    gemma: Any,
) -> None:
    import json

    from llmkit.grammar import schema_grammar

    schema = {
        "type": "object",
        "properties": {"quote": {"type": "string", "maxLength": 120}},
        "required": ["quote"],
        "additionalProperties": False,
    }
    line = '{"quote": "The lighthouse keeper climbed the spiral stairs every evening at dusk."}'
    prompt = tokens(gemma, f"Say {line} again.\n{line}\n{line}\n")
    plain, fast = engine(gemma, speculation=False), engine(gemma)
    try:
        grammar = schema_grammar(schema)
        _, expected, _ = run(plain, prompt, grammar=grammar, max_tokens=40)
        _, got, _ = run(fast, prompt, grammar=grammar, max_tokens=40)
        assert fast.tokens_draft_accepted > 0  # it did speculate under the grammar
    finally:
        plain.close()
        fast.close()
    assert json.loads(got) == json.loads(expected) and set(json.loads(got)) == {"quote"}


@pytest.mark.slow
def test_tokens_a_schema_forces_are_decoded_together_unsampled_and_the_output_stays_valid(
    gemma: Any,
) -> None:
    import json

    from llmkit.grammar import schema_grammar

    keys = ("customer_full_legal_name", "customer_home_city_of_residence", "preferred_contact_hour")
    schema = {
        "type": "object",
        "properties": {
            keys[0]: {"type": "string", "maxLength": 24},
            keys[1]: {"type": "string", "maxLength": 24},
            keys[2]: {"type": "integer", "minimum": 0, "maximum": 23},
        },
        "required": list(keys),
        "additionalProperties": False,
    }
    prompt = tokens(gemma, "A customer record as JSON:\n")
    plain, fast = engine(gemma, speculation=False), engine(gemma)
    try:
        grammar = schema_grammar(schema)
        for seed in range(3):
            _, expected, _ = run(plain, prompt, grammar=grammar, max_tokens=96, seed=seed)
            got, text, finish = run(fast, prompt, grammar=grammar, max_tokens=96, seed=seed,
                                    temperature=1.0, logprobs=None)  # fmt: skip
            assert finish == "stop" and list(json.loads(text)) == list(keys)
            assert list(json.loads(expected)) == list(keys)
        assert fast.tokens_forced > 30  # the keys, quotes and punctuation, three times
        # Forced tokens share a step: fewer decodes than tokens (plain decodes one a token). An
        # n-gram draft may join them where a sampled value repeats the prompt (on some CPUs it
        # does): its accepted tokens share their step too, and are counted apart from the forced.
        saved = fast.tokens_forced + fast.tokens_draft_accepted
        assert fast.decode_calls < fast.tokens_generated - saved + 10
        assert plain.decode_calls >= plain.tokens_generated
    finally:
        plain.close()
        fast.close()


@pytest.mark.slow
def test_sampling_at_a_temperature_keeps_its_distribution_with_speculation(gemma: Any) -> None:
    prompt = tokens(gemma, COPY)
    plain, fast = engine(gemma, speculation=False), engine(gemma)
    counts: dict[bool, Counter[tuple[int, ...]]] = {False: Counter(), True: Counter()}
    try:
        for seed in range(60):
            for e, on in ((plain, False), (fast, True)):
                got, _, _ = run(e, prompt, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                                seed=seed, max_tokens=6, logprobs=0)  # fmt: skip
                counts[on][tuple(p.token for p in got[1:4])] += 1  # the first is never drafted
        assert fast.tokens_draft_accepted > 0  # drafts were verified by sampling
    finally:
        plain.close()
        fast.close()
    statistic, df = _chi_square(counts[False], counts[True])
    assert statistic < _chi_square_critical(df), (statistic, df, counts)


def _chi_square(a: Counter[Any], b: Counter[Any]) -> tuple[float, int]:
    """Two-sample chi-square over the categories, the rare ones (< 5 expected) pooled."""
    total_a, total_b = sum(a.values()), sum(b.values())
    common, rare_a, rare_b = [], 0, 0
    for key in set(a) | set(b):
        if a[key] + b[key] >= 10:
            common.append((a[key], b[key]))
        else:
            rare_a, rare_b = rare_a + a[key], rare_b + b[key]
    if rare_a + rare_b:
        common.append((rare_a, rare_b))
    statistic = 0.0
    for x, y in common:
        n = x + y
        for observed, total in ((x, total_a), (y, total_b)):
            expected = n * total / (total_a + total_b)
            statistic += (observed - expected) ** 2 / expected
    return statistic, max(1, len(common) - 1)


def _chi_square_critical(df: int, z: float = 3.09) -> float:
    """The p = 0.001 critical value (Wilson-Hilferty)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.mark.slow
def test_metrics_count_drafted_and_accepted_tokens_and_a_request_can_turn_drafts_off(
    llmkit_server: Any,
) -> None:
    from tests.helpers import scrape

    drafted = "llmkit_spec_decode_draft_tokens_total{model=gemma-3-270m}"
    accepted = "llmkit_spec_decode_accepted_tokens_total{model=gemma-3-270m}"
    body = {"model": "m", "prompt": COPY, "max_tokens": 48, "temperature": 0}
    before = scrape(llmkit_server)
    plain = llmkit_server.completions.create(**body, extra_body={"speculation": False})
    between = scrape(llmkit_server)
    fast = llmkit_server.completions.create(**body)
    after = scrape(llmkit_server)
    assert between[drafted] == before[drafted]  # speculation: false drafts nothing
    assert after[drafted] > between[drafted] and after[accepted] > between[accepted]
    assert after[accepted] <= after[drafted]
    assert fast.choices[0].text[:40] == plain.choices[0].text[:40]


# The benchmark ------------------------------------------------------------------------------


def test_the_first_difference_is_the_first_token_that_differs_with_its_logit_gap() -> None:
    from types import SimpleNamespace

    from llmkit.bench.speculation import first_difference

    def logprobs(tokens: list[str], top: list[dict[str, float]]) -> Any:
        return SimpleNamespace(tokens=tokens, top_logprobs=top)

    top = [{"a": -0.1, "b": -3.0}, {"c": -0.7, "d": -0.75}]
    same = logprobs(["a", "c"], top)
    assert first_difference(same, same) is None
    found = first_difference(logprobs(["a", "d"], top), same)
    assert found is not None and found["token"] == 1 and found["without"] == "c"
    assert found["logit gap"] == pytest.approx(0.05)
    assert first_difference(logprobs(["a"], top), same) == {"token": 1, "lengths": [1, 2]}


@pytest.mark.slow
def test_the_speculation_benchmark_measures_every_set_and_states_each_ratio(
    tmp_path: Path, server_models_dir: Path
) -> None:
    import json

    from llmkit.bench import speculation

    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"copy": [COPY], "ordinary": ["The sea is"]}))
    result = speculation.run(
        "gemma-3-270m", prompts, clients=2, repeats=1, max_tokens=12, models_dir=server_models_dir
    )
    ratios = result["ratios"]
    for label in ("copy, 1 client", "copy, 2 clients", "ordinary, 1 client", "ordinary, 2 clients"):
        assert ratios[f"{label}: speculation / no speculation"] > 0
        assert ratios[f"{label}: speculation + recent / no speculation"] > 0
    assert ratios["JSON schema / free text, speculation"] > 0
    assert result["copy_texts_equal"] in ("0 of 1", "1 of 1")
    assert (result["copy_texts_equal"] == "1 of 1") == (result["first_differences"] == {})
