"""`llmkit service`: `llmkit serve` as a hardened systemd service: the unit, install, control.

System mode (the default, as root) writes /etc/systemd/system/llmkit.service and its settings in
/etc/llmkit/llmkit.env; the service runs as a dynamic unprivileged user whose model store is
/var/lib/llmkit/models. `--user` mode writes ~/.config/systemd/user/llmkit.service and uses the
user's own model store. LLMKIT_SERVICE_ROOT=DIR puts the system-mode files under DIR instead of /
(for tests and packaging); systemctl is then never called.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs

from llmkit import hardening, settings
from llmkit.errors import LlmkitError
from llmkit.net import is_loopback
from llmkit.settings import ServeSettings

if TYPE_CHECKING:
    from llmkit.catalog import Reference

NAME = "llmkit"
UNIT = f"{NAME}.service"
# RestartSteps= and RestartMaxDelaySec= (exponential back-off) exist from systemd 254 on.
_BACKOFF_SINCE = 254
# A DynamicUser cannot enter these (ProtectHome=yes hides them, and /root is 0700 anyway).
_HOMES = (Path("/home"), Path("/root"), Path("/run/user"))

Log = Callable[[str], None]


@dataclass(frozen=True)
class Layout:
    """Where the service's files live and whether the systemd running here reads them."""

    user: bool
    unit: Path
    env_file: Path
    models_dir: Path
    catalog_dir: Path  # extra catalog TOMLs, beside llmkit's own
    managed: bool  # False: no systemd here, or a test root; print the systemctl commands instead


@dataclass(frozen=True)
class Service:
    """What the unit runs: the installed llmkit and the serve settings its env file holds."""

    command: tuple[str, ...]
    serve: ServeSettings
    more_models: tuple[str, ...] = ()  # served beside serve.model, loaded when first asked

    def __post_init__(self) -> None:
        if not self.serve.model:
            raise ValueError("a service needs a model to serve")

    @property
    def model(self) -> str:
        """The first model: the one loaded at start."""
        assert self.serve.model
        return self.serve.model[0]

    @property
    def models(self) -> tuple[str, ...]:
        return (self.model, *self.more_models)


# Written to the env file even at their defaults, so that the file shows what to edit.
_ALWAYS_WRITTEN = ("host", "port")
# On the unit's ExecStart line, one --model each: a variable holds one value, and names
# (paths) may hold spaces.
_ON_EXEC_START = ("model",)
# The unit sets these (Environment=) for every service; the env file leaves them alone.
_SET_BY_THE_UNIT = ("models_dir", "offline")


# -- where things are ------------------------------------------------------------------------


def systemd_running(user: bool = False) -> bool:
    """Whether systemd is PID 1 here (sd_booted()); for --user, whether the user's manager runs."""
    if not Path("/run/systemd/system").is_dir():
        return False
    if not user:
        return True
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return Path(runtime, "systemd", "private").exists()


def unmanaged_reason(where: Layout) -> str:
    """Why llmkit leaves systemctl alone for this layout ("" when it does not)."""
    if where.managed:
        return ""
    if not systemd_running():
        return "systemd is not running here"
    if where.user:
        return "no systemd user manager (systemctl --user) runs for you here"
    return "LLMKIT_SERVICE_ROOT is set, so the running systemd does not read these files"


def system_layout(root: Path | None = None) -> Layout:
    """System mode: /etc and /var/lib, or the same below LLMKIT_SERVICE_ROOT."""
    root = root or settings.service_root() or Path("/")
    return Layout(
        user=False,
        unit=root / "etc/systemd/system" / UNIT,
        env_file=root / "etc/llmkit/llmkit.env",
        models_dir=root / "var/lib/llmkit/models",
        catalog_dir=root / "etc/llmkit/models",
        managed=root == Path("/") and systemd_running(),
    )


def user_layout() -> Layout:
    """--user mode: XDG config for the unit and env file, the user's own model store."""
    config = Path(platformdirs.user_config_dir())
    return Layout(
        user=True,
        unit=config / "systemd/user" / UNIT,
        env_file=config / NAME / "service.env",
        models_dir=settings.default_models_dir(),
        catalog_dir=settings.user_catalog_dir(),
        managed=systemd_running(user=True),
    )


def layout(user: bool) -> Layout:
    return user_layout() if user else system_layout()


def llmkit_command() -> tuple[str, ...]:
    """The running llmkit by absolute path: its console script, else `python -m llmkit`."""
    # Not resolved: a venv's python is a symlink out of the venv, and the venv is what we want.
    script = Path(sys.executable).absolute().parent / NAME
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script),)
    return (str(Path(sys.executable).absolute()), "-m", NAME)


# -- rendering (pure) ------------------------------------------------------------------------


