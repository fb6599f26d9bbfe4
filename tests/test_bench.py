"""The benchmark: a quick real run has every figure; in-process is llmkit's engine without the
server; its small pure parts behave as documented."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from llmkit.bench.config import BenchConfig, Peer, configure, parse_levels, parse_peer
from llmkit.bench.inprocess import InProcess
from llmkit.bench.machine import parse_status
from llmkit.bench.measure import Measured, Remote, complete, pick_model
from llmkit.bench.report import problems, table
from llmkit.bench.summary import compare, median, percentile, ratio, summarize
from llmkit.bench.workloads import (
    GENERATION_PROMPT,
    JSON_PROMPT,
    TOOL_PROMPT,
    TOOL_REQUEST,
    Nonces,
    call_problem,
    long_prompt,
)
from llmkit.client import Answer, ToolCall
from llmkit.engine import ShuttingDown
from llmkit.errors import LlmkitError
from tests.helpers import clean_env

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"


@pytest.mark.slow
def test_a_quick_run_reports_every_figure_for_llmkit_and_in_process(
    server_models_dir: Path, tmp_path: Path
) -> None:
    report_file = tmp_path / "bench.json"
    plot_file = tmp_path / "bench.png"
    with_plot = importlib.util.find_spec("matplotlib") is not None
    # Its own session, so that a timeout also ends the `llmkit serve` the benchmark started.
    proc = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--json",
            str(report_file),
            *(["--plot", str(plot_file)] if with_plot else []),
        ],
        env=clean_env(LLMKIT_MODELS_DIR=str(server_models_dir)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cold start" in result.stdout and "÷ in-process" in result.stdout
    assert "tool call, tokens/s" in result.stdout and "valid calls" in result.stdout

    report = json.loads(report_file.read_text())
    results = {r["name"]: r for r in report["results"]}
    assert set(results) == {"llmkit", "in-process"}
    ours, ceiling = results["llmkit"]["figures"], results["in-process"]["figures"]
    for figure in (
        "cold_start_s",
        "rss_mib",
        "ttft_s",
        "tokens_per_s",
        "tokens",
        "prompt_tokens",
        "prompt_tokens_per_s",
        "vs_in_process",
        "turn1_ttft_s",
        "turn10_ttft_s",
        "turn_ratio",
        "json_tokens_per_s",
        "json_vs_text",
        "tool_tokens_per_s",
        "tool_vs_text",
    ):
        assert ours.get(figure, 0) > 0, (figure, ours)
    for figure in (
        "ttft_s",
        "tokens_per_s",
        "prompt_tokens_per_s",
        "json_tokens_per_s",
        "tool_tokens_per_s",
    ):
        assert ceiling.get(figure, 0) > 0, (figure, ceiling)
    # The forced call, through llmkit's grammar, is a valid call on the server and in-process.
    for figures in (ours, ceiling):
        assert (figures["valid_calls"], figures["tool_calls"]) == (1, 1), figures
    assert ours["prompt_tokens"] > 500  # the "long prompt" really is long
    levels = results["llmkit"]["concurrency"]
    assert set(levels) == {"1", "2"}
    for clients, level in levels.items():
        assert level["requests"] == int(clients) and level["complete"] == level["requests"], level
        assert level["tokens_per_s"] > 0 and 0 < level["ttft_p50_s"] <= level["ttft_p95_s"]
    # Ratios, not verdicts: each is a plain positive number, and nothing says "met" or "missed".
    for figure in (
        "vs_in_process",
        "vs_in_process_paired",
        "turn_ratio",
        "json_vs_text",
        "tool_vs_text",
    ):
        assert 0 < ours[figure] < 100, (figure, ours)
    assert "targets" not in report and "missed" not in result.stdout
    assert report["machine"]["cpus"] >= report["machine"]["physical_cores"] >= 1
    assert report["config"]["repeats"] == 1
    assert re.fullmatch(r"[0-9a-f]{8}", report["config"]["seed"]), report["config"]  # to reproduce
    if with_plot:
        assert plot_file.read_bytes().startswith(b"\x89PNG")


@pytest.fixture(scope="module")
def in_process(gemma_gguf: Path) -> Iterator[InProcess]:
    """The model loaded in-process as `llmkit bench` loads it for the catalog's gemma."""
    local = InProcess(gemma_gguf, threads=2, n_ctx=2048, chat_format="gemma")
    yield local
    local.close()


