"""Slots and context sized to the memory: `plan.size_slots` with given memory figures (no model),
and what `plan` counts for a real one."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmkit.errors import NotEnoughSpace
from llmkit.plan import USEFUL_CTX, kv_cells, size_slots

MB = 1_000_000
GB = 1000 * MB
# Llama-2-7B Q4_K_M: 4.1 GB of weights, 32 layers x 32 KV heads x (128 + 128) x 2 bytes a token.
LLAMA_7B = {"fixed_bytes": int(4.1 * GB), "kv_bytes_per_token": 32 * 32 * 256 * 2}


def sized(available: float | None, **given: int | None):  # type: ignore[no-untyped-def]
    return size_slots(
        **LLAMA_7B,
        available=None if available is None else int(available),
        trained_ctx=4096,
        **given,
    )


def test_with_room_to_spare_the_defaults_are_four_slots_of_the_models_context() -> None:
    chosen = sized(64 * GB)
    assert (chosen.parallel, chosen.n_ctx) == (4, 4096)
    assert "4 slots" in chosen.reason and "64.0 GB available" in chosen.reason


def test_less_memory_gives_fewer_slots_first_then_a_shorter_context() -> None:
    per_token = LLAMA_7B["kv_bytes_per_token"]
    # Room for exactly 2 slots of the useful context and a little more: 2 slots, not 4 short ones.
    available = LLAMA_7B["fixed_bytes"] + 2 * USEFUL_CTX * per_token + 300 * per_token
    chosen = sized(available)
    assert chosen.parallel == 2
    assert USEFUL_CTX <= chosen.n_ctx < 4096 and chosen.n_ctx % 256 == 0
    assert LLAMA_7B["fixed_bytes"] + 2 * chosen.n_ctx * per_token <= available
    assert "2 of 4 slots" in chosen.reason and "the longest that fits" in chosen.reason


def test_the_chosen_plan_always_fits_and_is_the_most_slots_that_do() -> None:
    per_token = LLAMA_7B["kv_bytes_per_token"]
    for gb in (5.3, 6, 7, 8, 9, 10, 12, 16):
        chosen = sized(gb * GB)
        assert LLAMA_7B["fixed_bytes"] + chosen.parallel * chosen.n_ctx * per_token <= gb * GB
        more = chosen.parallel + 1
        if chosen.parallel < 4:  # one more slot of the useful context would not have fitted
            assert LLAMA_7B["fixed_bytes"] + more * USEFUL_CTX * per_token > gb * GB


def test_one_slot_of_a_useful_context_not_fitting_is_refused_in_one_line() -> None:
    with pytest.raises(NotEnoughSpace) as refused:
        sized(5 * GB)
    message = str(refused.value)
    assert "1 slot of 2048 tokens" in message and "\n" not in message


def test_a_model_with_a_short_context_is_useful_at_its_own() -> None:
    chosen = size_slots(
        fixed_bytes=300 * MB, kv_bytes_per_token=1000, available=400 * MB, trained_ctx=1024
    )
    assert (chosen.parallel, chosen.n_ctx) == (4, 1024)


def test_explicit_flags_are_kept_or_refused_never_changed() -> None:
    assert (sized(64 * GB, parallel=8, ctx=4096).parallel, sized(64 * GB, ctx=512).n_ctx) == (
        8,
        512,
    )
    chosen = sized(8 * GB, parallel=1)  # one slot asked: the context is what is sized
    assert chosen.parallel == 1 and chosen.n_ctx == 4096
    chosen = sized(7 * GB, ctx=4096)  # a context asked: the slots are sized
    assert chosen.n_ctx == 4096 and chosen.parallel == 1
    with pytest.raises(NotEnoughSpace):
        sized(8 * GB, parallel=4, ctx=4096)
    with pytest.raises(NotEnoughSpace):
        sized(5 * GB, parallel=2)  # not shrunk to one slot
    with pytest.raises(NotEnoughSpace):
        sized(6 * GB, ctx=16384)  # not shortened


def test_unknown_memory_takes_the_defaults_unchecked() -> None:
    chosen = sized(None)
    assert (chosen.parallel, chosen.n_ctx) == (4, 4096) and "memory not known" in chosen.reason


def test_a_q8_cache_takes_about_half_the_memory_of_f16() -> None:
    from llmkit.modelinfo import KV_BYTES_PER_VALUE

    assert KV_BYTES_PER_VALUE["q8_0"] / KV_BYTES_PER_VALUE["f16"] == pytest.approx(0.53, abs=0.01)


def test_the_logits_of_one_decode_fit_their_budget_whatever_the_vocabulary() -> None:
    from llmkit.engine.context import LOGITS_BYTES_MAX, logit_rows
    from llmkit.modelinfo import ModelInfo

    gemma = ModelInfo(Path("gemma.gguf"), 253 * MB, "gemma3", 32768, 18, 1, 256, 256, None, 262_144)
    # Gemma 3: 64 rows of 262,144 floats, twice (128 MiB, where 512 rows were 1 GiB); Llama 2's
    # 32,000 tokens fit a whole batch of 512.
    assert logit_rows(4, gemma.n_vocab, 512) == 64
    assert gemma.logits_bytes(64) == 2 * LOGITS_BYTES_MAX
    assert logit_rows(4, 32_000, 512) == 512
    assert logit_rows(4, 32_000, 256) == 256  # never more than a batch holds
    assert logit_rows(4, 2_000_000, 512) == 16  # a floor, that prompt logprobs still advance
    assert logit_rows(100, gemma.n_vocab, 512) == 100  # every slot generating needs its row


def test_the_plan_counts_the_logits_in_what_the_model_needs(
    gemma_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmkit.embeddings import embedding_context_bytes
    from llmkit.modelinfo import OVERHEAD_BYTES, read_model_info
    from llmkit.plan import plan
    from llmkit.settings import ServeSettings
    from llmkit.sizes import human_size

    monkeypatch.setenv("LLMKIT_SKIP_MEMORY_CHECK", "1")
    config = ServeSettings(
        model=str(gemma_gguf),
        chat_format="gemma",
        offline=True,
        ctx=2048,
        cache_ram="0",
        no_cache_disk=True,
    )
    info = read_model_info(gemma_gguf)
    logits = 2 * 64 * info.n_vocab * 4  # 64 rows: LOGITS_BYTES_MAX's share of Gemma 3's
    embedding = info.kv_cache_bytes(2048) + embedding_context_bytes(info.n_vocab)
    fixed = info.size + OVERHEAD_BYTES + logits + embedding
    reason = plan(config, log=lambda _: None).sizing
    assert f"{human_size(fixed)} model and buffers" in reason


def test_each_slots_cells_are_counted_as_llama_cpp_pads_them() -> None:
    assert kv_cells(4, 4096) == 4 * 4096
    assert kv_cells(4, 64) == 4 * 256  # a stream of cells a slot, each padded to 256
    assert kv_cells(2, 1000) == 2 * 1024
    sized = size_slots(
        fixed_bytes=0, kv_bytes_per_token=1.0, available=None, trained_ctx=8192, parallel=4, ctx=64
    )
    assert sized.n_ctx == 64 and sized.parallel == 4