def render_unit(service: Service, where: Layout, systemd_version: int = 0) -> str:
    """The unit file: Type=notify, restart with back-off, and (system mode) the full hardening."""
    user = " --user" if where.user else ""
    lines = [
        f"# Written by `llmkit service install{user}`; running it again rewrites this file.",
        "# The models are the --model words of ExecStart (install again to change them); the",
        f"# other settings (host, port, API key) are in {where.env_file}:",
        f"# edit that, then `systemctl{user} restart {NAME}`.",
        "",
        "[Unit]",
        f"Description=llmkit: OpenAI-compatible LLM server ({', '.join(service.models)})",
        *_network_order(service.serve.host, where.user),
        "# Never left failed for good: a server killed for memory five times in ten minutes (a",
        "# burst of requests, not a broken install) must come back; the delay grows instead.",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "# `llmkit serve` sends READY=1 to $NOTIFY_SOCKET once the model is loaded and the port",
        "# listens, so `systemctl start` returns when the server answers; STOPPING=1 on shutdown.",
        "Type=notify",
        "# Each --model is served; the first is loaded at start, the others when first asked.",
        f"ExecStart={_exec_line([*service.command, 'serve', *_model_words(service.models)])}",
        # EnvironmentFile= takes the rest of the line as the path: no quotes, only % escaped.
        f"EnvironmentFile={str(where.env_file).replace('%', '%%')}",
        f"Environment={_quote(_env('models_dir') + '=' + str(where.models_dir))}",
        f"Environment={_quote('LLMKIT_CATALOG_DIR=' + str(where.catalog_dir))}",
        *(
            []
            if where.user
            else [
                "# A dynamic user has no home; what wants one (platformdirs) gets the state directory.",
                f"Environment={_quote('HOME=' + str(where.models_dir.parent))}",
            ]
        ),
        "# The model was pulled by `llmkit service install`: the service never downloads.",
        f"Environment={_env('offline')}=1 HF_HUB_OFFLINE=1",
        "# One line per request reaches the journal as it happens; /usr stays read-only.",
        "Environment=PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1",
        "# Loading a big model from a slow disk takes a while.",
        "TimeoutStartSec=5min",
        "Restart=on-failure",
        *_restart_delay(systemd_version),
        "# Clients' sockets: llmkit raises its soft limit to this, --max-connections needs it.",
        "LimitNOFILE=65536",
        "# Past this, the kernel kills this service, not whatever else the machine runs.",
        "MemoryMax=90%",
        "",
        *(
            hardening.user_service()
            if where.user
            else hardening.system_service(service.serve.host, service.serve.port)
        ),
        "",
        "[Install]",
        f"WantedBy={'default.target' if where.user else 'multi-user.target'}",
        "",
    ]
    return "\n".join(lines)


def _model_words(models: Sequence[str]) -> list[str]:
    return [word for model in models for word in ("--model", model)]


def _env(name: str) -> str:
    return ServeSettings.env_name(name)


def _network_order(host: str, user: bool) -> list[str]:
    if user or is_loopback(host) or host in ("0.0.0.0", "::", ""):
        return ["After=network.target"]
    # A specific address can only be bound once the network has configured it.
    return ["Wants=network-online.target", "After=network-online.target"]


def _restart_delay(systemd_version: int) -> list[str]:
    if systemd_version >= _BACKOFF_SINCE:
        return ["RestartSec=2s", "RestartSteps=5", "RestartMaxDelaySec=1min"]
    return ["RestartSec=10s"]


def render_env(service: Service) -> str:
    """The EnvironmentFile: the service's serve settings as the LLMKIT_* variables serve reads."""
    lines = [
        "# llmkit service settings: systemd (EnvironmentFile=) hands them to `llmkit serve`;",
        "# `llmkit serve --help` lists all its LLMKIT_* variables (LLMKIT_THREADS, LLMKIT_CTX, LLMKIT_PARALLEL...).",
    ]
    for field in fields(ServeSettings):
        value = getattr(service.serve, field.name)
        env = ServeSettings.setting(field.name).env
        if env is None or value is None or field.name in (*_SET_BY_THE_UNIT, *_ON_EXEC_START):
            continue
        if value != field.default or field.name in _ALWAYS_WRITTEN:
            lines.append(f"{env}={_env_value(_env_text(value))}")
    return "\n".join(lines) + "\n"


def _env_text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list | tuple):  # a repeatable flag: its variable holds words
        return " ".join(map(str, value))
    return str(value)


def _env_value(value: str) -> str:
    """A value as systemd's env-file parser reads it back: double quotes, \\ before \\ " ` $."""
    if "\n" in value or "\r" in value:
        raise LlmkitError("a service setting cannot contain a line break")
    if re.fullmatch(r"[A-Za-z0-9_.,:/@+=-]+", value):
        return value
    return '"' + re.sub(r'([\\"`$])', r"\\\1", value) + '"'


