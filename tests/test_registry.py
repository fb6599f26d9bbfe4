"""Several models behind one `llmkit serve`: picked by name, loaded on demand, unloaded when idle
or for room, within one memory budget (llmkit.server.registry), against real servers with both
tiny models, a corrupt GGUF and one too big for the budget."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import llmkit
from llmkit.plan import plan_fleet
from llmkit.settings import ServeSettings
from tests.helpers import clean_env, get_json, root_url, run_llmkit, scrape, wait_for

GEMMA, SMOL = "gemma-3-270m", "smollm2-135m-instruct"
KEY = "team-key"
# What the server process holds besides its models' counted bytes: Python, FastAPI, llama.cpp's
# code (measured: about 150 MB with no model loaded).
MARGIN = 300 * 10**6
SHAPE = {
    "threads": 2,
    "ctx": 512,
    "parallel": 2,
    "cache_ram": "16MB",
    "no_cache_disk": True,
    "offline": True,
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path) -> Path:
    """A store with both tiny models, as `llmkit pull` leaves them, and two broken files beside
    it: a truncated GGUF (its header reads, its tensors do not load) and one whose header says it
    is far larger than any budget here (a sparse file: no disk used)."""
    root = tmp_path_factory.mktemp("two-models")
    for name in (GEMMA, SMOL):
        pulled = run_llmkit("pull", name, env=clean_env(LLMKIT_MODELS_DIR=str(root)))
        assert pulled.returncode == 0, pulled.stderr
    smol = next(root.glob("**/SmolLM2-135M-Instruct.Q4_1.gguf"))
    corrupt = root / "broken" / "corrupt.gguf"
    corrupt.parent.mkdir()
    data = smol.read_bytes()
    corrupt.write_bytes(data[: len(data) * 2 // 3])
    huge = root / "broken" / "huge.gguf"
    shutil.copyfile(smol, huge)
    with huge.open("r+b") as f:
        f.truncate(40 * 10**9)
    return root


def sizes(store: Path) -> dict[str, int]:
    """Each model's counted bytes, as the server will plan them."""
    fleet = plan_fleet(
        ServeSettings(model=[GEMMA, SMOL], models_dir=store, **SHAPE),  # type: ignore[arg-type]
        log=lambda _: None,
    )
    return {p.name: p.memory_bytes for p in fleet.plans}


@pytest.fixture(scope="module")
def one_at_a_time(store: Path) -> Iterator[openai.OpenAI]:
    """Both models, the corrupt and the huge one, under a budget that holds either tiny model
    but not both; with an API key."""
    counted = sizes(store)
    budget = max(counted.values()) + 10**6
    assert budget < sum(counted.values())
    models = [GEMMA, SMOL, str(store / "broken/corrupt.gguf"), str(store / "broken/huge.gguf")]
    with llmkit.serve(
        models,
        api_key=KEY,
        memory_budget=str(budget),
        env=clean_env(LLMKIT_MODELS_DIR=str(store)),
        **SHAPE,
    ) as client:
        client.budget = budget  # type: ignore[attr-defined]
        yield client


def ask(client: openai.OpenAI, model: str, **kwargs: Any) -> Any:
    options = {"max_tokens": 4, "temperature": 0, **kwargs}
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hi."}], **options
    )


def cards(client: openai.OpenAI) -> dict[str, dict[str, Any]]:
    return {m.id: m.model_dump() for m in client.models.list().data}


def peak_rss(client: openai.OpenAI) -> int:
    pid = client.llmkit_process.pid  # type: ignore[attr-defined]
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_requests_alternating_two_models_are_each_answered_by_the_one_they_name(
    one_at_a_time: openai.OpenAI,
) -> None:
    client = one_at_a_time
    listed = cards(client)
    assert listed[GEMMA]["state"] == "loaded"  # the first --model loads at start
    assert listed[SMOL]["state"] == "unloaded" and listed[SMOL]["resident_bytes"] == 0
    for model in [SMOL, GEMMA] * 3:
        assert ask(client, model).model == model
        now = cards(client)
        resident = [name for name, card in now.items() if card["state"] == "loaded"]
        assert resident == [model]  # the budget holds one: the other was unloaded for it
        assert sum(c["resident_bytes"] for c in now.values()) <= client.budget  # type: ignore[attr-defined]
    # An alias reaches its model too (the catalog's); the memory stayed within the budget.
    assert ask(client, "smollm2").model == SMOL
    assert peak_rss(client) <= client.budget + MARGIN  # type: ignore[attr-defined]