@pytest.mark.slow
def test_in_process_generates_with_llmkits_engine_and_counts_tokens_from_its_usage(
    in_process: InProcess,
) -> None:
    answer = in_process.ask(GENERATION_PROMPT, 16)
    assert (answer.completion_tokens, answer.finish_reason) == (16, "length")
    assert not answer.tokens_counted and answer.text
    assert answer.seconds_to_first_token is not None and answer.seconds_to_first_token > 0
    assert answer.tokens_per_second is not None and answer.tokens_per_second > 0


@pytest.mark.slow
def test_in_process_json_mode_is_constrained_by_the_servers_grammar(
    in_process: InProcess,
) -> None:
    answer = in_process.ask(JSON_PROMPT, 24, json_mode=True)
    assert answer.text.lstrip().startswith("{"), answer.text
    assert answer.completion_tokens > 0


@pytest.mark.slow
def test_in_process_tool_calls_take_the_servers_tool_path_and_are_parsed_into_calls(
    in_process: InProcess,
) -> None:
    answer = in_process.ask(TOOL_PROMPT, 128, **TOOL_REQUEST)
    assert len(answer.tool_calls) == 1 and call_problem(answer.tool_calls) is None, answer
    assert answer.text == ""  # the call's JSON is not content
    assert answer.tokens_per_second is not None and answer.tokens_per_second > 0


@pytest.mark.slow
def test_in_process_prompt_tokens_are_those_its_cache_did_not_hold(in_process: InProcess) -> None:
    prompt = long_prompt(10)
    first = in_process.ask(prompt, 1)
    again = in_process.ask(prompt, 1)
    assert first.prompt_tokens is not None and first.prompt_tokens > 100
    assert again.prompt_tokens == 1  # the slot held the rest; the last is decoded for its logits


@pytest.mark.slow
def test_closing_in_process_stops_its_engine_and_frees_the_context_and_the_model(
    gemma_gguf: Path,
) -> None:
    local = InProcess(gemma_gguf, threads=2, n_ctx=512, chat_format="gemma")
    local.close()
    assert local.engine.ctx is None and local.llama._model.model is None
    with pytest.raises(ShuttingDown):
        local.engine.submit([])


def test_every_server_of_a_run_gets_the_same_fresh_prompts() -> None:
    llmkit_, peer, other_run = Nonces("5eed"), Nonces("5eed"), Nonces("0ther")
    ours = [llmkit_("generation") for _ in range(3)] + [llmkit_("4 clients") for _ in range(4)]
    theirs = [peer("generation") for _ in range(3)] + [peer("4 clients") for _ in range(4)]
    assert ours == theirs  # the k-th prompt of a workload is the same text on each server
    assert len(set(ours)) == len(ours)  # and never one a server has seen
    assert all(re.fullmatch(r"\[[0-9a-f]{8}\]", start) for start in ours)
    assert other_run("generation") not in ours  # a new run: nothing a peer left running cached


def test_a_peer_is_a_url_or_a_named_url_and_gets_its_v1() -> None:
    assert parse_peer("http://127.0.0.1:8081") == Peer("127.0.0.1:8081", "http://127.0.0.1:8081/v1")
    assert parse_peer("llama-server=127.0.0.1:8081/v1") == Peer(
        "llama-server", "http://127.0.0.1:8081/v1"
    )


def test_concurrency_levels_are_sorted_client_counts() -> None:
    assert parse_levels("4,1, 2,4") == (1, 2, 4)
    for bad in ("", "0,1", "one,two"):
        with pytest.raises(LlmkitError):
            parse_levels(bad)


def test_quick_changes_only_what_the_user_left_unset() -> None:
    config = configure(quick=True, max_tokens=64, repeats=None, concurrency="1,4")
    assert (config.repeats, config.max_tokens, config.concurrency) == (1, 64, (1, 4))
    assert configure().repeats == 3


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0], 95) == pytest.approx(1.95)
    assert percentile([], 50) is None


def answer(tokens: int, finish: str | None, counted: bool = False) -> Answer:
    return Answer(
        text="x" * tokens,
        seconds_to_first_token=0.1,
        completion_tokens=tokens,
        total_seconds=1.0,
        tokens_counted=counted,
        finish_reason=finish,
        interrupted=finish is None,
    )


def test_a_response_is_complete_only_with_a_finish_reason_and_all_its_tokens() -> None:
    assert complete(answer(32, "length"), 32)
    assert complete(answer(5, "stop"), 32)
    assert not complete(answer(20, "length"), 32)  # usage says it was cut short
    assert complete(answer(31, "length", counted=True), 32)  # counted chunks may merge tokens
    assert not complete(answer(12, None), 32)
    assert not complete(None, 32)


