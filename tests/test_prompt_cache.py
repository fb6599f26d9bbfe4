"""The prompt cache: its policy (pure), its disk tier's files, `llmkit cache`, and (slow) the
engine saving and restoring states with the real model, in-process and behind `llmkit serve`."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import openai
import pytest

from llmkit.engine import CacheConfig, Choice, Delta, Engine, Usage
from llmkit.engine.disk_cache import DiskCache, Identity, entry_files, summarize
from llmkit.engine.prompt_cache import Entry, PromptCache, RestoreCosts
from llmkit.plan import cache_ram_for
from llmkit.sampling import SamplingParams
from llmkit.sizes import parse_size
from tests.helpers import LlmkitCli, chat, clean_env, free_port, get_json, scrape

IDENTITY = Identity("ab" * 32, 4096, "f16", 3, "0.3.36")


def entry(tokens: list[int], nbytes: int = 100, salt: bytes = b"") -> Entry:
    return Entry(tuple(tokens), nbytes, payload=f"state of {tokens}", salt=salt)


# The policy ---------------------------------------------------------------------------------


def test_the_entry_sharing_the_longest_prefix_serves_a_prompt() -> None:
    cache = PromptCache(capacity=1000)
    cache.put(entry([1, 2, 3]))
    cache.put(entry([1, 2, 9, 9, 9]))
    cache.put(entry([7, 8]))

    match = cache.best([1, 2, 3, 4, 5], limit=4)

    assert match is not None and match.entry.tokens == (1, 2, 3) and match.reuse == 3
    assert cache.best([5, 6], limit=1) is None


def test_an_entry_longer_than_the_prompt_serves_the_prefix_they_share_within_the_limit() -> None:
    cache = PromptCache(capacity=1000)
    cache.put(entry([1, 2, 3, 4, 5, 6]))

    match = cache.best([1, 2, 3, 4, 0], limit=4)
    assert match is not None and match.reuse == 4
    # The last prompt token is always decoded (its logits): the limit caps the reuse.
    again = cache.best([1, 2, 3, 4, 5, 6], limit=5)
    assert again is not None and again.reuse == 5


def test_entries_never_serve_another_salt() -> None:
    cache = PromptCache(capacity=1000)
    cache.put(entry([1, 2, 3, 4], salt=b"alice"))

    assert cache.best([1, 2, 3, 4, 5], limit=4, salt=b"bob") is None
    assert cache.best([1, 2, 3, 4, 5], limit=4) is None
    alice = cache.best([1, 2, 3, 4, 5], limit=4, salt=b"alice")
    assert alice is not None and alice.reuse == 4


def test_eviction_is_least_recently_used_first_and_by_bytes() -> None:
    cache = PromptCache(capacity=300)
    a, b, c = entry([1], 100), entry([2], 100), entry([3], 100)
    for e in (a, b, c):
        assert cache.put(e) == []
    cache.use(a)  # a is now the most recent

    evicted = cache.put(entry([4], 150))

    assert evicted == [b, c]
    assert cache.bytes == 250 and {e.tokens for e in cache.entries()} == {(1,), (4,)}
    assert cache.evictions == 2 and cache.hits == 1


def test_an_entry_bigger_than_the_budget_is_passed_on_at_once() -> None:
    cache = PromptCache(capacity=100)
    big = entry([1, 2], 101)

    assert cache.put(big) == [big]
    assert len(cache) == 0 and cache.bytes == 0


def test_a_conversation_is_stored_once_at_its_longest() -> None:
    cache = PromptCache(capacity=1000)
    cache.put(entry([1, 2, 3], 30))
    cache.put(entry([1, 2, 3, 4, 5], 50))  # the next turn extends it: the first is dropped
    cache.put(entry([1, 2], 20))  # held already by the longer one: not stored again

    assert [e.tokens for e in cache.entries()] == [(1, 2, 3, 4, 5)]
    assert cache.bytes == 50
    assert cache.covers([1, 2, 3]) and not cache.covers([1, 2, 3, 9])


def test_an_entry_serves_no_prefix_shorter_than_its_min_reuse() -> None:
    # A state of a sliding-window model holds, in those layers, only the window of its last
    # tokens: cut back further, its next tokens would attend to cells it does not have.
    cache = PromptCache(capacity=1000)
    long = Entry(tuple(range(1, 11)), 100, min_reuse=8)
    cache.put(long)

    assert cache.best([1, 2, 3, 4, 0], limit=4) is None
    match = cache.best([*range(1, 10), 0], limit=9)
    assert match is not None and match.reuse == 9
    # A state of a shorter prefix serves what the longer one does not: it is kept beside it.
    assert not cache.covers([1, 2, 3, 4, 5]) and cache.covers(range(1, 10), min_reuse=8)
    cache.put(entry([1, 2, 3, 4, 5], 50))
    cache.put(Entry(tuple(range(1, 13)), 120, min_reuse=11))  # extends both, serves less
    assert len(cache) == 3
    cache.put(Entry(tuple(range(1, 14)), 130, min_reuse=8))  # serves all the longer ones did
    assert [e.tokens for e in cache.entries()] == [(1, 2, 3, 4, 5), tuple(range(1, 14))]


def test_restoring_wins_only_past_what_computing_the_saved_tokens_costs() -> None:
    costs = RestoreCosts(compute_per_token=1e-3, ram_per_byte=1e-9, fixed=2e-3)

    assert not costs.worth(1, 1000)  # one token: cheaper to compute than any restore
    assert costs.worth(100, 1_000_000)  # 100 ms of compute against 3 ms of restore
    assert not costs.worth(10, 50_000_000)  # a big state for a few tokens
    assert not costs.worth(0, 10)


def test_the_costs_follow_the_measurements() -> None:
    costs = RestoreCosts()
    costs.computed(10, 1.0)  # too short to say anything
    assert costs.measured["compute"] == 0
    costs.computed(100, 0.5)
    assert costs.compute_per_token == pytest.approx(5e-3)
    costs.restored(10**6, costs.fixed + 0.01)
    assert costs.ram_per_byte == pytest.approx(1e-8)
    costs.restored(10**6, costs.fixed + 0.02, disk=True)
    assert costs.disk_per_byte == pytest.approx(2e-8)


def test_sizes_are_read_as_people_write_them() -> None:
    assert parse_size("0") == 0
    assert parse_size("512MB") == 512 * 10**6
    assert parse_size("1.5G") == 1_500_000_000
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size("4096") == 4096
    for bad in ("lots", "1XB", "-1GB", "GiB"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_the_default_ram_tier_takes_half_of_what_the_slots_leave_and_no_more_than_the_cap() -> None:
    assert cache_ram_for(10 * 10**9, 4 * 10**9) == 3 * 10**9
    assert cache_ram_for(100 * 10**9, 10**9) == 8 * 10**9
    assert cache_ram_for(10**9, 2 * 10**9) == 0
    assert cache_ram_for(None, 10**9) == 10**9


# The disk tier ------------------------------------------------------------------------------


def state(n: int, fill: int = 7) -> bytes:
    return bytes([fill]) * n


def test_a_state_written_to_disk_is_found_again_by_a_new_cache(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path, IDENTITY, capacity=10**6)
    disk.save((1, 2, 3, 4), state(1000), min_reuse=3, wait=True)
    disk.close()

    again = DiskCache(tmp_path, IDENTITY, capacity=10**6)
    match = again.best([1, 2, 3, 4, 5], limit=4)

    assert match is not None and match.reuse == 4
    assert again.best([1, 2, 0], limit=2) is None  # shorter than the state's min_reuse
    assert bytes(again.load(match.entry) or b"") == state(1000)
    assert again.stats().hits == 1


def test_the_folder_and_files_are_private(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path / "cache", IDENTITY, capacity=10**6)
    disk.save((1, 2), state(10), wait=True)

    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    assert stat.S_IMODE(disk.dir.stat().st_mode) == 0o700
    (path,) = entry_files(tmp_path / "cache")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "garbage"])
def test_a_partial_or_corrupt_file_is_never_loaded_and_is_removed(
    tmp_path: Path, damage: str
) -> None:
    disk = DiskCache(tmp_path, IDENTITY, capacity=10**6)
    disk.save((1, 2, 3), state(1000), wait=True)
    (path,) = entry_files(tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flipped byte":
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(b"not a state at all")

    fresh = DiskCache(tmp_path, IDENTITY, capacity=10**6)
    match = fresh.best([1, 2, 3, 4], limit=3)
    if match is not None:  # its header still reads: the load finds the damage
        assert fresh.load(match.entry) is None
    assert not path.exists()
    assert fresh.best([1, 2, 3, 4], limit=3) is None


def test_a_file_of_another_model_or_context_is_ignored_and_removed(tmp_path: Path) -> None:
    other = Identity("cd" * 32, 8192, "f16", 3, "0.3.36")
    theirs = DiskCache(tmp_path, other, capacity=10**6)
    theirs.save((1, 2, 3), state(100), wait=True)
    (path,) = entry_files(tmp_path)
    mine = DiskCache(tmp_path, IDENTITY, capacity=10**6)
    assert mine.dir != theirs.dir  # each identity has its own folder: theirs are left alone
    assert mine.best([1, 2, 3, 4], limit=3) is None and path.exists()

    planted = mine.dir / path.name  # copied into this identity's folder
    planted.write_bytes(path.read_bytes())
    mine.scan()

    assert mine.best([1, 2, 3, 4], limit=3) is None
    assert not planted.exists() and path.exists()


def test_the_folder_keeps_within_its_budget_least_recently_used_out(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path, IDENTITY, capacity=4000)  # three files of ~1.2 kB, not four
    for i in range(3):
        disk.save((i + 1, 0), state(1000), wait=True)
        match = disk.best([i + 1, 0], limit=2)
        assert match is not None
        os.utime(match.entry.payload, (100 * (i + 1), 100 * (i + 1)))  # (1, 0) the oldest
    first = disk.best([1, 0, 5], limit=2)
    assert first is not None
    disk.load(first.entry)  # used: now the most recent

    disk.save((4, 0), state(1000), wait=True)

    assert sum(p.stat().st_size for p in entry_files(tmp_path)) <= 4000
    assert disk.best([1, 0, 5], limit=2) is not None  # the one used survived
    assert disk.best([2, 0, 5], limit=2) is None  # the least recently used went
    assert disk.stats().evictions >= 1


def test_two_caches_sharing_a_folder_see_each_others_states_and_write_whole_files(
    tmp_path: Path,
) -> None:
    a = DiskCache(tmp_path, IDENTITY, capacity=10**8)
    b = DiskCache(tmp_path, IDENTITY, capacity=10**8)
    writers = [
        threading.Thread(
            target=c.save, args=((9, 9, i % 3), state(200_000, i)), kwargs={"wait": True}
        )
        for i, c in enumerate([a, b] * 6)
    ]
    for w in writers:
        w.start()
    for w in writers:
        w.join()

    for cache in (a, b):
        for i in range(3):
            match = cache.best([9, 9, i, 1], limit=3)
            assert match is not None and match.reuse == 3
            assert cache.load(match.entry) is not None  # whole and checked
    assert len(entry_files(tmp_path)) == 3
    assert not list(tmp_path.glob("*/.*.tmp"))


# `llmkit cache` -----------------------------------------------------------------------------


def test_cache_show_and_clear(llmkit_cli: LlmkitCli, tmp_path: Path) -> None:
    disk = DiskCache(tmp_path, IDENTITY, capacity=10**6)
    disk.save((1, 2, 3), state(1000), wait=True)
    disk.save((4, 5), state(1000), wait=True)
    env = {"LLMKIT_CACHE_DIR": str(tmp_path)}

    shown = llmkit_cli("cache", "show", "--json", env=env)
    assert shown.exit_code == 0, shown.output
    (model,) = json.loads(shown.stdout)["models"]
    assert (model["model_sha256"], model["entries"], model["tokens"]) == ("ab" * 32, 2, 3)
    assert model["streams"] == IDENTITY.streams == 1
    assert "abababab" in llmkit_cli("cache", "show", env=env).stdout

    cleared = llmkit_cli("cache", "clear", "--cache-dir", str(tmp_path))
    assert cleared.exit_code == 0 and "removed 2 states" in cleared.stdout
    assert summarize(tmp_path) == []
    assert "empty" in llmkit_cli("cache", "show", env=env).stdout


# With the real model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma(gemma_gguf: Path) -> Iterator[llama_cpp.Llama]:
    llama = llama_cpp.Llama(model_path=str(gemma_gguf), n_ctx=256, verbose=False, logits_all=False)
    yield llama
    llama.close()


def document(llama: llama_cpp.Llama, topic: str, repeat: int = 25) -> list[int]:
    """A prompt of about 10 tokens a repeat (250 by default) about one topic."""
    text = f"Notes about {topic}: " + f"the {topic} is described here in detail, " * repeat
    return llama.tokenize((text + f"\nQuestion: what is the {topic}?").encode(), add_bos=True)


def cached_engine(llama: llama_cpp.Llama, tmp: Path | None, **cache: Any) -> Engine:
    config = CacheConfig(
        ram_bytes=cache.get("ram", 10**9),
        disk_dir=tmp,
        disk_bytes=cache.get("disk", 10**9),
        model_sha256="test-model",
    )
    return Engine(
        llama.model,
        parallel=1,
        slot_ctx=cache.get("slot_ctx", 1024),
        threads=2,
        max_queue=4,
        speculation=False,
        cache=config,
    )


def answer(e: Engine, prompt: list[int]) -> tuple[list[Any], Usage]:
    """Eight greedy tokens with their logprobs, and the usage."""
    params = SamplingParams(temperature=0, max_tokens=8, min_tokens=8, logprobs=3)
    logprobs: list[Any] = []
    usage = None
    for event in e.submit([Choice(prompt, params)]).events(timeout=300):
        if isinstance(event, Delta):
            logprobs += [(lp.token, round(lp.logprob or 0, 3)) for lp in event.logprobs or []]
        else:
            usage = event
    assert usage is not None
    return logprobs, usage


def test_a_restored_prompt_generates_what_computing_it_generates(
    gemma: llama_cpp.Llama,
) -> None:
    a, b = document(gemma, "river"), document(gemma, "mountain")
    plain = cached_engine(gemma, None, ram=0)
    try:
        computed, _ = answer(plain, a)
    finally:
        plain.close()
    e = cached_engine(gemma, None)
    try:
        answer(e, a)
        reused, usage = answer(e, a)  # the same prompt again, from the slot's own cache
        assert usage.cached_tokens == len(a) - 1
        answer(e, b)  # takes the one slot: a's state goes to the RAM tier
        restored, usage = answer(e, a)
        stats = e.states.stats()["ram"]
    finally:
        e.close()

    assert usage.cached_tokens == len(a) - 1  # all but the last prompt token, restored
    assert stats.hits == 1 and stats.entries == 2
    # Restored cells are the computed cells: the same logits as reusing the slot's own cache
    # (which decodes the last prompt token alone too), the same greedy tokens as computing all.
    assert restored == reused
    assert [t for t, _ in restored] == [t for t, _ in computed]
    for (_, got), (_, want) in zip(restored, computed, strict=True):
        assert got == pytest.approx(want, abs=0.2)  # another batch shape: other rounding


def test_a_state_longer_than_the_sliding_window_is_not_cut_back_behind_it(
    gemma: llama_cpp.Llama,
) -> None:
    # Gemma 3's sliding-window layers attend to the last 512 positions, and llama.cpp saves only
    # those cells of them: the state of a long prompt serves its continuations, but cut back to a
    # much shorter prefix it would lack the cells that prefix's next tokens attend to.
    a, b = document(gemma, "river", 130), document(gemma, "mountain", 130)
    assert len(a) > 1000
    question = gemma.tokenize(b"\nQuestion: what flows here?", add_bos=False)
    shorter = a[:600] + question
    plain = cached_engine(gemma, None, ram=0, slot_ctx=2048)
    try:
        computed, _ = answer(plain, shorter)
    finally:
        plain.close()
    e = cached_engine(gemma, None, slot_ctx=2048)
    try:
        generated, _ = answer(e, a)
        answer(e, b)  # takes the one slot: a's state goes to the RAM tier
        got, usage = answer(e, shorter)
        assert usage.cached_tokens < 600  # not from a's state
        # The next turn goes on from all that a's state holds: restored.
        next_turn = a + [t for t, _ in generated] + question
        _, usage = answer(e, next_turn)
        assert usage.cached_tokens == len(a) + len(generated) - 1
        assert e.states.stats()["ram"].hits == 1
    finally:
        e.close()
    assert [t for t, _ in got] == [t for t, _ in computed]
    for (_, lp), (_, want) in zip(got, computed, strict=True):
        assert lp == pytest.approx(want, abs=0.05)


def test_the_ram_tier_spills_by_bytes_to_disk_and_a_restart_finds_the_states(
    gemma: llama_cpp.Llama, tmp_path: Path
) -> None:
    topics = ["river", "mountain", "forest", "desert"]
    prompts = [document(gemma, t) for t in topics]
    e = cached_engine(gemma, tmp_path, ram=1)  # measure a state's size first
    try:
        answer(e, prompts[0])
        size = llama_cpp.llama_state_seq_get_size(e.ctx, 0)
    finally:
        e.close()
    for path in entry_files(tmp_path):
        path.unlink()
    # Room for one state in RAM and two on disk.
    e = cached_engine(gemma, tmp_path, ram=int(size * 1.5), disk=int(size * 2.5))
    try:
        for p in prompts:
            answer(e, p)
        e.states.disk.flush()  # type: ignore[union-attr]
        ram, disk = e.states.stats()["ram"], e.states.stats()["disk"]
        assert ram.entries == 1 and ram.bytes <= ram.capacity and ram.evictions == 2
        assert disk.entries == 2 and disk.bytes <= disk.capacity
    finally:
        e.close()  # writes the last slot (and the RAM tier): the oldest files make room
    assert sum(p.stat().st_size for p in entry_files(tmp_path)) <= int(size * 2.5)

    restarted = cached_engine(gemma, tmp_path, ram=int(size * 1.5), disk=int(size * 2.5))
    try:
        _, usage = answer(restarted, prompts[-1])  # the most recent survived the restart
        assert usage.cached_tokens == len(prompts[-1]) - 1
        assert restarted.states.stats()["disk"].hits == 1
        _, usage = answer(restarted, prompts[0])  # the oldest was evicted
        assert usage.cached_tokens < 16
    finally:
        restarted.close()


def test_damaged_files_and_another_contexts_files_are_ignored_after_a_restart(
    gemma: llama_cpp.Llama, tmp_path: Path
) -> None:
    a, b = document(gemma, "river"), document(gemma, "mountain")
    e = cached_engine(gemma, tmp_path)
    try:
        expected = [answer(e, a)[0], answer(e, b)[0]]
    finally:
        e.close()
    files = sorted(entry_files(tmp_path), key=lambda p: p.stat().st_mtime)
    assert len(files) == 2
    # Another context size: its own folder; this one's files are neither used nor touched.
    other = cached_engine(gemma, tmp_path, slot_ctx=2048)
    try:
        assert answer(other, a)[1].cached_tokens < 16
    finally:
        other.close()
    for path in files:
        assert path.exists()
    # One file cut short, the other with a flipped byte in its state.
    older, newer = files
    older.write_bytes(older.read_bytes()[:-1000])
    data = bytearray(newer.read_bytes())
    data[len(data) // 2] ^= 0x55
    newer.write_bytes(bytes(data))

    restarted = cached_engine(gemma, tmp_path)
    try:
        for prompt, want in zip([a, b], expected, strict=True):
            got, usage = answer(restarted, prompt)
            assert usage.cached_tokens < 16 and got == want  # computed again, correctly
        assert not older.exists() and not newer.exists()  # removed, not left to fail again
    finally:
        restarted.close()


def start_server(models_dir: Path, cache_dir: Path) -> tuple[subprocess.Popen[str], openai.OpenAI]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmkit", "serve", "--model", "gemma-3-270m", "--offline"]
        + ["--port", str(port), "--threads", "2", "--parallel", "2", "--ctx", "1024"]
        + ["--cache-dir", str(cache_dir), "--drain-seconds", "0"],
        env=clean_env(LLMKIT_MODELS_DIR=str(models_dir)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if get_json(f"http://127.0.0.1:{port}/health", timeout=1)[0] == 200:
                return proc, client
        except OSError:
            time.sleep(0.2)
    proc.kill()
    pytest.fail(f"the server did not start: {proc.communicate()[0]}")


def test_sigterm_writes_the_slots_to_disk_and_the_next_server_restores_them(
    server_models_dir: Path, tmp_path: Path
) -> None:
    question = "Summarize these notes. " + "The river flows to the sea through the valley. " * 30
    proc, client = start_server(server_models_dir, tmp_path)
    try:
        first = chat(client, question, max_tokens=8, temperature=0)
        assert first.usage.prompt_tokens_details.cached_tokens < 16
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    (path,) = entry_files(tmp_path)  # the slot that answered

    proc, client = start_server(server_models_dir, tmp_path)
    try:
        again = chat(client, question, max_tokens=8, temperature=0)
        metrics = scrape(client)
    finally:
        proc.kill()
        proc.communicate()
    usage = again.usage
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1
    assert again.choices[0].message.content == first.choices[0].message.content
    model = next(k for k in metrics if k.startswith("llmkit_prompt_cache_restored_tokens_total"))
    name = model[model.index("{model=") + 7 : -1]
    assert metrics[f"llmkit_prompt_cache_hits_total{{model={name},tier=disk}}"] == 1
    assert metrics[model] == usage.prompt_tokens - 1
