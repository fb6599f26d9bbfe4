"""End to end under a real systemd: `llmkit service install` and `llmkit lb service install`
in a systemd-nspawn container.

The container comes from `tests/systemd_container.py`: Debian bookworm, debootstrapped from the
mirror apt uses, booted with systemd as PID 1, which enforces the unit's hardening
(MemoryDenyWriteExecute, SystemCallFilter, DynamicUser, IPAddressDeny, ...). Its only network is
lo, so nothing in it can download. llmkit goes in as wheels made on this machine: llmkit's own
built from the checkout, every dependency repacked from the files this venv runs (the same
llama-cpp-python build, compile flags and all, that the rest of the suite tests).

Needs root, systemd-nspawn and debootstrap (`apt-get install systemd-container debootstrap`) and a
reachable Debian mirror; without them the tests skip with one line saying which is missing (and
fail when CI is set, so that CI never passes without them). LLMKIT_E2E_DIR (default
/var/tmp/llmkit-e2e) keeps the container's root file system and the wheels between runs, so that a
second run boots in seconds; the container itself is powered off at the end.
"""

from __future__ import annotations

import base64
import email.parser
import hashlib
import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from llmkit.service import parse_exposure
from tests import systemd_container

REPO = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("LLMKIT_E2E_DIR") or "/var/tmp/llmkit-e2e")
MACHINE = "llmkit-e2e"
VENV = "/opt/llmkit"
KEY = 'e2e "secret" $key\\'
USER = "llmkit-e2e"
LB_PORT = 8090  # llmkit-lb's, in front of the replica's 8000
# libgomp1: llama.cpp's OpenMP runtime (the host's compiler brought it; minbase lacks it).
# libpam-systemd: a user's own systemd (user@.service), for --user. haproxy: llmkit-lb.service.
PACKAGES = ["python3", "python3-venv", "libgomp1", "libpam-systemd", "haproxy"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

try:  # the quick checks here, so that a skip is one line for the module, not one per test
    systemd_container.require_host()
except systemd_container.Unavailable as exc:
    if not os.environ.get("CI"):  # on CI the container fixture fails instead
        pytest.skip(str(exc), allow_module_level=True)


# -- wheels ----------------------------------------------------------------------------------


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _wheel_name(dist: importlib.metadata.Distribution) -> str:
    """name-version-pythons-abis-platforms.whl from the tags in the installed WHEEL file."""
    tags = [
        line.split(":", 1)[1].strip().split("-")
        for line in (dist.read_text("WHEEL") or "").splitlines()
        if line.startswith("Tag:")
    ]
    parts = [".".join(dict.fromkeys(tag[i] for tag in tags)) for i in range(3)]
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    return f"{name}-{dist.version}-{'-'.join(parts)}.whl"


def repack(dist: importlib.metadata.Distribution, folder: Path) -> Path:
    """A wheel holding exactly the files of an installed distribution, listed by its RECORD.

    Entry-point scripts are left out (pip writes them on install), and so are byte code and
    pip's own markers (INSTALLER, REQUESTED, direct_url.json).
    """
    target = folder / _wheel_name(dist)
    files = [
        f
        for f in dist.files or []
        if not str(f).startswith("..")
        and "__pycache__" not in f.parts
        and f.name not in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")
    ]
    info = next(f.parts[0] for f in files if f.parts[0].endswith(".dist-info"))
    partial = target.with_suffix(".partial")
    record = []
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as wheel:
        for file in sorted(files, key=lambda f: (f.parts[0] == info, str(f))):  # dist-info last
            path = Path(str(dist.locate_file(file)))
            data = path.read_bytes()
            entry = zipfile.ZipInfo(str(file), (1980, 1, 1, 0, 0, 0))
            entry.external_attr = (path.stat().st_mode & 0xFFFF) << 16
            wheel.writestr(entry, data)
            record.append(f"{file},{_record_hash(data)},{len(data)}")
        record.append(f"{info}/RECORD,,")
        wheel.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    partial.replace(target)
    return target


def closure(requirements: list[str]) -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions that satisfy requirements, and theirs, recursively."""
    found: dict[str, importlib.metadata.Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        extras = sorted(req.extras) or [""]
        name = canonicalize_name(req.name)
        try:
            dist = found.get(name) or importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{req.name} (needed by the wheels) is not installed in this venv")
        found[name] = dist
        for extra in extras:
            if (name, extra) in done:
                continue
            done.add((name, extra))
            for line in dist.requires or []:
                sub = Requirement(line)
                if sub.marker is None or sub.marker.evaluate({"extra": extra}):
                    todo.append(Requirement(str(sub).split(";")[0]))
    return found


def build_wheels(folder: Path) -> Path:
    """A folder of wheels: llmkit built from this checkout, its dependencies repacked from the venv.

    requirements.txt pins them all; stamp.txt changes whenever any of them does.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("llmkit-*.whl"):
        old.unlink()
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(folder), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr
    (ours,) = folder.glob("llmkit-*.whl")
    with zipfile.ZipFile(ours) as wheel:
        meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(wheel.read(meta).decode())
    requires = [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]
    deps = closure(
        [
            str(r).split(";")[0]
            for r in requires  # llmkit[tiny]'s
            if r.marker is None or r.marker.evaluate({"extra": "tiny"})
        ]
    )

    stamps_file = folder / "stamps.json"
    stamps = json.loads(stamps_file.read_text()) if stamps_file.exists() else {}
    keep = {ours.name, "stamps.json", "requirements.txt", "stamp.txt"}
    for dist in deps.values():
        name = _wheel_name(dist)
        stamp = hashlib.sha256((dist.read_text("RECORD") or "").encode()).hexdigest()
        if stamps.get(name) != stamp or not (folder / name).exists():
            repack(dist, folder)
            stamps[name] = stamp
        keep.add(name)
    for stale in folder.iterdir():
        if stale.name not in keep:
            stale.unlink()
    stamps = {k: v for k, v in stamps.items() if k in keep}
    stamps_file.write_text(json.dumps(stamps, indent=1, sort_keys=True))
    (folder / "requirements.txt").write_text(
        "".join(f"{d.metadata['Name']}=={d.version}\n" for d in deps.values())
    )
    (folder / "stamp.txt").write_text(hashlib.sha256(stamps_file.read_bytes()).hexdigest() + "\n")
    return folder


# -- the container ---------------------------------------------------------------------------


class Container(systemd_container.Container):
    """The test's view of the container: `run` asserts success unless told not to."""

    def run(
        self, command: str, input: str | None = None, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = super().run(command, input=input, timeout=timeout)
        if check:
            assert result.returncode == 0, (
                f"{command}: exit {result.returncode}\n{result.stdout}{result.stderr}"
            )
        return result

    def show(self, *properties: str, unit: str = "llmkit") -> dict[str, str]:
        out = self.run(f"systemctl show {unit} -p {','.join(properties)}").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def get(
        self,
        path: str,
        key: str | None = None,
        body: dict | None = None,
        port: int = 8000,
        cafile: str | None = None,
    ) -> tuple[int, str]:
        """One HTTP request from inside the container, no retries: (status, body); HTTPS checked
        against `cafile` when one is given."""
        args = [f"{'https' if cafile else 'http'}://127.0.0.1:{port}{path}"]
        if cafile:
            args += ["--cafile", cafile]
        if key:
            args += ["--key-file", "/root/llmkit.key"]
        if body is not None:
            args += ["--json", json.dumps(body)]
        out = self.run(f"{VENV}/bin/python /root/probe.py {shlex.join(args)}").stdout
        status, _, text = out.partition("\n")
        return int(status), text

    def journal(self, invocation: str) -> str:
        return self.run(f"journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID={invocation}").stdout


PROBE = """\
import json, ssl, sys, urllib.error, urllib.request
args = sys.argv[1:]
url, headers, data, context = args.pop(0), {}, None, None
while args:
    flag, value = args.pop(0), args.pop(0)
    if flag == "--cafile":
        context = ssl.create_default_context(cafile=value)
    elif flag == "--key-file":
        headers["Authorization"] = "Bearer " + open(value).read().strip()
    elif flag == "--json":
        data, headers["Content-Type"] = value.encode(), "application/json"
try:
    request = urllib.request.Request(url, data, headers)
    with urllib.request.urlopen(request, timeout=60, context=context) as r:
        print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
except OSError as e:
    print(0); print(e)
"""


def unavailable(reason: str) -> NoReturn:
    """Skip, in one line; on CI fail instead, since there a skip would hide a broken setup."""
    if os.environ.get("CI"):
        pytest.fail(f"the systemd end-to-end test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def container() -> Iterator[Container]:
    """The booted container with llmkit installed in /opt/llmkit, and no llmkit service yet."""
    try:
        systemd_container.require_host()
    except systemd_container.Unavailable as exc:
        unavailable(str(exc))
    WORK.mkdir(parents=True, exist_ok=True)
    # Booted afresh each time: one left from an earlier run would lack this run's wheels.
    with Container(WORK, MACHINE, PACKAGES) as box:
        try:
            box.make_root()
        except systemd_container.Unavailable as exc:
            unavailable(str(exc))
        wheels = build_wheels(WORK / "wheels")
        box.boot(binds={wheels: "/wheels"})
        box.run(
            f"""
            set -e
            if [ "$(cat {VENV}/.stamp 2>/dev/null)" != "$(cat /wheels/stamp.txt)" ]; then
                rm -rf {VENV} && python3 -m venv {VENV}
                {VENV}/bin/pip install -q --no-index --find-links /wheels \
                    -r /wheels/requirements.txt
                cp /wheels/stamp.txt {VENV}/.stamp
            fi
            {VENV}/bin/pip install -q --no-index --no-deps --force-reinstall /wheels/llmkit-*.whl
            systemctl disable --now llmkit.service llmkit-lb.service 2>/dev/null || true
            rm -rf /etc/systemd/system/llmkit.service /etc/systemd/system/llmkit-lb.service \
                /etc/llmkit \
                /var/lib/llmkit /var/lib/private/llmkit
            systemctl daemon-reload
            systemctl reset-failed
            """,
            timeout=900,
        )
        box.run("cat > /root/probe.py", input=PROBE)
        box.run("umask 077 && cat > /root/llmkit.key", input=KEY + "\n")
        yield box


@pytest.fixture(scope="module")
def installed(container: Container) -> Container:
    result = container.run(
        f"{VENV}/bin/llmkit service install --model gemma-3-270m --api-key-file /root/llmkit.key",
        timeout=600,
    )
    assert "llmkit is running" in result.stdout, result.stdout + result.stderr
    return container


def _wait(condition, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


# -- the tests, in the order a user meets these things ---------------------------------------


def test_install_pulls_the_model_and_starts_the_service_ready(installed: Container) -> None:
    state = installed.show("ActiveState", "SubState", "Type", "UnitFileState")
    assert state == {
        "ActiveState": "active",
        "SubState": "running",
        "Type": "notify",
        "UnitFileState": "enabled",
    }
    assert installed.get("/health")[0] == 200
    env_file = installed.run("stat -c '%a %U' /etc/llmkit/llmkit.env").stdout.split()
    assert env_file == ["600", "root"]
    models = installed.run("ls -R /var/lib/llmkit/models").stdout
    assert "gemma-3-270m-q4_k_m.gguf" in models


def test_systemctl_start_returns_only_once_health_answers(installed: Container) -> None:
    installed.run("systemctl stop llmkit")
    started = time.monotonic()
    installed.run("systemctl start llmkit")
    took = time.monotonic() - started
    status, body = installed.get("/health")  # one try: start has returned, so it must answer
    assert status == 200 and json.loads(body)["status"] == "ok", body
    assert installed.show("ActiveState")["ActiveState"] == "active"
    print(f"systemctl start took {took:.1f} s")


def test_the_server_answers_requests_with_its_key_and_logs_them_to_the_journal(
    installed: Container,
) -> None:
    status, body = installed.get(
        "/v1/chat/completions",
        key=KEY,
        body={
            "model": "gemma-3-270m",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "Say hello."}],
        },
    )
    assert status == 200, body
    assert json.loads(body)["usage"]["completion_tokens"] > 0
    assert installed.get("/v1/models")[0] == 401  # no key
    assert installed.get("/v1/models", key=KEY)[0] == 200
    invocation = installed.show("InvocationID")["InvocationID"]

    def logged() -> str | None:
        journal = installed.journal(invocation)
        wanted = [
            '"POST /v1/chat/completions HTTP/1.1" 200',
            '"GET /v1/models HTTP/1.1" 401',
            '"GET /health HTTP/1.1" 200',
        ]
        return journal if all(w in journal for w in wanted) else None

    _wait(logged, 20, "the request lines in journalctl -u llmkit")


def test_the_server_runs_under_the_full_hardening(installed: Container) -> None:
    pid = installed.show("MainPID")["MainPID"]
    status = installed.run(f"cat /proc/{pid}/status").stdout
    fields = dict(re.split(r":\s*", line, maxsplit=1) for line in status.splitlines())
    assert fields["Uid"].split()[0] != "0"  # DynamicUser
    assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2"
    assert fields["CapEff"] == "0000000000000000"
    settings = installed.show(
        "MemoryDenyWriteExecute",
        "DynamicUser",
        "ProtectSystem",
        "PrivateUsers",
        "RestrictAddressFamilies",
        "IPAddressDeny",
    )
    assert settings["MemoryDenyWriteExecute"] == "yes" and settings["DynamicUser"] == "yes"
    assert settings["ProtectSystem"] == "strict" and settings["PrivateUsers"] == "yes"
    exposure, verdict = parse_exposure(
        installed.run("systemd-analyze security llmkit --no-pager").stdout
    )
    assert exposure <= 2.0, verdict


def test_memory_deny_write_execute_is_enforced_and_ctypes_callbacks_still_work(
    installed: Container,
) -> None:
    def transient(code: str) -> subprocess.CompletedProcess[str]:
        return installed.run(
            "systemd-run --quiet --wait --pipe -p DynamicUser=yes -p MemoryDenyWriteExecute=yes "
            f"-p SystemCallFilter=@system-service {VENV}/bin/python -c {shlex.quote(code)}",
            check=False,
        )

    # The filter is really there: an anonymous mapping both writable and executable is refused...
    wx = transient("import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)")
    assert wx.returncode != 0 and "PermissionError" in wx.stderr, wx.stdout + wx.stderr
    # ...yet a ctypes callback (a libffi closure, as llama-cpp-python's log hook) is fine.
    callback = transient(
        "import ctypes; f = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)"
        "(lambda x: x + 1); print(f(41))"
    )
    assert callback.returncode == 0 and callback.stdout.strip() == "42", callback.stderr


def test_kill_9_of_the_main_process_brings_it_back_through_restart(installed: Container) -> None:
    before = installed.show("MainPID", "NRestarts")
    installed.run(f"kill -9 {before['MainPID']}")

    def back() -> dict[str, str] | None:
        now = installed.show("MainPID", "NRestarts", "ActiveState")
        new_pid = now["MainPID"] not in ("0", before["MainPID"])
        restarted = now["ActiveState"] == "active" and new_pid
        return now if restarted else None

    now = _wait(back, 120, "the service to come back")
    assert int(now["NRestarts"]) == int(before["NRestarts"]) + 1
    assert installed.get("/health")[0] == 200  # active again means ready again (Type=notify)


def self_signed_pem(folder: Path) -> str:
    """A certificate for 127.0.0.1 and its key, in one PEM (as HAProxy's `crt` takes them)."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", str(folder / "key.pem"), "-out", str(folder / "crt.pem")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return (folder / "crt.pem").read_text() + (folder / "key.pem").read_text()


def test_the_balancer_runs_as_its_own_hardened_service_in_front_of_the_replica(
    installed: Container, tmp_path: Path
) -> None:
    lb = f"{VENV}/bin/llmkit lb"
    chat = {
        "model": "gemma-3-270m",
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "Say hello."}],
    }

    def replica_up() -> list[dict] | None:
        done = installed.run(f"{lb} status --json", check=False)  # the socket may not be there yet
        replicas = json.loads(done.stdout)["replicas"] if done.returncode == 0 else []
        return replicas if [r["status"] for r in replicas] == ["UP"] else None

    started = time.monotonic()
    result = installed.run(
        f"{lb} service install --replica 127.0.0.1:8000 --host 127.0.0.1 --port {LB_PORT}"
    )
    took = {"install": time.monotonic() - started}
    assert "llmkit-lb is running" in result.stdout, result.stdout + result.stderr
    assert installed.run("systemctl is-active llmkit-lb").stdout.strip() == "active"
    before = installed.show("MainPID", "Type", "UnitFileState", unit="llmkit-lb")
    assert before["Type"] == "notify" and before["UnitFileState"] == "enabled", before
    status = installed.run(f"cat /proc/{before['MainPID']}/status").stdout
    assert not re.search(r"^Uid:\s+0\s", status, re.M)  # DynamicUser
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
    assert re.search(r"^Seccomp:\s+2$", status, re.M)

    (replica,) = _wait(replica_up, 30, "`llmkit lb status` to show the replica UP")
    took["up"] = time.monotonic() - started
    assert replica["name"] == "127.0.0.1:8000" and replica["check"] == "L7OK", replica
    answer, body = installed.get("/v1/chat/completions", key=KEY, body=chat, port=LB_PORT)
    assert answer == 200, body
    assert json.loads(body)["usage"]["completion_tokens"] > 0
    assert installed.get("/v1/models", port=LB_PORT)[0] == 401  # the replica checks the key

    started = time.monotonic()
    installed.run("systemctl reload llmkit-lb")
    took["reload"] = time.monotonic() - started

    # `systemctl reload` returns once USR2 is sent; HAProxy's master then says RELOADING=1 and,
    # when its new workers listen, READY=1 again. So the unit is "reloading" for a moment.
    def reloaded() -> dict[str, str] | None:
        state = installed.show("MainPID", "ActiveState", unit="llmkit-lb")
        return state if state["ActiveState"] != "reloading" else None

    after = _wait(reloaded, 30, "llmkit-lb to end its reload")
    assert after == {"MainPID": before["MainPID"], "ActiveState": "active"}  # same master
    _wait(replica_up, 30, "the replica UP after the reload")
    answer, body = installed.get("/v1/chat/completions", key=KEY, body=chat, port=LB_PORT)
    assert answer == 200, body

    # HTTPS, the key root's own (0600 in /root, which ProtectHome= hides): LoadCredential= hands
    # the service its copy.
    installed.run("umask 077 && cat > /root/lb.pem", input=self_signed_pem(tmp_path))
    installed.run(
        f"{lb} service install --replica 127.0.0.1:8000 --host 127.0.0.1 --port {LB_PORT} "
        "--tls-cert /root/lb.pem"
    )
    _wait(replica_up, 30, "the replica UP behind HTTPS")
    answer, body = installed.get(
        "/v1/chat/completions", key=KEY, body=chat, port=LB_PORT, cafile="/root/lb.pem"
    )
    assert answer == 200, body

    started = time.monotonic()
    installed.run("systemctl stop llmkit-lb", timeout=60)
    took["stop"] = time.monotonic() - started
    state = installed.show("ActiveState", "Result", unit="llmkit-lb")
    assert state == {"ActiveState": "inactive", "Result": "success"}, state
    result = installed.run(f"{lb} service uninstall")
    assert "removed /etc/systemd/system/llmkit-lb.service" in result.stdout, result.stdout
    assert installed.run("systemctl cat llmkit-lb", check=False).returncode != 0
    assert installed.run("test -e /etc/llmkit/lb.cfg", check=False).returncode != 0
    assert installed.run("test -e /root/lb.pem", check=False).returncode == 0  # the user's own
    assert installed.get("/health", port=LB_PORT)[0] == 0  # nobody listens there any more
    assert installed.get("/health")[0] == 200  # the replica's own service goes on
    print("llmkit-lb took (s): " + ", ".join(f"{k} {v:.1f}" for k, v in took.items()))


def test_systemctl_stop_is_clean(installed: Container) -> None:
    invocation = installed.show("InvocationID")["InvocationID"]
    installed.run("systemctl stop llmkit", timeout=120)
    state = installed.show("ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    assert state == {
        "ActiveState": "inactive",
        "Result": "success",
        "ExecMainCode": "1",
        "ExecMainStatus": "0",
    }  # exited (CLD_EXITED) with status 0
    journal = _wait(
        lambda: (j := installed.journal(invocation)) and "stopped" in j.splitlines() and j,
        20,
        "serve's last words in the journal",
    )
    assert "shutting down: finishing accepted requests" in journal


def test_uninstall_removes_the_service_and_keeps_the_models(installed: Container) -> None:
    result = installed.run(f"{VENV}/bin/llmkit service uninstall")
    assert "models kept in /var/lib/llmkit/models" in result.stdout
    assert installed.run("systemctl cat llmkit", check=False).returncode != 0
    assert installed.run("test -e /etc/llmkit/llmkit.env", check=False).returncode != 0
    assert "gemma-3-270m-q4_k_m.gguf" in installed.run("ls -R /var/lib/llmkit/models").stdout


def test_a_user_service_runs_under_the_users_own_systemd(container: Container) -> None:
    container.run(f"id {USER} >/dev/null 2>&1 || useradd -m {USER}; loginctl enable-linger {USER}")
    _wait(
        lambda: (
            container.run(f"systemctl is-active user@$(id -u {USER})", check=False).stdout.strip()
            == "active"
        ),
        60,
        "the user's systemd",
    )
    as_user = (
        f"runuser -u {USER} -- env XDG_RUNTIME_DIR=/run/user/$(id -u {USER}) HOME=/home/{USER}"
    )
    container.run(f"{as_user} systemctl --user disable --now llmkit", check=False)  # a past run's

    result = container.run(
        f"{as_user} {VENV}/bin/llmkit service install --user --model gemma-3-270m --port 8082"
    )
    assert "llmkit is running" in result.stdout, result.stdout + result.stderr
    assert container.get("/health", port=8082)[0] == 200
    pid = container.run(f"{as_user} systemctl --user show -p MainPID --value llmkit").stdout.strip()
    status = container.run(f"cat /proc/{pid}/status").stdout
    uid = container.run(f"id -u {USER}").stdout.strip()
    assert re.search(rf"^Uid:\s+{uid}\s", status, re.M)
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
    assert re.search(r"^Seccomp:\s+2$", status, re.M)
    assert "/home/" in result.stdout  # the unit and the model live in the user's home

    container.run(f"{as_user} {VENV}/bin/llmkit service uninstall --user")
    assert container.get("/health", port=8082)[0] == 0  # nobody listens any more
