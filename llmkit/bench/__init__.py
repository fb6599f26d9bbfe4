"""`llmkit bench`: how fast `llmkit serve` is, beside its own engine in-process and other servers.

Every server is measured the same way, through the openai SDK with streaming (the client users
have): time to first token, generation and prompt speed, a growing conversation, concurrent clients,
JSON mode and a forced tool call. The same generation run in-process on llmkit's engine, driven
directly with no HTTP (same file, threads and context), is the ceiling llmkit's server adds its
overhead to. Servers are measured interleaved, each figure `repeats` times after a warm-up, and
reported as the median.

Here `run` measures and `main` also shows the report; the parts are `config.py` (the options),
`workloads.py` (what every server is asked), `measure.py` (starting llmkit serve, the client-side
measurements), `inprocess.py` (the ceiling), `machine.py` (the machine, a process's memory),
`summary.py` (medians and ratios, pure) and `report.py` (the table, the JSON file, the plot).
"""

from __future__ import annotations

import datetime
import shlex
import signal
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from llmkit.bench.config import BenchConfig, Peer, configure
from llmkit.bench.inprocess import InProcess
from llmkit.bench.machine import machine, process_memory
from llmkit.bench.measure import IN_PROCESS, LLMKIT, Log, Measured, Remote, nop, start_llmkit
from llmkit.bench.report import plot, pyplot, show, write_json
from llmkit.bench.summary import compare, summarize
from llmkit.bench.workloads import TURNS, new_seed
from llmkit.errors import LlmkitError
from llmkit.launcher import Launched, stop

__all__ = ["BenchConfig", "Peer", "configure", "main", "run"]


def main(
    config: BenchConfig,
    json_file: Path | None = None,
    plot_file: Path | None = None,
    console: Any = None,
    log: Log = nop,
) -> dict[str, Any]:
    """`llmkit bench`: run, print the table, write the JSON and the plot when asked."""
    from rich.console import Console

    if plot_file is not None:
        pyplot()  # missing matplotlib should fail now, not after minutes of measuring
    # Python dies of SIGTERM without running `finally`, which would leave llmkit serve running.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        report = run(config, log=log)
    finally:
        signal.signal(signal.SIGTERM, previous)
    console = console or Console()
    if not console.is_terminal:  # piped, rich would wrap the side-by-side table at 80 columns
        console = Console(file=console.file, width=max(console.width, 110))
    show(report, console)
    if json_file is not None:
        write_json(report, json_file)
        log(f"wrote {json_file}")
    if plot_file is not None:
        plot(report, plot_file)
        log(f"wrote {plot_file}")
    return report


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def run(config: BenchConfig, log: Log = nop) -> dict[str, Any]:
    """Measure llmkit serve, each peer and the in-process ceiling; return the report, as JSON."""
    from llmkit.plan import plan
    from llmkit.settings import ServeSettings

    if config.repeats < 1:
        raise LlmkitError("--repeats must be at least 1")
    if not config.seed:  # every server of the run gets the same prompts
        config = replace(config, seed=new_seed())
    begun = datetime.datetime.now(datetime.UTC)
    host = machine()  # now, for the load average before we add to it
    # Pull (or find) the model first, so that the cold starts time the server and not a download.
    prepared = plan(
        ServeSettings(
            model=[config.model],
            threads=config.threads,
            parallel=config.parallel,
            ctx=config.ctx,
            models_dir=config.models_dir,
        ),
        log=log,
    )
    llmkit_ = Measured(LLMKIT, "llmkit")
    peers = [(Measured(p.name, "peer", p.url), p) for p in config.peers]
    ceiling = Measured(IN_PROCESS, "in-process")

    # Peers first: one that does not answer should stop the run before minutes of measuring.
    peer_remotes = [(measured, Remote(peer.url, config)) for measured, peer in peers]
    starts = config.repeats + (1 if config.warmup_start else 0)
    server: Launched | None = None
    local: InProcess | None = None
    try:
        for i in range(starts):
            if server is not None:
                stop(server.process)
            warm_up = config.warmup_start and i == 0
            log(f"starting llmkit serve ({i + 1}/{starts}{', warm-up' if warm_up else ''})")
            server, seconds = start_llmkit(config, prepared.n_ctx)
            if not warm_up:
                llmkit_.add("cold_start_s", seconds)
        assert server is not None
        llmkit_.url = server.url
        llmkit_.add("rss_mib", process_memory(server.process.pid).get("VmRSS"))

        remotes = [(llmkit_, Remote(server.url, config)), *peer_remotes]
        log(
            f"loading {prepared.path.name} in-process ({config.threads} threads, "
            f"context {prepared.n_ctx})"
        )
        local = InProcess(
            prepared.path,
            config.threads,
            prepared.n_ctx,
            prepared.chat_format,
            prepared.chat_template,
            seed=config.seed,
        )

        log("warming up")
        for _, remote in remotes:
            remote.warm_up()
        local.warm_up()
        for r in range(config.repeats):
            log(f"repeat {r + 1}/{config.repeats}")
            for measured, remote in remotes:
                remote.measure(measured, log)
            local.measure(ceiling, config, log)
        memory = process_memory(server.process.pid)
        llmkit_.add("rss_end_mib", memory.get("VmRSS"))
        llmkit_.add("rss_peak_mib", memory.get("VmHWM"))
    finally:
        if server is not None:
            stop(server.process)
        if local is not None:
            local.close()

    results = compare([summarize(m) for m in (llmkit_, *(m for m, _ in peers), ceiling)])
    return {
        "started": begun.isoformat(timespec="seconds"),
        # scripts/bench.py runs `llmkit bench`: one command reproduces the figures either way.
        "command": shlex.join(["llmkit", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else None,
        "machine": host,
        "config": {
            **asdict(config),
            "models_dir": str(config.models_dir) if config.models_dir else None,
            "model_file": str(prepared.path),
            "n_ctx": prepared.n_ctx,
            "chat_format": prepared.chat_format,
            "turns": TURNS,
        },
        "results": results,
    }
