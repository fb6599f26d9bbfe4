"""`llmkit bench`: how fast `llmkit serve` is, beside llama-cpp-python in-process and other servers.

Every server is measured the same way, through the openai SDK with streaming (the client users
have): time to first token, generation and prompt speed, a growing conversation, concurrent clients
and JSON mode. The same generation run in-process with `llama_cpp.Llama` (same file, threads and
context) is the ceiling llmkit's server adds its overhead to. Servers are measured interleaved,
each figure `repeats` times after a warm-up, and reported as the median.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmkit import settings
from llmkit.client import Answer, ChatSession, resolve_api_key, resolve_url
from llmkit.errors import LlmkitError
from llmkit.launcher import stop

Log = Callable[[str], None]

DEFAULT_MODEL = "gemma-3-270m"
DEFAULT_CONCURRENCY = (1, 2, 4, 8)
TURNS = 10
IN_PROCESS = "in-process"
LLMKIT = "llmkit"

# A prompt a base model keeps answering at temperature 0, so that streams run to max_tokens.
GENERATION_PROMPT = "Count from 1 to 1000, separated by commas."
JSON_PROMPT = (
    'Write a JSON object with a key "people": a list of 100 fictional people, each '
    "with name, age, city, job and a one-sentence biography."
)
TOPICS = (
    "the sea",
    "volcanoes",
    "bees",
    "the moon",
    "glass",
    "bread",
    "rivers",
    "owls",
    "copper",
    "clocks",
    "maps",
    "salt",
)


def _nop(_: str) -> None:
    pass


@dataclass(frozen=True)
class Peer:
    """Another OpenAI-compatible server to measure beside llmkit."""

    name: str
    url: str  # its /v1 URL


def parse_peer(text: str) -> Peer:
    """`URL` or `NAME=URL`; the URL's /v1 is added when missing, as `llmkit chat --url` does."""
    name, sep, url = text.partition("=")
    if not sep or "://" in name or not name.strip():
        name, url = "", text
    url = resolve_url(url.strip())
    if not name:
        name = url.split("://", 1)[-1].split("/", 1)[0]
    return Peer(name.strip(), url)


def parse_levels(text: str) -> tuple[int, ...]:
    """`1,2,4,8` → (1, 2, 4, 8): the numbers of concurrent clients to measure."""
    try:
        levels = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise LlmkitError(f"--concurrency takes numbers and commas, not {text!r}") from None
    if not levels or levels[0] < 1:
        raise LlmkitError(f"--concurrency needs client counts of at least 1, not {text!r}")
    return levels


@dataclass
class BenchConfig:
    model: str = DEFAULT_MODEL
    threads: int = 2
    parallel: int = settings.DEFAULT_PARALLEL  # llmkit serve --parallel
    ctx: int | None = None  # None: as `llmkit serve` picks it
    models_dir: Path | None = None
    peers: list[Peer] = field(default_factory=list)
    repeats: int = 3
    max_tokens: int = 128  # every generation stream, single or concurrent
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY
    turn_tokens: int = 48  # the longest answer of each turn of the conversation
    json_max_tokens: int = 128
    prompt_lines: int = 40  # about 1,000 tokens of prompt with the Gemma tokenizer
    warmup_start: bool = True  # one unmeasured start first, so the model file is in the page cache

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        """A smoke run: one repeat, short streams, 1 and 2 clients."""
        settings: dict[str, Any] = {
            "repeats": 1,
            "max_tokens": 32,
            "concurrency": (1, 2),
            "turn_tokens": 16,
            "json_max_tokens": 32,
            "warmup_start": False,
        }
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**settings)


def configure(
    *,
    quick: bool = False,
    peers: Sequence[str] = (),
    concurrency: str | None = None,
    **options: Any,
) -> BenchConfig:
    """The config for command-line options; unset ones (None) get the defaults, or --quick's."""
    options["peers"] = [parse_peer(p) for p in peers]
    options["concurrency"] = parse_levels(concurrency) if concurrency else None
    options = {k: v for k, v in options.items() if v is not None}
    return BenchConfig.quick(**options) if quick else BenchConfig(**options)