def test_a_valid_call_names_an_offered_tool_with_json_arguments_holding_the_required_keys() -> None:
    event = '{"title": "Plans", "date": "2025-05-14", "attendees": ["Ana"]}'
    assert call_problem([ToolCall("create_event", event)]) is None
    assert call_problem([ToolCall("send_message", '{"to": "Ana", "text": "hi"}')]) is None
    assert call_problem([]) == "no call in the answer"
    assert "not offered" in (call_problem([ToolCall("delete_event", event)]) or "")
    assert "not JSON" in (call_problem([ToolCall("create_event", '{"title": "Pl')]) or "")
    assert "not a JSON object" in (call_problem([ToolCall("create_event", "[1]")]) or "")
    missing = call_problem([ToolCall("create_event", '{"title": "Plans"}')])
    assert missing == "create_event's arguments lack date, attendees"
    # Every call of an answer must be valid.
    assert call_problem([ToolCall("create_event", event), ToolCall("send_message", "{}")])


def test_memory_is_read_from_proc_status_in_mib() -> None:
    status = "Name:\tpython\nVmHWM:\t  409600 kB\nVmRSS:\t  204800 kB\nThreads:\t4\n"
    assert parse_status(status) == {"VmHWM": 400.0, "VmRSS": 200.0}


def test_a_server_without_usage_is_compared_on_the_prompt_tokens_counted_in_process() -> None:
    results = compare(
        [
            {"name": "peer", "figures": {"tokens_per_s": 50.0, "prompt_ttft_s": 2.0}},
            {
                "name": "in-process",
                "figures": {"tokens_per_s": 60.0, "prompt_tokens": 1000, "prompt_ttft_s": 1.0},
            },
        ]
    )
    peer, ceiling = (r["figures"] for r in results)
    assert peer["vs_in_process"] == pytest.approx(50 / 60)
    assert (peer["prompt_tokens"], peer["prompt_tokens_from"]) == (1000, "in-process")
    assert (peer["prompt_tokens_per_s"], ceiling["prompt_tokens_per_s"]) == (500.0, 1000.0)
    assert "vs_in_process" not in ceiling


def test_the_median_and_a_ratio_of_nothing_are_none() -> None:
    assert median([3.0, 1.0, 2.0, 10.0]) == 2.5
    assert median([]) is None
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None and ratio(3.0, None) is None and ratio(3.0, 0.0) is None


def measured(name: str, kind: str, tokens_per_s: list[float], aggregate: float) -> Measured:
    """Samples as two repeats of a run leave them, for one server."""
    result = Measured(name, kind)
    for value in tokens_per_s:
        result.add("tokens_per_s", value)
    result.add("turn1_ttft_s", 0.2)
    result.add("turn10_ttft_s", 0.3)
    result.add("json_tokens_per_s", tokens_per_s[0] / 2)
    call = '{"title": "Plans", "date": "2025-05-14", "attendees": []}'
    for arguments in (call, call[:20]):  # a valid call, then one cut short
        result.tool_requests += 1
        result.add_call(
            Answer(
                "",
                0.1,
                21,
                1.1,
                finish_reason="stop",
                tool_calls=[ToolCall("create_event", arguments)],
            )
        )
    result.add("rss_mib", None)  # a figure /proc did not give is left out, not recorded as None
    if kind != "in-process":
        level = result.levels[4]
        level.tokens_per_s += [aggregate, aggregate + 2]
        level.ttft += [0.1, 0.2, 0.3, 0.4]
        level.requests, level.complete = 8, 7
        level.problems.append("finish_reason None after 3 of 32 tokens")
    return result


def test_a_summary_is_medians_the_turn_json_and_tool_ratios_and_level_percentiles() -> None:
    summary = summarize(measured("llmkit", "llmkit", [30.0, 20.0], 70.0))
    figures = summary["figures"]
    assert figures["tokens_per_s"] == 25.0
    assert figures["turn_ratio"] == pytest.approx(1.5)
    assert figures["json_vs_text"] == pytest.approx(15 / 25)
    assert figures["tool_tokens_per_s"] == pytest.approx(20.0)  # 20 tokens after the first in 1 s
    assert figures["tool_vs_text"] == pytest.approx(20 / 25)
    assert (figures["valid_calls"], figures["tool_calls"]) == (1, 2)
    assert summary["problems"] == [
        "tool call: create_event's arguments are not JSON: "
        """'{"title": "Plans", "' (finish_reason 'stop', 21 tokens)"""
    ]
    assert "rss_mib" not in figures
    level = summary["concurrency"]["4"]
    assert (level["tokens_per_s"], level["requests"], level["complete"]) == (71.0, 8, 7)
    assert level["ttft_p50_s"] == pytest.approx(0.25)
    assert level["ttft_p95_s"] == pytest.approx(0.385)
    assert summary["samples"]["tokens_per_s"] == [30.0, 20.0]