def _quote(word: str) -> str:
    """One word of a unit-file line: specifiers (%) escaped, quoted when it has spaces or quotes."""
    word = word.replace("%", "%%")
    if re.fullmatch(r"[A-Za-z0-9_./:@+=,-]+", word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _exec_line(argv: Sequence[str]) -> str:
    # $ would be expanded as an environment variable on an Exec line; $$ is a literal dollar.
    return " ".join(_quote(arg).replace("$", "$$") for arg in argv)


def parse_systemd_version(text: str) -> int:
    """252 from `systemctl --version` ("systemd 252 (252.38-1~deb12u1)"); 0 if unknown."""
    match = re.match(r"\s*systemd (\d+)", text)
    return int(match.group(1)) if match else 0


def parse_exposure(output: str) -> tuple[float, str]:
    """(0.9, "SAFE") from the last line of `systemd-analyze security UNIT`."""
    for line in reversed(output.strip().splitlines()):
        match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\w+)", line)
        if match:
            return float(match.group(1)), match.group(2)
    raise ValueError("no 'Overall exposure level' line in the output of systemd-analyze security")


def systemctl(user: bool, *args: str) -> list[str]:
    return ["systemctl", *(["--user"] if user else []), *args]


def journalctl(user: bool, lines: int, follow: bool) -> list[str]:
    unit = [f"--user-unit={NAME}"] if user else ["-u", NAME]
    return ["journalctl", "-q", *unit, "-n", str(lines), *(["-f"] if follow else ["--no-pager"])]


# -- doing it --------------------------------------------------------------------------------


@dataclass
class Installed:
    """What `install` did, for the CLI to report."""

    unit: Path
    env_file: Path
    models_dir: Path
    model_paths: list[Path]  # in the order served
    commands: list[list[str]]
    not_run: str  # why llmkit did not run the commands (and the user should), "" if it did


def plan(
    models: Sequence[str] | None,
    host: str,
    port: int,
    api_key_file: Path | None,
    user: bool,
    embedding_model: str | None = None,
) -> tuple[Service, Layout]:
    """The service and where it goes, from install's options; reads the key file, writes nothing.

    The first of `models` is loaded when the service starts; the others when first asked."""
    models = list(dict.fromkeys(m.strip() for m in models or () if m.strip()))  # once each
    if not models:
        raise LlmkitError(f"no model: pass --model NAME (e.g. gemma-3-270m) or set {_env('model')}")
    api_key = None
    if api_key_file is not None:
        api_key = settings.read_api_key_file(api_key_file)
    serve = ServeSettings(
        model=[models[0]], host=host, port=port, api_key=api_key, embedding_model=embedding_model
    )
    return Service(llmkit_command(), serve, tuple(models[1:])), layout(user)


def preview(service: Service, where: Layout) -> str:
    """--dry-run: the unit and the env file under the paths they would go to (the key masked)."""
    shown = service
    if service.serve.api_key is not None:
        shown = replace(service, serve=replace(service.serve, api_key="********"))
    return (
        f"# ---- {where.unit}\n{render_unit(service, where, _systemd_version())}\n"
        f"# ---- {where.env_file} (mode {_env_mode(service):04o})\n{render_env(shown)}"
    )


def warnings(service: Service, where: Layout) -> list[str]:
    """What would keep a system service from starting that llmkit can see beforehand."""
    if where.user:
        return []
    return [
        f"warning: {path} is inside a home directory, which the service's unprivileged user "
        "cannot read: install llmkit outside /home and /root (e.g. python3 -m venv "
        "/opt/llmkit), or use --user"
        for path in _unreachable_for_service(service, where)
    ]


def install(service: Service, where: Layout, log: Log, show_progress: bool = False) -> Installed:
    """Pull the models into the service's store, write the unit and env file, enable and start it."""
    for path in (where.unit, where.env_file, where.models_dir):
        if not writable(path):
            raise LlmkitError(
                f"cannot write {path}: a system service is installed by root (sudo "
                "llmkit service install ...), or pass --user for a user service"
            )
    for warning in warnings(service, where):
        log(warning)
    pulled = [_pull(model, where, log, show_progress) for model in service.models]
    if service.serve.embedding_model:  # the service runs offline: its files must be there
        _pull(service.serve.embedding_model, where, log, show_progress)
    if not where.user:
        hand_over(where.models_dir)
    write_file(where.env_file, render_env(service), _env_mode(service))
    write_file(where.unit, render_unit(service, where, _systemd_version()), 0o644)
    # restart, not `enable --now`: installing again over a running service must apply the changes.
    commands = [
        systemctl(where.user, "daemon-reload"),
        systemctl(where.user, "enable", NAME),
        systemctl(where.user, "restart", NAME),
    ]
    if where.managed:
        for command in commands:
            run_command(command)
    return Installed(
        where.unit, where.env_file, where.models_dir, pulled, commands, unmanaged_reason(where)
    )


