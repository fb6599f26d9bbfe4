"""Showing a report: the rich table side by side, the JSON file, the matplotlib plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmkit.bench.workloads import TURNS
from llmkit.errors import LlmkitError


def show(report: dict[str, Any], console: Any) -> None:
    """Print the figures table and the problems to a rich console."""
    console.print(table(report))
    for line in problems(report):
        console.print(f"[yellow]problem:[/] {line}", highlight=False)


def _fmt(value: Any, pattern: str, figures: dict[str, Any] | None = None) -> str:
    return "—" if value is None else pattern.format(value, **(figures or {}))


# (label, figure, format): the unit goes in the label, so that the columns stay narrow. The format
# may name other figures of the same server.
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
    ("tool call, tokens/s", "tool_tokens_per_s", "{:.1f}"),
    ("  ÷ free text", "tool_vs_text", "{:.2f}×"),
    ("  valid calls", "valid_calls", "{}/{tool_calls}"),
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
        cells = [_fmt(r["figures"].get(key), pattern, r["figures"]) for r in results]
        if any(c != "—" for c in cells):
            grid.add_row(label, *cells)
    for clients in config["concurrency"]:
        levels = [r["concurrency"].get(str(clients)) for r in results]
        grid.add_row(
            f"{clients} client{'s' * (clients > 1)}, aggregate tokens/s",
            *(_fmt(lv and lv["tokens_per_s"], "{:.1f}") for lv in levels),
        )
        versus = [_fmt(lv and lv.get("llmkit_vs_this"), "{:.2f}×") for lv in levels]
        if any(cell != "—" for cell in versus):
            grid.add_row("  llmkit ÷ this", *versus)
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


def problems(report: dict[str, Any]) -> list[str]:
    """One line per kind of failed measurement and of incomplete response, to see why."""
    lines = []
    for result in report["results"]:
        lines += [f"{result['name']}: {p}" for p in dict.fromkeys(result["problems"])]
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
    plt = pyplot()
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
                    label=f"in-process engine, 1 stream ({ceiling:.1f})",
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


def pyplot() -> Any:
    """matplotlib's pyplot, drawing to files; a clear error when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed: the plot goes to a file
        import matplotlib.pyplot as plt
    except ImportError:
        raise LlmkitError("--plot needs matplotlib: pip install 'llmkit[bench]'") from None
    return plt