def bench_results() -> list[dict[str, object]]:
    return compare(
        [
            summarize(measured("llmkit", "llmkit", [30.0, 20.0], 70.0)),
            summarize(measured("llama-server", "peer", [25.0, 25.0], 50.0)),
            summarize(measured("in-process", "in-process", [20.0, 25.0], 0.0)),
        ]
    )


def test_each_server_is_divided_by_in_process_by_medians_and_within_each_repeat() -> None:
    ours = bench_results()[0]["figures"]
    assert ours["vs_in_process"] == pytest.approx(25.0 / 22.5)
    assert ours["vs_in_process_paired"] == pytest.approx((30 / 20 + 20 / 25) / 2)


def test_llmkit_aggregate_is_set_beside_each_peers_at_each_number_of_clients() -> None:
    ours, peer, ceiling = bench_results()
    assert peer["concurrency"]["4"]["llmkit_vs_this"] == pytest.approx(71.0 / 51.0)
    assert "llmkit_vs_this" not in ours["concurrency"]["4"]
    assert ceiling["concurrency"] == {}


def bench_report() -> dict[str, object]:
    return {
        "machine": {
            "cpu": "a CPU",
            "cpus": 2,
            "memory_gib": 8.0,
            "llama_cpp_python": "0.3.36",
            "load_average": (0.5, 0.5, 0.5),
        },
        "config": {
            "model": "gemma-3-270m",
            "threads": 2,
            "n_ctx": 4096,
            "parallel": 4,
            "max_tokens": 32,
            "repeats": 2,
            "concurrency": [4],
        },
        "results": bench_results(),
    }


def test_the_table_shows_figures_and_ratios_side_by_side_and_judges_nothing() -> None:
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(table(bench_report()))
    text = console.export_text()
    assert "llmkit ÷ this" in text and "1.39×" in text  # 71 / 51 at 4 clients
    assert "÷ in-process" in text and "111%" in text  # 25 / 22.5
    assert "7/8" in text
    assert "tool call, tokens/s" in text and "0.80×" in text and "1/2" in text  # 20 / 25
    assert not re.search(r"\b(targets?|met|missed|pass(ed)?|fail(ed)?)\b", text, re.IGNORECASE)


def test_problems_name_the_server_and_the_number_of_clients() -> None:
    report = bench_report()
    lines = [line for line in problems(report) if "tool call" not in line]
    assert lines == [
        "llmkit, 4 clients: finish_reason None after 3 of 32 tokens",
        "llama-server, 4 clients: finish_reason None after 3 of 32 tokens",
    ]


def test_an_answer_without_a_call_is_counted_as_no_valid_call_and_adds_no_speed() -> None:
    result = Measured("peer", "peer")
    result.tool_requests += 1
    result.add_call(Answer("I have added it.", 0.1, 6, 0.6, finish_reason="stop"))
    figures = summarize(result)["figures"]
    assert (figures["valid_calls"], figures["tool_calls"]) == (0, 1)
    assert "tool_tokens_per_s" not in figures and "tool_vs_text" not in figures
    assert result.problems == ["tool call: no call in the answer (finish_reason 'stop', 6 tokens)"]


def test_a_server_that_refuses_the_tool_request_is_a_problem_and_the_run_goes_on(
    llmkit_server: openai.OpenAI,
) -> None:
    # llmkit answers a tool request asking 0 tokens with a 400, as a server without tools would
    # answer any: the refusal is noted, every other figure is still measured.
    config = BenchConfig.quick(
        max_tokens=4,
        turn_tokens=1,
        json_max_tokens=4,
        tool_max_tokens=0,
        concurrency=(1,),
        prompt_lines=1,
    )
    result = Measured("refuses tools", "peer", str(llmkit_server.base_url))
    Remote(str(llmkit_server.base_url), config).measure(result, log=lambda _: None)
    assert (result.tool_requests, result.valid_calls) == (1, 0)
    assert len(result.problems) == 1 and result.problems[0].startswith(
        "tool call: the server answered 400"
    ), result.problems
    figures = summarize(result)["figures"]
    assert figures["json_tokens_per_s"] > 0 and figures["tokens_per_s"] > 0
    assert "tool_tokens_per_s" not in figures
    assert result.levels[1].complete == 1


def test_a_server_is_asked_for_the_benchmarked_model_when_it_lists_it_else_its_first() -> None:
    assert pick_model(["qwen", "gemma-3-270m"], "gemma-3-270m") == "gemma-3-270m"
    assert pick_model(["llama-server-model"], "gemma-3-270m") == "llama-server-model"
    assert pick_model([], "gemma-3-270m") == "default"