def main(
    config: BenchConfig,
    json_file: Path | None = None,
    plot_file: Path | None = None,
    console: Any = None,
    log: Log = _nop,
) -> dict[str, Any]:
    """`llmkit bench`: run, print the tables, write the JSON and the plot when asked."""
    from rich.console import Console

    if plot_file is not None:
        _pyplot()  # missing matplotlib should fail now, not after minutes of measuring
    # Python dies of SIGTERM without running `finally`, which would leave llmkit serve running.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        report = run(config, log=log)
    finally:
        signal.signal(signal.SIGTERM, previous)
    console = console or Console()
    if not console.is_terminal:  # piped, rich would wrap the side-by-side table at 80 columns
        console = Console(file=console.file, width=max(console.width, 110))
    console.print(table(report))
    console.print(targets_table(report))
    for line in problems(report):
        console.print(f"[yellow]problem:[/] {line}", highlight=False)
    if json_file is not None:
        write_json(report, json_file)
        log(f"wrote {json_file}")
    if plot_file is not None:
        plot(report, plot_file)
        log(f"wrote {plot_file}")
    return report


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


# -- pure helpers: statistics, prompts, /proc ------------------------------------------------------


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), interpolated between the nearest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def nonce() -> str:
    """A fresh start for a prompt, so that no server answers it from its prompt cache."""
    return f"[{uuid.uuid4().hex[:8]}]"


def long_prompt(lines: int) -> str:
    """A ~25-tokens-a-line document to read and a short question about it."""
    colours = ("red", "green", "blue", "grey", "white", "black", "yellow")
    animals = ("fox", "heron", "badger", "otter", "crow", "hare", "stag", "wolf")
    places = ("mill", "harbour", "bridge", "market", "chapel", "forest", "quarry")
    log = [
        f"Day {i + 1}: the {colours[i % 7]} {animals[i % 8]} walked {3 + i * 7 % 23} miles to "
        f"the {places[i % 7]} and counted {11 + i * 13 % 97} stones on the way."
        for i in range(lines)
    ]
    question = "In one sentence: which animal walked furthest?"
    return "Here is a traveller's log.\n" + "\n".join(log) + "\n" + question


def complete(answer: Answer | None, max_tokens: int) -> bool:
    """A response that ended as the API says it should: a finish_reason, and all of it if `length`.

    When the server sent no usage the tokens are counted chunks, which may merge a few tokens, so
    only the finish_reason can be checked.
    """
    if answer is None or answer.interrupted or answer.finish_reason not in ("stop", "length"):
        return False
    if answer.finish_reason == "stop" or answer.tokens_counted:
        return True
    return answer.completion_tokens == max_tokens


def proc_memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MiB (empty where /proc does not tell)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return parse_status(text)


def parse_status(text: str) -> dict[str, float]:
    memory = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM") and value.strip().endswith("kB"):
            memory[key] = int(value.split()[0]) / 1024
    return memory