def test_concurrent_requests_for_an_unloaded_model_cause_one_load(
    one_at_a_time: openai.OpenAI,
) -> None:
    client = one_at_a_time
    if cards(client)[GEMMA]["state"] == "loaded":
        ask(client, SMOL)  # which unloads gemma for room
    loads = scrape(client).get(f"llmkit_model_loads_total{{model={GEMMA}}}", 0.0)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: ask(client, GEMMA).model, range(8)))
    assert answers == [GEMMA] * 8
    assert scrape(client)[f"llmkit_model_loads_total{{model={GEMMA}}}"] == loads + 1


def test_a_long_stream_completes_while_another_model_waits_for_its_memory(
    one_at_a_time: openai.OpenAI,
) -> None:
    client = one_at_a_time
    ask(client, GEMMA)  # loaded
    stream = client.chat.completions.create(
        model=GEMMA,
        messages=[{"role": "user", "content": "Count from 1 to 200."}],
        max_tokens=120,
        temperature=0,
        stream=True,
        extra_body={"min_tokens": 120},
    )
    chunks = iter(stream)
    first = next(chunks)  # the stream runs: gemma is busy
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        other = pool.submit(ask, client, SMOL)
        time.sleep(0.5)
        assert not other.done()  # smollm2 waits: unloading gemma would cut the stream
        rest = [first, *chunks]
        ended = time.monotonic()
        assert rest[-1].choices[0].finish_reason == "length"
        answer = other.result(timeout=120)
        answered = time.monotonic()
    assert answer.model == SMOL and answer.choices[0].message.content
    assert answered >= ended


def test_a_corrupt_model_fails_alone_with_its_reason_and_the_others_serve_on(
    one_at_a_time: openai.OpenAI,
) -> None:
    client = one_at_a_time.with_options(max_retries=0)
    with pytest.raises(openai.APIStatusError) as failed:
        ask(client, "corrupt")
    assert failed.value.status_code == 503
    assert failed.value.body["code"] == "model_failed"  # type: ignore[index]
    card = cards(client)["corrupt"]
    assert card["state"] == "failed" and card["error"]
    # Its next request fails at once, with the same reason; the others are served meanwhile.
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError, match="failed to load"):
        ask(client, "corrupt")
    assert time.monotonic() - started < 1
    assert ask(client, SMOL).model == SMOL


def test_a_model_too_big_for_the_budget_is_refused_at_once_and_named_at_start(
    one_at_a_time: openai.OpenAI,
) -> None:
    client = one_at_a_time.with_options(max_retries=0)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as refused:
        ask(client, "huge")
    assert time.monotonic() - started < 1 and refused.value.status_code == 503
    assert refused.value.body["code"] == "model_too_big"  # type: ignore[index]
    assert "memory" in str(refused.value)
    log = one_at_a_time.llmkit_log.read_text()  # type: ignore[attr-defined]
    assert "huge" in log and "CANNOT LOAD" in log
    assert cards(client)["huge"]["state"] == "unloaded"


