"""The prompt cache's disk tier: saved sequence states as files, found again after a restart.

A file holds one state: a magic, a JSON header (what makes the state valid: the model file's
sha256, the context, the KV type, llama.cpp's state format; the salt's digest; the tokens and the
shortest prefix of them the state serves), the
state's bytes, and a sha256 of all that. The files of one identity live in a folder named for it,
so that entries of several models (or of an unloaded one) stay side by side. A file that is
partial, corrupt, or whose header names another identity is never loaded: it is removed. Writes go
to a temporary file renamed into place (atomic: a reader, or another server sharing the folder,
sees the whole file or none), under a name made of the salt and tokens (two servers saving the same
state write the same name). The folder is 0700 and the files 0600. The whole folder is kept within
a byte budget, least recently used (mtime, touched on each hit) out first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import llama_cpp

from llmkit.engine.prompt_cache import Entry, Match, PromptCache, TierStats, extends

MAGIC = b"LLMKITKV"
FORMAT = 2  # 2: the header holds min_reuse
SUFFIX = ".llkv"
_DIGEST = 32
_HEADER_LEN = struct.Struct("<I")
_STALE_TMP_SECONDS = 600  # a temporary file this old belongs to a writer that died

log = logging.getLogger("llmkit")


@dataclass(frozen=True)
class Identity:
    """Everything a saved state is valid for: loaded into anything else it would be garbage."""

    model_sha256: str
    kv_size: int  # the context's cells
    kv_type: str
    state_version: int  # llama.cpp's LLAMA_STATE_SEQ_VERSION
    llama_cpp: str  # llama-cpp-python's version: the state's layout follows llama.cpp's code
    streams: int = 1  # the context's KV streams (one a slot): a state holds one entry for each

    @classmethod
    def of(cls, model_sha256: str, kv_size: int, kv_type: str, streams: int) -> Identity:
        """The identity of a context of this model, size, KV type and streams, with this
        llama.cpp."""
        return cls(
            model_sha256,
            kv_size,
            kv_type,
            llama_cpp.LLAMA_STATE_SEQ_VERSION,
            llama_cpp.__version__,
            streams,
        )

    @property
    def folder(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(text).hexdigest()[:24]


def salt_digest(salt: bytes) -> str:
    """A salt as the files keep it: its digest (the salt itself may be a secret)."""
    return hashlib.sha256(salt).hexdigest() if salt else ""


def file_name(digest: str, tokens: tuple[int, ...]) -> str:
    """A state's file name, from its salt's digest and its tokens (the same state, the same name)."""
    packed = struct.pack(f"<{len(tokens)}i", *tokens)
    return hashlib.sha256(digest.encode() + b"|" + packed).hexdigest()[:40] + SUFFIX


def encode(
    identity: Identity, salt: bytes, tokens: tuple[int, ...], payload: Any, min_reuse: int = 0
) -> Iterator[bytes | memoryview]:
    """A file's bytes, in pieces (the payload is not copied): magic, header, payload, sha256."""
    view = memoryview(payload).cast("B")
    header = json.dumps(
        {
            "format": FORMAT,
            "identity": asdict(identity),
            "salt": salt_digest(salt),
            "tokens": list(tokens),
            "min_reuse": min_reuse,
            "payload_bytes": view.nbytes,
        }
    ).encode()
    digest = hashlib.sha256()
    for piece in (MAGIC, _HEADER_LEN.pack(len(header)), header, view):
        digest.update(piece)
        yield piece
    yield digest.digest()


def read_header(path: Path) -> dict[str, Any] | None:
    """A file's header, without reading its state (None if it is not one of ours, or cut short)."""
    try:
        with path.open("rb") as fh:
            if fh.read(len(MAGIC)) != MAGIC:
                return None
            (n,) = _HEADER_LEN.unpack(fh.read(_HEADER_LEN.size))
            header = json.loads(fh.read(n))
    except (OSError, ValueError, struct.error):
        return None
    return header if isinstance(header, dict) else None


def decode(data: bytes) -> tuple[dict[str, Any], memoryview] | None:
    """A whole file's header and state; None if partial or corrupt (checksum, lengths)."""
    view = memoryview(data)
    if len(data) < len(MAGIC) + _HEADER_LEN.size + _DIGEST or data[: len(MAGIC)] != MAGIC:
        return None
    if hashlib.sha256(view[:-_DIGEST]).digest() != data[-_DIGEST:]:
        return None
    start = len(MAGIC) + _HEADER_LEN.size
    (n,) = _HEADER_LEN.unpack_from(data, len(MAGIC))
    try:
        header = json.loads(bytes(view[start : start + n]))
    except ValueError:
        return None
    payload = view[start + n : -_DIGEST]
    if not isinstance(header, dict) or header.get("payload_bytes") != len(payload):
        return None
    return header, payload