def machine() -> dict[str, Any]:
    """What the figures were taken on."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    try:
        from importlib.metadata import version

        llama_version = version("llama_cpp_python")
    except Exception:  # noqa: BLE001
        llama_version = None
    from llmkit import __version__

    return {
        "cpu": cpu or platform.processor(),
        "cpus": os.cpu_count(),
        "memory_gib": memory_gib,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "llama_cpp_python": llama_version,
        "llmkit": __version__,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


# -- the servers ---------------------------------------------------------------------------------


@dataclass
class Started:
    """An `llmkit serve` child and how long it took from process start to /health answering."""

    process: subprocess.Popen[bytes]
    url: str
    seconds: float
    log: Path


def start_llmkit(config: BenchConfig, n_ctx: int, timeout: float = 300.0) -> Started:
    """Start `python -m llmkit serve` and time it to the first /health 200.

    Not `llmkit.serve()`: it polls every 0.1 s, too coarse for a figure of about a second.
    """
    from llmkit.launcher import free_port, serve_args

    port = free_port()
    options = {
        "threads": config.threads,
        "parallel": config.parallel,
        "ctx": n_ctx,
        "offline": True,
        "models_dir": config.models_dir,
    }
    args = [sys.executable, "-m", "llmkit", *serve_args(config.model, "127.0.0.1", port, options)]
    log = Path(tempfile.mkstemp(prefix="llmkit-bench-serve-", suffix=".log")[1])
    health = f"http://127.0.0.1:{port}/health"
    with log.open("wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    while True:
        if _answers(health):
            seconds = time.perf_counter() - started
            return Started(process, f"http://127.0.0.1:{port}/v1", seconds, log)
        if process.poll() is not None:
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:])
            raise LlmkitError(f"llmkit serve exited ({process.returncode}): {tail}")
        if time.perf_counter() - started > timeout:
            stop(process)
            raise LlmkitError(f"llmkit serve was not ready after {timeout:g} s (log: {log})")
        time.sleep(0.02)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):  # refused, reset, timed out, or an HTTP error status
        return False


# -- measuring one server ------------------------------------------------------------------------


@dataclass
class Level:
    """Every request at one number of concurrent clients, over all repeats."""

    tokens_per_s: list[float] = field(default_factory=list)  # aggregate, one per repeat
    ttft: list[float] = field(default_factory=list)  # per request
    requests: int = 0
    complete: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class Measured:
    """The samples of every figure for one server (or the in-process ceiling)."""

    name: str
    kind: str  # "llmkit", "peer" or "in-process"
    url: str | None = None
    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    levels: dict[int, Level] = field(default_factory=lambda: defaultdict(Level))
    problems: list[str] = field(default_factory=list)

    def add(self, figure: str, value: float | None) -> None:
        if value is not None:
            self.samples[figure].append(value)


class Remote:
    """The client-side measurements, through the openai SDK, of one OpenAI-compatible server."""

    def __init__(self, url: str, config: BenchConfig) -> None:
        import openai

        self.config = config
        self.client = openai.OpenAI(
            base_url=url, api_key=resolve_api_key(), timeout=600.0, max_retries=0
        )
        try:
            self.model = next(iter(m.id for m in self.client.models.list().data), "default")
        except openai.APIConnectionError:
            raise LlmkitError(f"no server answers at {url}") from None
        except openai.APIError:
            self.model = "default"  # a server without /v1/models may still chat

    def session(self, max_tokens: int, json_mode: bool = False) -> ChatSession:
        return ChatSession(
            client=self.client,
            model=self.model,
            temperature=0,
            max_tokens=max_tokens,
            json_mode=json_mode,
        )

    def ask(self, prompt: str, max_tokens: int, json_mode: bool = False) -> tuple[Answer, int]:
        """One streamed answer and the number of content chunks it came in."""
        chunks = 0

        def count(_: str) -> None:
            nonlocal chunks
            chunks += 1

        answer = self.session(max_tokens, json_mode).ask(prompt, on_text=count)
        return answer, chunks

    def warm_up(self) -> None:
        self.ask(f"{nonce()} Say hello.", 8)

    def measure(self, into: Measured, log: Log) -> None:
        """One repeat of every client-side figure; a part the server fails is noted, not fatal."""
        steps: list[tuple[str, Callable[[Measured], None]]] = [
            (f"generation ({self.config.max_tokens} tokens)", self.generation),
            ("prompt", self.prompt),
            (f"a conversation of {TURNS} turns", self.conversation),
            ("JSON mode", self.json_mode),
            *(
                (
                    f"{n} concurrent client{'s' * (n > 1)}",
                    lambda m, n=n: self.concurrent(n, m.levels[n]),
                )
                for n in self.config.concurrency
            ),
        ]
        for title, step in steps:
            log(f"  {into.name}: {title}")
            try:
                step(into)
            except LlmkitError as exc:
                into.problems.append(f"{title}: {exc}")
                log(f"  {into.name}: {title} failed: {exc}")

    def generation(self, into: Measured) -> None:
        answer, chunks = self.ask(f"{nonce()} {GENERATION_PROMPT}", self.config.max_tokens)
        into.add("ttft_s", answer.seconds_to_first_token)
        into.add("tokens_per_s", answer.tokens_per_second)
        into.add("tokens", answer.completion_tokens)
        into.add("chunks", chunks)

    def prompt(self, into: Measured) -> None:
        # One token is enough: the time to it is the time to read the prompt.
        answer, _ = self.ask(f"{nonce()} {long_prompt(self.config.prompt_lines)}", 1)
        into.add("prompt_ttft_s", answer.seconds_to_first_token)
        into.add("prompt_tokens", answer.prompt_tokens)  # None from a server that sends no usage

    def conversation(self, into: Measured) -> None:
        """A conversation growing by a question and an answer a turn: is its history recomputed?"""
        chat = self.session(self.config.turn_tokens)
        for turn in range(TURNS):
            first = nonce() + " " if turn == 0 else ""
            topic = TOPICS[turn % len(TOPICS)]
            chat.ask(f"{first}Question {turn + 1}: tell me one thing about {topic}.")
        into.add("turn1_ttft_s", chat.answers[0].seconds_to_first_token)
        into.add("turn10_ttft_s", chat.answers[-1].seconds_to_first_token)
        into.add("turn10_prompt_tokens", chat.answers[-1].prompt_tokens)

    def json_mode(self, into: Measured) -> None:
        answer, _ = self.ask(
            f"{nonce()} {JSON_PROMPT}", self.config.json_max_tokens, json_mode=True
        )
        into.add("json_tokens_per_s", answer.tokens_per_second)
        into.add("json_tokens", answer.completion_tokens)

    def concurrent(self, clients: int, level: Level) -> None:
        """`clients` streams started together; aggregate tokens/s over the wall time of them all."""
        max_tokens = self.config.max_tokens
        barrier = threading.Barrier(clients)
        # (began, ended, answer, problem) for each client
        results: list[tuple[float, float, Answer | None, str | None]] = [(0, 0, None, None)]
        results *= clients

        def one(i: int) -> None:
            barrier.wait()
            began = time.perf_counter()
            answer, problem = None, None
            try:
                answer, _ = self.ask(f"{nonce()} {GENERATION_PROMPT}", max_tokens)
            except Exception as exc:  # noqa: BLE001 - a broken stream is a result here, not an end
                problem = str(exc) or type(exc).__name__
            results[i] = (began, time.perf_counter(), answer, problem)

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        tokens = 0
        for _, _, answer, problem in results:
            level.requests += 1
            if complete(answer, max_tokens):
                level.complete += 1
            elif len(level.problems) < 5:
                level.problems.append(problem or _why_incomplete(answer, max_tokens))
            if answer is not None:
                tokens += answer.completion_tokens
                if answer.seconds_to_first_token is not None:
                    level.ttft.append(answer.seconds_to_first_token)
        wall = max(r[1] for r in results) - min(r[0] for r in results if r[0])
        if tokens and wall > 0:
            level.tokens_per_s.append(tokens / wall)


def _why_incomplete(answer: Answer | None, max_tokens: int) -> str:
    if answer is None:
        return "no answer"
    if answer.finish_reason is None:
        return f"stream ended after {answer.completion_tokens} tokens without a finish_reason"
    return (
        f"finish_reason {answer.finish_reason!r} after {answer.completion_tokens} of "
        f"{max_tokens} tokens"
    )


class InProcess:
    """The same generation with `llama_cpp.Llama` in this process: the ceiling for a server."""

    def __init__(self, path: Path, threads: int, n_ctx: int, chat_format: str | None) -> None:
        import llama_cpp

        from llmkit.params import ChatRequest

        self.llama = llama_cpp.Llama(
            model_path=str(path),
            n_threads=threads,
            n_threads_batch=threads,
            n_ctx=n_ctx,
            n_gpu_layers=0,
            chat_format=chat_format,
            verbose=False,
        )
        # The sampling a request to llmkit serve gets by default, so that both sample alike.
        fields = ChatRequest.model_fields
        self.sampling = {
            name: fields[name].default for name in ("top_p", "top_k", "min_p", "repeat_penalty")
        }

    def ask(self, prompt: str, max_tokens: int, json_mode: bool = False) -> Answer:
        """Stream an answer as a server would, timed and counted as the clients count."""
        started = time.perf_counter()
        first: float | None = None
        pieces: list[str] = []
        finish = None
        stream: Any = self.llama.create_chat_completion(
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            response_format={"type": "json_object"} if json_mode else None,
            **self.sampling,
        )
        for chunk in stream:
            for choice in chunk["choices"]:
                finish = choice.get("finish_reason") or finish
                text = choice.get("delta", {}).get("content")
                if text:
                    if first is None:
                        first = time.perf_counter() - started
                    pieces.append(text)
        return Answer(
            text="".join(pieces),
            seconds_to_first_token=first,
            completion_tokens=len(pieces),
            total_seconds=time.perf_counter() - started,
            tokens_counted=True,
            finish_reason=finish,
        )

    def warm_up(self) -> None:
        self.ask(f"{nonce()} Say hello.", 8)

    def measure(self, into: Measured, config: BenchConfig, log: Log) -> None:
        log(f"  {IN_PROCESS}: generation ({config.max_tokens} tokens)")
        answer = self.ask(f"{nonce()} {GENERATION_PROMPT}", config.max_tokens)
        into.add("ttft_s", answer.seconds_to_first_token)
        into.add("tokens_per_s", answer.tokens_per_second)
        into.add("tokens", answer.completion_tokens)
        log(f"  {IN_PROCESS}: prompt")
        prompt = f"{nonce()} {long_prompt(config.prompt_lines)}"
        answer = self.ask(prompt, 1)
        into.add("prompt_ttft_s", answer.seconds_to_first_token)
        into.add("prompt_tokens", self.llama.n_tokens)  # all it evaluated: the one token is not
        log(f"  {IN_PROCESS}: JSON mode")
        answer = self.ask(f"{nonce()} {JSON_PROMPT}", config.json_max_tokens, json_mode=True)
        into.add("json_tokens_per_s", answer.tokens_per_second)
        into.add("json_tokens", answer.completion_tokens)


# -- the run -------------------------------------------------------------------------------------


def run(config: BenchConfig, log: Log = _nop) -> dict[str, Any]:
    """Measure llmkit serve, each peer and the in-process ceiling; return the report, as JSON."""
    from llmkit.server import ServeConfig, prepare

    if config.repeats < 1:
        raise LlmkitError("--repeats must be at least 1")
    begun = datetime.datetime.now(datetime.UTC)
    host = machine()  # now, for the load average before we add to it
    # Pull (or find) the model first, so that the cold starts time the server and not a download.
    prepared = prepare(
        ServeConfig(
            model=config.model, threads=config.threads, ctx=config.ctx, models_dir=config.models_dir
        ),
        log=log,
    )
    llmkit_ = Measured(LLMKIT, "llmkit")
    peers = [(Measured(p.name, "peer", p.url), p) for p in config.peers]
    ceiling = Measured(IN_PROCESS, "in-process")

    # Peers first: one that does not answer should stop the run before minutes of measuring.
    peer_remotes = [(measured, Remote(peer.url, config)) for measured, peer in peers]
    starts = config.repeats + (1 if config.warmup_start else 0)
    server: Started | None = None
    try:
        for i in range(starts):
            if server is not None:
                stop(server.process)
            warm_up = config.warmup_start and i == 0
            log(f"starting llmkit serve ({i + 1}/{starts}{', warm-up' if warm_up else ''})")
            server = start_llmkit(config, prepared.n_ctx)
            if not warm_up:
                llmkit_.add("cold_start_s", server.seconds)
        assert server is not None
        llmkit_.url = server.url
        llmkit_.add("rss_mib", proc_memory(server.process.pid).get("VmRSS"))

        remotes = [(llmkit_, Remote(server.url, config)), *peer_remotes]
        log(
            f"loading {prepared.path.name} in-process ({config.threads} threads, "
            f"context {prepared.n_ctx})"
        )
        local = InProcess(prepared.path, config.threads, prepared.n_ctx, prepared.chat_format)

        log("warming up")
        for _, remote in remotes:
            remote.warm_up()
        local.warm_up()
        for r in range(config.repeats):
            log(f"repeat {r + 1}/{config.repeats}")
            for measured, remote in remotes:
                remote.measure(measured, log)
            local.measure(ceiling, config, log)
        memory = proc_memory(server.process.pid)
        llmkit_.add("rss_end_mib", memory.get("VmRSS"))
        llmkit_.add("rss_peak_mib", memory.get("VmHWM"))
    finally:
        if server is not None:
            stop(server.process)

    results = compare([summarize(m) for m in (llmkit_, *(m for m, _ in peers), ceiling)])
    report = {
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
    report["targets"] = targets(report)
    return report


def compare(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add the figures that need the in-process run (the last result): ratios, prompt speed."""
    ceiling = results[-1]["figures"]
    for result in results:
        figures = result["figures"]
        if result is not results[-1]:
            figures["vs_in_process"] = ratio(
                figures.get("tokens_per_s"), ceiling.get("tokens_per_s")
            )
            # Each repeat measures the server and in-process back to back: on a shared machine
            # the ratio within a repeat is steadier than the ratio of the medians.
            ours = result.get("samples", {}).get("tokens_per_s", [])
            theirs = results[-1].get("samples", {}).get("tokens_per_s", [])
            if ours and len(ours) == len(theirs):
                figures["vs_in_process_paired"] = median(
                    [a / b for a, b in zip(ours, theirs, strict=True)]
                )
        # A server that sends no usage read as many tokens as the same model in-process did.
        if "prompt_tokens" not in figures and "prompt_tokens" in ceiling:
            figures["prompt_tokens"] = ceiling["prompt_tokens"]
            figures["prompt_tokens_from"] = IN_PROCESS
        figures["prompt_tokens_per_s"] = ratio(
            figures.get("prompt_tokens"), figures.get("prompt_ttft_s")
        )
        result["figures"] = {k: v for k, v in figures.items() if v is not None}
    return results