def test_an_unknown_model_is_a_404_naming_the_served_ones(one_at_a_time: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        ask(one_at_a_time.with_options(max_retries=0), "gpt-3.5-turbo")
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert GEMMA in str(missing.value) and SMOL in str(missing.value)


def test_operators_load_and_unload_under_the_key_and_keep_alive_zero_unloads(
    one_at_a_time: openai.OpenAI,
) -> None:
    client = one_at_a_time
    url = root_url(client) + f"/v1/models/{SMOL}"
    anonymous = openai.OpenAI(base_url=str(client.base_url), api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.post(f"/models/{SMOL}/load", cast_to=object)
    loaded = client.post(f"/models/{SMOL}/load", body={"keep_alive": -1}, cast_to=object)
    assert loaded["state"] == "loaded" and loaded["keep_alive"] is None  # type: ignore[index]
    unloaded = client.post(f"/models/{SMOL}/unload", cast_to=object)
    assert unloaded["state"] == "unloaded"  # type: ignore[index]
    assert get_json(url)[0] == 401  # the card is under the key too
    # keep_alive 0 (Ollama's): the model is unloaded as soon as the request is done.
    assert ask(client, SMOL, extra_body={"keep_alive": 0}).model == SMOL
    wait_for(lambda: cards(client)[SMOL]["state"] == "unloaded", 10)
    with pytest.raises(openai.BadRequestError, match="keep_alive"):
        ask(client.with_options(max_retries=0), SMOL, extra_body={"keep_alive": "soon"})


def test_with_room_for_both_neither_is_loaded_again_and_idle_ones_unload_after_keep_alive(
    store: Path,
) -> None:
    counted = sizes(store)
    budget = sum(counted.values()) + 10**6
    with llmkit.serve(
        [GEMMA, SMOL],
        memory_budget=str(budget),
        keep_alive="3s",
        env=clean_env(LLMKIT_MODELS_DIR=str(store)),
        **SHAPE,
    ) as client:
        for model in [GEMMA, SMOL] * 3:
            assert ask(client, model).model == model
        metrics = scrape(client)
        assert metrics[f"llmkit_model_loads_total{{model={GEMMA}}}"] == 1
        assert metrics[f"llmkit_model_loads_total{{model={SMOL}}}"] == 1
        card = cards(client)[SMOL]
        assert card["state"] == "loaded" and card["expires_at"] <= time.time() + 4
        # smollm2 was loaded on demand: it goes once idle for 3 s; gemma, preloaded, stays.
        wait_for(lambda: cards(client)[SMOL]["state"] == "unloaded", 15)
        assert cards(client)[GEMMA]["state"] == "loaded"
        assert cards(client)[GEMMA]["expires_at"] is None
        assert peak_rss(client) <= budget + MARGIN


def test_a_budget_too_small_for_any_model_is_a_one_line_error(store: Path) -> None:
    result = run_llmkit(
        "serve",
        "--model",
        GEMMA,
        "--model",
        SMOL,
        "--memory-budget",
        "50MB",
        "--offline",
        "--port",
        "0",
        env=clean_env(LLMKIT_MODELS_DIR=str(store)),
        timeout=60,
    )
    assert result.returncode == 1
    assert "no model can be served" in result.stderr and "memory" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_all_models_serves_every_model_in_the_store(store: Path) -> None:
    with llmkit.serve(
        [], all_models=True, env=clean_env(LLMKIT_MODELS_DIR=str(store)), **SHAPE
    ) as client:
        assert set(cards(client)) == {GEMMA, SMOL}
        assert ask(client, SMOL).model == SMOL


def test_llmkit_ps_load_and_unload_show_and_change_a_running_servers_models(
    one_at_a_time: openai.OpenAI,
) -> None:
    reach = ["--url", str(one_at_a_time.base_url), "--api-key", KEY]
    loaded = run_llmkit("load", SMOL, "--keep-alive", "10m", *reach)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.startswith(f"{SMOL}: loaded") and "unloads in" in loaded.stdout
    shown = run_llmkit("ps", "--json", *reach)
    assert shown.returncode == 0, shown.stderr
    states = {card["id"]: card["state"] for card in json.loads(shown.stdout)}
    assert states[SMOL] == "loaded" and states["corrupt"] == "failed"
    table = run_llmkit("ps", *reach, env=clean_env(COLUMNS="200"))  # no wrapped names
    assert SMOL in table.stdout and "failed" in table.stdout
    unloaded = run_llmkit("unload", SMOL, *reach)
    assert unloaded.returncode == 0 and unloaded.stdout.startswith(f"{SMOL}: unloaded")
    missing = run_llmkit("load", "nope", *reach)
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