def private_dir(path: Path) -> Path:
    """Make a folder only its owner can read (0700), with its parents."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(OSError):  # not ours (a shared folder): leave its mode alone
        if path.stat().st_uid == os.getuid():
            os.chmod(path, 0o700)
    return path


def entry_files(root: Path) -> list[Path]:
    """Every state file under the cache folder, of every identity."""
    return sorted(root.glob(f"*/*{SUFFIX}")) if root.is_dir() else []


class DiskCache:
    """The files of one identity under `root`, indexed in memory; writes on a thread of their own."""

    def __init__(self, root: Path, identity: Identity, capacity: int) -> None:
        self.root = root
        self.identity = identity
        self.capacity = capacity
        self.dir = private_dir(root / identity.folder)
        private_dir(root)
        self.index = PromptCache(capacity=1 << 62)  # the budget is the folder's, enforced below
        self.evictions = 0
        self._names: dict[str, Entry] = {}
        self._scanned = -1
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="llmkit-cache-disk")
        self._pending: list[Future[None]] = []
        self.scan()

    # Reading --------------------------------------------------------------------------------

    def scan(self) -> None:
        """Bring the index up to date with the folder (another server may share it)."""
        with self._lock:
            try:
                mtime = self.dir.stat().st_mtime_ns
                listing = list(os.scandir(self.dir))
            except OSError:
                return
            now = time.time()
            # A change within the same clock tick leaves the mtime as it is: while the folder is
            # that fresh, look again next time.
            self._scanned = mtime if now - mtime / 1e9 > 1.0 else -1
            present = set()
            for item in sorted(listing, key=_mtime):  # oldest first: the index's LRU order
                name = item.name
                if name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        if now - item.stat().st_mtime > _STALE_TMP_SECONDS:
                            os.unlink(item.path)
                    continue
                if not name.endswith(SUFFIX):
                    continue
                present.add(name)
                if name not in self._names:
                    self._index(Path(item.path))
            for name in set(self._names) - present:  # removed by another server
                self.index.remove(self._names.pop(name))

    def _index(self, path: Path) -> None:
        header = read_header(path)
        tokens = tuple(header.get("tokens", ())) if header else ()
        if (
            header is None
            or header.get("format") != FORMAT
            or header.get("identity") != asdict(self.identity)
            or not tokens
            or not isinstance(header.get("min_reuse"), int)
            or path.name != file_name(str(header.get("salt", "")), tokens)
        ):
            log.warning("prompt cache: removing %s (not a valid state for this model)", path)
            _unlink(path)
            return
        salt = header["salt"].encode()
        entry = Entry(tokens, path.stat().st_size, path, salt, header["min_reuse"])
        self._names[path.name] = entry
        self.index.put(entry)

    def best(self, prompt: list[int], limit: int, salt: bytes = b"") -> Match | None:
        """The file sharing the longest prefix with the prompt (rescanning if the folder changed)."""
        with contextlib.suppress(OSError):
            if self.dir.stat().st_mtime_ns != self._scanned:
                self.scan()
        with self._lock:
            return self.index.best(prompt, limit, salt_digest(salt).encode())

    def covers(self, tokens: tuple[int, ...], salt: bytes = b"", min_reuse: int = 0) -> bool:
        with self._lock:
            return self.index.covers(tokens, salt_digest(salt).encode(), min_reuse)

    def load(self, entry: Entry) -> memoryview | None:
        """An entry's state, checked; a file that fails a check is removed (None)."""
        path: Path = entry.payload
        try:
            data = path.read_bytes()
        except OSError:
            data = b""
        decoded = decode(data)
        if (
            decoded is None
            or decoded[0].get("identity") != asdict(self.identity)
            or tuple(decoded[0].get("tokens", ())) != entry.tokens
        ):
            log.warning("prompt cache: removing %s (partial or corrupt)", path)
            self._forget(entry)
            _unlink(path)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # the most recently used, for the folder's LRU
        with self._lock:
            self.index.use(entry)
        return decoded[1]

    # Writing --------------------------------------------------------------------------------

    def save(
        self,
        tokens: tuple[int, ...],
        payload: Any,
        salt: bytes = b"",
        min_reuse: int = 0,
        wait: bool = False,
    ) -> None:
        """Write a state (in the background unless `wait`); the payload must not change meanwhile."""
        if wait:
            self._write(tokens, payload, salt, min_reuse)
            return
        with self._lock:
            self._pending = [f for f in self._pending if not f.done()]
            self._pending.append(self._writer.submit(self._write, tokens, payload, salt, min_reuse))

    def _write(self, tokens: tuple[int, ...], payload: Any, salt: bytes, min_reuse: int) -> None:
        if self.covers(tokens, salt, min_reuse):
            return
        name = file_name(salt_digest(salt), tokens)
        path = self.dir / name
        tmp = self.dir / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                for piece in encode(self.identity, salt, tokens, payload, min_reuse):
                    fh.write(piece)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("prompt cache: could not write %s: %s", path, exc)
            _unlink(tmp)
            return
        entry = Entry(tokens, path.stat().st_size, path, salt_digest(salt).encode(), min_reuse)
        with self._lock:
            for old in self.index.entries():  # the states this one extends: nothing more in them
                if old is not entry and extends(entry, old) and old.payload != path:
                    self.index.remove(old)
                    self._names.pop(old.payload.name, None)
                    _unlink(old.payload)
            self._names[name] = entry
            self.index.put(entry)
        self._keep_within_budget()

    def _keep_within_budget(self) -> None:
        """Remove the least recently used files of the whole folder until it fits the budget."""
        files = []
        for path in entry_files(self.root):
            with contextlib.suppress(OSError):
                st = path.stat()
                files.append((st.st_mtime_ns, st.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.capacity:
                break
            _unlink(path)
            total -= size
            self.evictions += 1
            if path.parent == self.dir:
                with self._lock:
                    entry = self._names.pop(path.name, None)
                    if entry is not None:
                        self.index.remove(entry)

    def _forget(self, entry: Entry) -> None:
        with self._lock:
            self.index.remove(entry)
            self._names.pop(Path(entry.payload).name, None)

    def flush(self) -> None:
        """Wait for the writes in flight."""
        with self._lock:
            pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        self.flush()
        self._writer.shutdown(wait=True)

    def miss(self) -> None:
        with self._lock:
            self.index.miss()

    def stats(self) -> TierStats:
        with self._lock:
            s = self.index.stats()
        return TierStats(s.hits, s.misses, self.evictions, s.entries, s.bytes, self.capacity)


def _mtime(item: os.DirEntry[str]) -> float:
    try:
        return item.stat().st_mtime
    except OSError:
        return 0.0


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


@dataclass(frozen=True)
class FolderSummary:
    """One identity's folder, for `llmkit cache show`."""

    folder: str
    model_sha256: str
    kv_size: int
    kv_type: str
    entries: int
    bytes: int
    tokens: int  # the longest entry's
    streams: int = 1  # the context's slots, each with kv_size / streams cells


def summarize(root: Path) -> list[FolderSummary]:
    """What the cache folder holds, by identity (read from the files' headers)."""
    by_folder: dict[str, list[tuple[Path, dict[str, Any] | None]]] = {}
    for path in entry_files(root):
        by_folder.setdefault(path.parent.name, []).append((path, read_header(path)))
    rows = []
    for folder, files in sorted(by_folder.items()):
        ident: dict[str, Any] = next((h["identity"] for _, h in files if h and "identity" in h), {})
        size = 0
        for path, _ in files:
            with contextlib.suppress(OSError):
                size += path.stat().st_size
        longest = max((len(h.get("tokens", ())) for _, h in files if h), default=0)
        rows.append(
            FolderSummary(
                folder,
                ident.get("model_sha256", "?"),
                ident.get("kv_size", 0),
                ident.get("kv_type", "?"),
                len(files),
                size,
                longest,
                ident.get("streams", 1),
            )
        )
    return rows


def clear(root: Path) -> tuple[int, int]:
    """Remove every state file (and temporary file) under the cache folder: (files, bytes)."""
    files = size = 0
    for path in [*entry_files(root), *(root.glob("*/.*.tmp") if root.is_dir() else [])]:
        with contextlib.suppress(OSError):
            size += path.stat().st_size
            path.unlink()
            files += 1
    return files, size