def summarize(measured: Measured) -> dict[str, Any]:
    """Medians (and the samples they came from) of one server's figures."""
    figures: dict[str, Any] = {name: median(values) for name, values in measured.samples.items()}
    figures["turn_ratio"] = ratio(figures.get("turn10_ttft_s"), figures.get("turn1_ttft_s"))
    figures["json_vs_text"] = ratio(figures.get("json_tokens_per_s"), figures.get("tokens_per_s"))
    levels = {}
    for clients, level in sorted(measured.levels.items()):
        levels[str(clients)] = {
            "tokens_per_s": median(level.tokens_per_s),
            "ttft_p50_s": percentile(level.ttft, 50),
            "ttft_p95_s": percentile(level.ttft, 95),
            "requests": level.requests,
            "complete": level.complete,
            "problems": level.problems,
            "samples": {"tokens_per_s": level.tokens_per_s, "ttft_s": level.ttft},
        }
    return {
        "name": measured.name,
        "kind": measured.kind,
        "url": measured.url,
        "figures": {k: v for k, v in figures.items() if v is not None},
        "concurrency": levels,
        "problems": measured.problems,
        "samples": dict(measured.samples),
    }


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for llmkit serve, each with what was measured and whether it was met."""
    by_name = {r["name"]: r for r in report["results"]}
    ours = by_name[LLMKIT]
    figures = ours["figures"]
    checks: list[dict[str, Any]] = []

    def check(target: str, measured: float | None, met: bool | None, shown: str) -> None:
        checks.append({"target": target, "measured": measured, "met": met, "shown": shown})

    vs, paired = figures.get("vs_in_process"), figures.get("vs_in_process_paired")
    check(
        "1 client ≥ 95% of in-process tokens/s",
        vs,
        None if vs is None else vs >= 0.95,
        _fmt(vs, "{:.0%}") + (f" (within each repeat: {paired:.0%})" if paired else ""),
    )
    cold = figures.get("cold_start_s")
    check("cold start < 3 s", cold, None if cold is None else cold < 3.0, _fmt(cold, "{:.2f} s"))
    turns = figures.get("turn_ratio")
    check(
        f"turn-{TURNS} TTFT ≤ 1.5× turn-1",
        turns,
        None if turns is None else turns <= 1.5,
        _fmt(turns, "{:.2f}×"),
    )
    requests = sum(level["requests"] for level in ours["concurrency"].values())
    done = sum(level["complete"] for level in ours["concurrency"].values())
    check(
        "zero incomplete responses",
        requests - done,
        requests > 0 and done == requests,
        f"{requests - done} of {requests}",
    )
    json_ratio = figures.get("json_vs_text")
    check(
        "JSON mode ≥ 0.5× free text",
        json_ratio,
        None if json_ratio is None else json_ratio >= 0.5,
        _fmt(json_ratio, "{:.2f}×"),
    )
    for peer in (r for r in report["results"] if r["kind"] == "peer"):
        for clients, level in ours["concurrency"].items():
            theirs = peer["concurrency"].get(clients, {}).get("tokens_per_s")
            value = ratio(level.get("tokens_per_s"), theirs)
            if int(clients) > 1 and value is not None:
                check(
                    f"{clients} clients ≥ {peer['name']} aggregate tokens/s",
                    value,
                    value >= 1.0,
                    _fmt(value, "{:.2f}×"),
                )
    return checks


# -- output --------------------------------------------------------------------------------------


def _fmt(value: Any, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


# (label, figure, format): the unit goes in the label, so that the columns stay narrow.
_ROWS: list[tuple[str, str, str]] = [
    ("cold start to /health, s", "cold_start_s", "{:.2f}"),
    ("RSS once loaded, MiB", "rss_mib", "{:.0f}"),
    ("RSS peak after the run, MiB", "rss_peak_mib", "{:.0f}"),
    ("time to first token, s", "ttft_s", "{:.3f}"),
    ("generation, tokens/s", "tokens_per_s", "{:.1f}"),
    ("  ÷ in-process", "vs_in_process", "{:.0%}"),
    ("  ÷ in-process, within each repeat", "vs_in_process_paired", "{:.0%}"),
    ("  tokens a stream", "tokens", "{:.0f}"),
    ("prompt, tokens/s", "prompt_tokens_per_s", "{:.0f}"),
    ("  prompt tokens", "prompt_tokens", "{:.0f}"),
    ("turn 1 time to first token, s", "turn1_ttft_s", "{:.3f}"),
    (f"turn {TURNS} time to first token, s", "turn10_ttft_s", "{:.3f}"),
    (f"  turn {TURNS} ÷ turn 1", "turn_ratio", "{:.2f}×"),
    ("JSON mode, tokens/s", "json_tokens_per_s", "{:.1f}"),
    ("  ÷ free text", "json_vs_text", "{:.2f}×"),
]


def table(report: dict[str, Any]) -> Any:
    """The figures side by side, one column per server (and the in-process ceiling)."""
    from rich.table import Table

    results = report["results"]
    config = report["config"]
    title = (
        f"{config['model']} · {config['threads']} threads · context {config['n_ctx']} · "
        f"llmkit --parallel {config.get('parallel', 1)} · "
        f"{config['max_tokens']} tokens a stream · median of {config['repeats']}"
    )
    m = report["machine"]
    load = " / ".join(f"{x:.1f}" for x in m["load_average"]) if m.get("load_average") else "?"
    caption = (
        f"{m['cpu']}, {m['cpus']} CPUs, {m['memory_gib']} GiB; llama-cpp-python "
        f"{m['llama_cpp_python']}; load average at the start {load}"
    )
    grid = Table(
        "",
        *(r["name"] for r in results),
        title=title,
        title_justify="left",
        caption=caption,
        caption_justify="left",
    )
    for label, key, pattern in _ROWS:
        cells = [_fmt(r["figures"].get(key), pattern) for r in results]
        if any(c != "—" for c in cells):
            grid.add_row(label, *cells)
    for clients in config["concurrency"]:
        levels = [r["concurrency"].get(str(clients)) for r in results]
        grid.add_row(
            f"{clients} client{'s' * (clients > 1)}, aggregate tokens/s",
            *(_fmt(lv and lv["tokens_per_s"], "{:.1f}") for lv in levels),
        )
        grid.add_row(
            "  TTFT p50 / p95, s",
            *(
                f"{_fmt(lv['ttft_p50_s'], '{:.2f}')} / {_fmt(lv['ttft_p95_s'], '{:.2f}')}"
                if lv
                else "—"
                for lv in levels
            ),
        )
        grid.add_row(
            "  complete", *(f"{lv['complete']}/{lv['requests']}" if lv else "—" for lv in levels)
        )
    return grid


def targets_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    grid = Table("target (llmkit serve)", "measured", "", title="Targets", title_justify="left")
    for check in report["targets"]:
        verdict = {True: "[green]met[/]", False: "[red]missed[/]", None: "—"}[check["met"]]
        grid.add_row(check["target"], check["shown"], verdict)
    return grid


def problems(report: dict[str, Any]) -> list[str]:
    """One line per failed measurement and per kind of incomplete response, to see why."""
    lines = []
    for result in report["results"]:
        lines += [f"{result['name']}: {problem}" for problem in result["problems"]]
        for clients, level in result["concurrency"].items():
            for problem in dict.fromkeys(level["problems"]):
                lines.append(f"{result['name']}, {clients} clients: {problem}")
    return lines


def write_json(report: dict[str, Any], path: Path) -> None:
    try:
        path.write_text(json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        raise LlmkitError(f"cannot write {path}: {exc.strerror or exc}") from None


def plot(report: dict[str, Any], path: Path) -> None:
    """Aggregate tokens/s by number of clients, a line per server, the in-process ceiling dashed."""
    plt = _pyplot()
    config = report["config"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    levels = list(config["concurrency"])
    for result in report["results"]:
        if result["kind"] == "in-process":
            ceiling = result["figures"].get("tokens_per_s")
            if ceiling:
                ax.axhline(
                    ceiling,
                    linestyle="--",
                    color="grey",
                    linewidth=1,
                    label=f"in-process llama-cpp-python, 1 stream ({ceiling:.1f})",
                )
            continue
        values = [result["concurrency"].get(str(c), {}).get("tokens_per_s") for c in levels]
        counts = result["concurrency"].values()
        incomplete = sum(lv["requests"] - lv["complete"] for lv in counts)
        label = result["name"] + (
            f" ({incomplete} of {sum(lv['requests'] for lv in counts)} responses incomplete)"
            if incomplete
            else ""
        )
        ax.plot(
            levels, [v if v is not None else float("nan") for v in values], marker="o", label=label
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel("concurrent streaming clients")
    ax.set_ylabel("aggregate tokens/s")
    ax.set_ylim(bottom=0)
    ax.set_title(
        f"{config['model']}, {config['threads']} threads, llmkit --parallel "
        f"{config.get('parallel', 1)}, {config['max_tokens']} tokens a stream "
        f"(median of {config['repeats']})",
        fontsize=10,
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as exc:
        raise LlmkitError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed: the plot goes to a file
        import matplotlib.pyplot as plt
    except ImportError:
        raise LlmkitError("--plot needs matplotlib: pip install 'llmkit[bench]'") from None
    return plt
