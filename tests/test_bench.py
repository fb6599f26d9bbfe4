"""The benchmark: a quick real run has every figure; its small pure parts behave as documented."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from llmkit.bench.config import Peer, configure, parse_levels, parse_peer
from llmkit.bench.machine import parse_status
from llmkit.bench.measure import complete
from llmkit.bench.summary import compare, percentile
from llmkit.client import Answer
from llmkit.errors import LlmkitError
from tests.conftest import clean_env

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
    assert "cold start" in result.stdout and "Targets" in result.stdout

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
    ):
        assert ours.get(figure, 0) > 0, (figure, ours)
    for figure in ("ttft_s", "tokens_per_s", "prompt_tokens_per_s", "json_tokens_per_s"):
        assert ceiling.get(figure, 0) > 0, (figure, ceiling)
    assert ours["prompt_tokens"] > 500  # the "long prompt" really is long
    levels = results["llmkit"]["concurrency"]
    assert set(levels) == {"1", "2"}
    for clients, level in levels.items():
        assert level["requests"] == int(clients) and level["complete"] == level["requests"], level
        assert level["tokens_per_s"] > 0 and 0 < level["ttft_p50_s"] <= level["ttft_p95_s"]
    checked = {t["target"] for t in report["targets"]}
    assert {"cold start < 3 s", "zero incomplete responses"} <= checked
    assert report["machine"]["cpus"] >= 1 and report["config"]["repeats"] == 1
    if with_plot:
        assert plot_file.read_bytes().startswith(b"\x89PNG")


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
