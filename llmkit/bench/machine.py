"""What the figures were taken on, and how much memory a server process holds (from /proc)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from llmkit.modelinfo import available_memory
from llmkit.settings import physical_cores


def process_memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MiB (empty where /proc does not tell)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return parse_status(text)


def parse_status(text: str) -> dict[str, float]:
    """VmRSS and VmHWM, in MiB, of a /proc/PID/status text."""
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

    available = available_memory()  # what `llmkit serve` checks a model against, cgroups included
    return {
        "cpu": cpu or platform.processor(),
        "cpus": os.cpu_count(),
        "physical_cores": physical_cores(),  # what `llmkit serve` picks its threads from
        "memory_gib": memory_gib,
        "memory_available_gib": round(available / 1024**3, 1) if available is not None else None,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "llama_cpp_python": llama_version,
        "llmkit": __version__,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
