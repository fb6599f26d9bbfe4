"""Constrained decoding: what a request's `response_format` or `grammar` asks for, as a GBNF grammar."""

from __future__ import annotations

import json
from typing import Any

import llama_cpp

from llmkit.errors import BadRequest


def grammar_for(response_format: dict[str, Any] | None, grammar: str | None) -> str | None:
    """The GBNF grammar that forces JSON (or the schema) when asked."""
    try:
        if grammar is not None:
            return grammar
        if not response_format or response_format.get("type") in (None, "text"):
            return None
        kind = response_format.get("type")
        if kind == "json_object":
            schema = response_format.get("schema")
            if schema is None:
                return str(llama_cpp.llama_grammar.JSON_GBNF)
            return _schema_grammar(schema)
        if kind == "json_schema":
            spec = response_format.get("json_schema") or {}
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise BadRequest(
                    "response_format.json_schema.schema must be a JSON schema object",
                    param="response_format",
                )
            return _schema_grammar(schema)
    except BadRequest:
        raise
    except Exception as exc:  # noqa: BLE001 - llama_cpp's schema errors are the user's to fix
        raise BadRequest(
            f"could not build a grammar from this request: {exc}", param="response_format"
        ) from None
    raise BadRequest(
        f"response_format.type must be text, json_object or json_schema, not {kind!r}",
        param="response_format",
    )


def _schema_grammar(schema: Any) -> str:
    return str(llama_cpp.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)._grammar)
