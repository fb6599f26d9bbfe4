"""A real systemd, PID 1 of a systemd-nspawn container, for the end-to-end test of llmkit's unit.

The container's root is Debian bookworm made by debootstrap from the mirror the host's apt uses,
with every package it needs installed by debootstrap itself: nothing inside ever downloads, so the
container can have no network but lo. The root is kept in a folder between runs (a second boot
takes seconds); the container is booted afresh each time and powered off at the end.

It works on hosts where systemd is not PID 1 and nobody manages cgroups or D-Bus, as on llmkit's
build machines, which is why it looks the way it does:

- nspawn runs with `--register=no --keep-unit`: there is no machined to register with, and no
  systemd to make a scope; so `machinectl` and `systemd-run -M` cannot work, and commands reach the
  container with `nsenter` into its PID 1's namespaces instead.
- nspawn makes the container's cgroups below its own, so it is started inside a cgroup of ours
  (one per hierarchy), never at a hierarchy's root; they are removed after power-off.
- nspawn keeps its locks under /run, which may be a plain disk folder: each nspawn gets a private
  mount namespace with a tmpfs on /run.
- bpf() is allowed in (`--system-call-filter=bpf`), so that a unit's IPAddressDeny= is enforced.

Needs root, systemd-nspawn (Debian's systemd-container), debootstrap and a reachable Debian mirror;
`Unavailable` says in one line which is missing.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

SUITE = "bookworm"
FALLBACK_MIRROR = "http://deb.debian.org/debian/"
INSIDE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# apt's timers would only fail without network, leaving the system "degraded".
MASKED = ("apt-daily.timer", "apt-daily-upgrade.timer")


class Unavailable(Exception):
    """No container can be made on this host; the message says why, in one line."""


def require_host() -> None:
    """Raise Unavailable unless this process can make and boot containers."""
    if os.geteuid() != 0:
        raise Unavailable(f"booting a systemd container needs root (running as uid {os.geteuid()})")
    packages = {
        "systemd-nspawn": "systemd-container",
        "debootstrap": "debootstrap",
        "nsenter": "util-linux",
        "unshare": "util-linux",
    }
    missing = [tool for tool in packages if not shutil.which(tool)]
    if missing:
        install = " ".join(dict.fromkeys(packages[tool] for tool in missing))
        raise Unavailable(
            f"booting a systemd container needs {' and '.join(missing)} (apt-get install {install})"
        )


def debian_mirror(suite: str = SUITE) -> str:
    """The mirror the host's apt fetches `suite` from, or deb.debian.org when apt has none."""
    try:
        targets = subprocess.run(
            [
                "apt-get",
                "indextargets",
                "--format",
                "$(RELEASE) $(REPO_URI)",
                "Created-By: Packages",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return FALLBACK_MIRROR
    for line in targets.splitlines():
        release, _, uri = line.partition(" ")
        if release == suite and uri:
            return uri
    return FALLBACK_MIRROR


def cgroup_dirs(name: str) -> list[Path]:
    """Our cgroup in each hierarchy nspawn places containers in: the unified one, and on a v1 or
    hybrid host also the name=systemd one."""
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():  # cgroup v2 only
        return [base / name]
    return [base / tree / name for tree in ("systemd", "unified") if (base / tree).is_dir()]


def _last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("E:", "W: Failure"))]
    return (errors or lines or ["no output"])[-1]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if int((proc / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                    found.append(int(proc.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


class Container:
    """Debian with systemd as PID 1 in a systemd-nspawn container, kept under `folder`.

    `with Container(...)` holds the folder's lock (one container per folder at a time) and powers
    the container off on the way out; in between, `make_root`, `boot`, then `run` commands.
    """

    def __init__(self, folder: Path, name: str, packages: Iterable[str]) -> None:
        self.folder = folder
        self.name = name
        self.packages = sorted({"systemd", "dbus", *packages})
        self.root = folder / "rootfs"
        self.state = folder / "container"
        self._lock: int | None = None
        self._nspawn: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None  # the container's PID 1, as the host numbers it

    def __enter__(self) -> Self:
        self.state.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.poweroff()  # one left running by an interrupted run
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.poweroff()
        finally:
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None

    # -- the root file system ----------------------------------------------------------------

    def make_root(self, timeout: float = 1200) -> None:
        """Debootstrap the root with our packages, unless one with exactly these is there."""
        stamp = self.root / ".llmkit-packages"
        wanted = f"{SUITE} {' '.join(self.packages)}\n"
        if stamp.is_file() and stamp.read_text() == wanted:
            return
        mirror = debian_mirror()
        partial = self.folder / "rootfs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        log = self.state / "debootstrap.log"
        command = ["debootstrap", "--variant=minbase", f"--include={','.join(self.packages)}"]
        command += [SUITE, str(partial), mirror]
        try:
            with log.open("w") as out:
                done = subprocess.run(
                    command, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
                )
        except subprocess.TimeoutExpired:
            raise Unavailable(
                f"debootstrap {SUITE} from {mirror} took over {timeout:g} s"
            ) from None
        if done.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise Unavailable(f"debootstrap {SUITE} from {mirror} failed: {_last_error(log)}")
        for unit in MASKED:
            (partial / "etc/systemd/system" / unit).symlink_to("/dev/null")
        (partial / stamp.name).write_text(wanted)
        shutil.rmtree(self.root, ignore_errors=True)
        partial.rename(self.root)

    # -- booting and powering off ------------------------------------------------------------

    def _nspawn_command(self, *args: str) -> list[str]:
        """systemd-nspawn args, run in our cgroups with a private tmpfs /run."""
        cgroups = cgroup_dirs(f"nspawn-{self.name}")
        for cgroup in cgroups:
            cgroup.mkdir(exist_ok=True)
        enter = "".join(f"echo $$ > {shlex.quote(str(c / 'cgroup.procs'))}; " for c in cgroups)
        script = f'{enter}mount -t tmpfs -o mode=0755 nspawn-run /run && exec systemd-nspawn "$@"'
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *args]

    def boot(self, binds: Mapping[Path, str] | None = None, timeout: float = 120) -> None:
        """Boot the container (lo only); binds are host folders mounted read-only inside."""
        command = self._nspawn_command(
            f"--directory={self.root}",
            f"--machine={self.name}",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--console=read-only",
            "--private-network",
            "--system-call-filter=bpf",
            *(f"--bind-ro={host}:{inside}" for host, inside in (binds or {}).items()),
        )
        console = self.state / "console.log"
        with console.open("wb") as out:
            self._nspawn = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        (self.state / "nspawn.pid").write_text(f"{self._nspawn.pid}\n")
        deadline = time.monotonic() + timeout
        while self.leader is None:
            self._check_booting(deadline, console)
            for child in _children(self._nspawn.pid):
                try:
                    if os.path.basename(os.readlink(f"/proc/{child}/exe")) == "systemd":
                        self.leader = child
                except OSError:
                    continue  # gone, or not yet exec'd
            time.sleep(0.05)
        while True:
            self._check_booting(deadline, console)
            state = self._nsenter(
                "systemctl is-system-running --wait", None, timeout
            ).stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.1)  # PID 1's socket appears a little after its exec

    def _check_booting(self, deadline: float, console: Path) -> None:
        assert self._nspawn is not None
        if self._nspawn.poll() is not None:
            tail = console.read_text(errors="replace").strip().splitlines()[-20:]
            raise RuntimeError(
                f"systemd-nspawn exited {self._nspawn.returncode}:\n" + "\n".join(tail)
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"the container did not boot in time; see {console}")

    def poweroff(self, timeout: float = 60) -> None:
        """Power the container off (systemctl poweroff, else SIGTERM, else SIGKILL) and remove
        our cgroups. Also finds one booted by an earlier process, by its pid file."""
        pid_file = self.state / "nspawn.pid"
        pid = self._nspawn.pid if self._nspawn else None
        if pid is None and pid_file.is_file():
            pid = int(pid_file.read_text())
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() != "systemd-nspawn":
                    pid = None
            except OSError:
                pid = None
        if pid is not None and _alive(pid):
            leaders = [self.leader] if self.leader else _children(pid)
            for leader in leaders:
                subprocess.run(
                    ["nsenter", "-t", str(leader), "-a", "systemctl", "poweroff", "--no-block"],
                    capture_output=True,
                    timeout=30,
                )
            # nspawn turns SIGTERM into the container's own shutdown signal.
            for sig, wait in ((None, timeout), (signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                if sig is not None:
                    os.kill(pid, sig)
                if self._wait_gone(pid, wait):
                    break
        self._nspawn = None
        self.leader = None
        pid_file.unlink(missing_ok=True)
        for cgroup in cgroup_dirs(f"nspawn-{self.name}"):
            for folder, _, _ in os.walk(cgroup, topdown=False):  # the deepest first
                try:
                    os.rmdir(folder)
                except OSError:
                    pass  # still has processes: left for the next power-off to remove

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._nspawn is not None and self._nspawn.poll() is not None:
                return True
            if self._nspawn is None and not _alive(pid):
                return True
            time.sleep(0.1)
        return False

    # -- inside ------------------------------------------------------------------------------

    def run(
        self, command: str, input: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """A root shell command inside the container, in a clean environment."""
        return self._nsenter(command, input, timeout)

    def _nsenter(
        self, command: str, input: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        # Not `run`, which a subclass may make stricter: booting expects failures.
        if self.leader is None:
            raise RuntimeError("the container is not booted")
        return subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "--", "/usr/bin/env", "-i"]
            + [f"PATH={INSIDE_PATH}", "HOME=/root", "LANG=C.UTF-8", "TERM=dumb"]
            + ["SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "/bin/sh", "-c", command],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