@dataclass
class Uninstalled:
    removed: list[Path]
    models_dir: Path
    commands: list[list[str]]
    not_run: str


def uninstall(where: Layout) -> Uninstalled:
    """Stop and disable the service and delete its unit and env file; the models stay."""
    commands = [
        systemctl(where.user, "disable", "--now", NAME),
        systemctl(where.user, "daemon-reload"),
    ]
    if where.managed and where.unit.exists():
        run_command(commands[0])
    removed = [p for p in (where.unit, where.env_file) if p.exists()]
    for path in removed:
        path.unlink()
    if where.managed:
        run_command(commands[1])
    return Uninstalled(removed, where.models_dir, commands, unmanaged_reason(where))


def control(where: Layout, argv: list[str]) -> int:
    """Run one systemctl/journalctl command for the service; its exit code is the CLI's."""
    if not where.managed:
        raise LlmkitError(
            f"{unmanaged_reason(where)}, so there is no service to ask; "
            f"where systemd runs, this runs: {shlex.join(argv)}"
        )
    try:
        return subprocess.run(argv).returncode
    except FileNotFoundError:
        raise LlmkitError(f"{argv[0]} is not installed") from None


def _resolve(model: str, where: Layout) -> Reference:
    """The model as the service will resolve it: llmkit's catalog plus the service's catalog dir."""
    from llmkit.catalog import catalog_dirs, load_catalog, resolve

    return resolve(model, load_catalog([*catalog_dirs()[:-1], where.catalog_dir]))


def _pull(model: str, where: Layout, log: Log, show_progress: bool) -> Path:
    from llmkit.store import Store

    store = Store(where.models_dir, offline=settings.hub_offline())
    return store.ensure(_resolve(model, where), log=log, show_progress=show_progress).path


def hand_over(models_dir: Path) -> None:
    """Give files root just pulled to the service's user, if the service ran before.

    systemd chowns /var/lib/llmkit to the dynamic user on the first start, but on later starts it
    only looks at the top directory, so a second model pulled by root would stay root's.

    The service's user controls these folders: a path it swapped for a symbolic link between
    the walk and the chown must not make root chown what the link points to. So the walk holds
    each folder open (os.fwalk) and changes owners relative to it, never following a link.
    """
    state = models_dir.parent
    try:
        owner = state.stat()
    except FileNotFoundError:
        return
    if owner.st_uid == os.geteuid() or not models_dir.is_dir() or models_dir.is_symlink():
        return
    for _, dirs, files, folder in os.fwalk(models_dir, follow_symlinks=False):
        if os.fstat(folder).st_uid != owner.st_uid:
            os.fchown(folder, owner.st_uid, owner.st_gid)
        for name in dirs + files:
            found = os.stat(name, dir_fd=folder, follow_symlinks=False)
            if found.st_uid != owner.st_uid:
                os.chown(name, owner.st_uid, owner.st_gid, dir_fd=folder, follow_symlinks=False)


def _unreachable_for_service(service: Service, where: Layout) -> list[Path]:
    from llmkit.catalog import LocalModel

    # The interpreter the console script starts (resolved: a venv links to it) and llmkit itself.
    paths = [Path(sys.executable).resolve(), Path(__file__).resolve()]
    for model in service.models:
        reference = _resolve(model, where)
        if isinstance(reference, LocalModel):
            paths.append(reference.path.resolve())
    return [p for p in paths if any(p.is_relative_to(home) for home in _HOMES)]


def writable(path: Path) -> bool:
    """Whether path could be created or replaced: its nearest existing folder is writable."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return os.access(folder, os.W_OK)


def _env_mode(service: Service) -> int:
    return 0o600 if service.serve.api_key is not None else 0o644


def write_file(path: Path, text: str, mode: int) -> None:
    """Replace a file atomically; created with its final mode, so a key is never world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(partial, mode)  # the umask may have taken bits away
    os.replace(partial, path)


def _systemd_version() -> int:
    try:
        result = subprocess.run(
            ["systemctl", "--version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return parse_systemd_version(result.stdout)


def run_command(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        hint = "; see `llmkit service status` and `llmkit service logs`" * ("restart" in argv)
        why = " | ".join(detail[-3:]) or f"exit code {result.returncode}"
        raise LlmkitError(f"{shlex.join(argv)} failed: {why}{hint}")
