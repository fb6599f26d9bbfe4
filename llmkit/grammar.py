"""Constrained decoding on llguidance: what a request's `response_format` or `grammar` asks for.

llguidance (the engine llama.cpp, vLLM and SGLang build against) compiles JSON Schema far more
completely than a GBNF converter: integer and number ranges, `pattern`, string and array lengths,
`enum`/`const`, `anyOf`/`oneOf`, `$ref`/`$defs`, `additionalProperties: false`, formats. What it
cannot honour it reports, and the request is refused with that message, never loosened. GBNF
grammars (the `grammar` field llama.cpp's servers take) go through llguidance's own converter,
so there is one code path.

Its tokenizer is built from llama.cpp's vocabulary once per model (about a second or more for a
large vocabulary), on a background thread when the server starts, not on the request path.
"""

from __future__ import annotations

import json
import threading
import warnings
from typing import Any

import llama_cpp
import llguidance
import llguidance.llamacpp

from llmkit.errors import BadRequest

# Between JSON tokens: nothing, one space or one newline: compact JSON, as OpenAI answers. Sixteen
# free whitespace characters per gap let SmolLM2 at temperature 1 write newline after newline
# until max_tokens ran out mid-object; llama.cpp's bound (a newline and up to 20 spaces or tabs of
# indentation) still let it pad with tabs until it did (seen with "hi", seed 1).
JSON_OPTIONS: dict[str, Any] = {"whitespace_pattern": r"(?:\x20|\x0A)?"}
ANY_OBJECT: dict[str, Any] = {"type": "object"}
# JSON Schema integers are unbounded; without a bound a small model can write digits until its
# token limit. They are kept to the integers every JSON parser reads exactly (JavaScript's safe
# integers, 16 digits), as llama.cpp's own schema grammars keep them to 16 digits.
SAFE_INTEGERS = (-(2**53 - 1), 2**53 - 1)
# JSON levels of a schema (objects and lists): llguidance's parser reads no deeper (serde_json's
# limit), and the schema walks here recurse.
MAX_DEPTH = 128


def grammar_for(response_format: dict[str, Any] | None, grammar: str | None) -> str | None:
    """The llguidance grammar a request asks for (validated), or None for free text."""
    if grammar is not None:
        try:
            compiled = llguidance.grammar_from("gbnf", grammar)
        except ValueError as exc:
            raise BadRequest(f"grammar: {exc}", param="grammar") from None
        return _validated(compiled, "grammar")
    schema = format_schema(response_format)
    return None if schema is None else schema_grammar(schema)


def format_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema a `response_format` asks the content to satisfy; None for free text."""
    if not response_format or response_format.get("type") in (None, "text"):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        schema = response_format.get("schema", ANY_OBJECT)
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest(
                "response_format.json_schema.schema must be a JSON schema object",
                param="response_format",
            )
    else:
        raise BadRequest(
            f"response_format.type must be text, json_object or json_schema, not {kind!r}",
            param="response_format",
        )
    if not isinstance(schema, dict):
        raise BadRequest("a JSON schema must be an object", param="response_format")
    return schema


def schema_grammar(schema: Any) -> str:
    """The grammar of JSON documents that satisfy `schema`; a BadRequest naming what it can't do."""
    if not isinstance(schema, dict):
        raise BadRequest("a JSON schema must be an object", param="response_format")
    check_depth(schema)
    try:
        compiled = llguidance.LLMatcher.grammar_from_json_schema(enforced_schema(schema))
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"response_format: {exc}", param="response_format") from None
    return _validated(compiled, "response_format")


def check_depth(schema: Any, param: str = "response_format") -> None:
    """A BadRequest for a schema nested deeper than llguidance reads (and Python recurses)."""
    level: list[Any] = [schema]
    for _ in range(MAX_DEPTH):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, (dict, list))
        ]
        if not level:
            return
    raise BadRequest(f"the JSON schema is nested deeper than {MAX_DEPTH} levels", param=param)


def enforced_schema(schema: dict[str, Any]) -> str:
    """The schema as llguidance enforces it here: integers bounded, objects closed, and our
    whitespace bound, whatever the schema's own x-guidance says."""
    return json.dumps({**closed_objects(bounded_integers(schema)), "x-guidance": JSON_OPTIONS})


# Keywords whose value is a schema, a list of schemas, or a map of names to schemas, where a
# narrower schema only narrows what the whole accepts. Not so under allOf (closing one part would
# refuse another's keys), oneOf (a narrower branch can make an instance match one branch instead
# of two), not and if: those are left as they are.
_SCHEMA_KEYWORDS = (
    "items", "additionalItems", "contains", "then", "else", "additionalProperties",
    "unevaluatedItems", "unevaluatedProperties",
)  # fmt: skip
_SCHEMA_LIST_KEYWORDS = ("anyOf", "prefixItems", "items")
_SCHEMA_MAP_KEYWORDS = ("properties", "patternProperties", "$defs", "definitions")
# What else decides which keys an object may have: such an object is left open.
_OPEN_KEYWORDS = (
    "additionalProperties", "patternProperties", "unevaluatedProperties", "allOf", "anyOf",
    "oneOf", "not", "if", "$ref", "minProperties", "dependentRequired", "dependentSchemas",
    "dependencies",
)  # fmt: skip


def closed_objects(schema: Any) -> Any:
    """The schema with every object that lists its properties, and says nothing else of its
    keys, closed to those properties (`additionalProperties: false`), as llama.cpp's schema
    grammars and OpenAI's strict mode read it. JSON Schema lets such an object hold any other
    key, and a small model fills a forced call with keys of the schema itself until max_tokens
    (`{"city": "Paris", "type": "object", "properties": ...`). The answer still satisfies the
    schema as given: only objects where closing narrows the whole are closed (see
    _SCHEMA_KEYWORDS), and not those that require a key they do not list."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA_KEYWORDS:
        if isinstance(out.get(key), dict):
            out[key] = closed_objects(out[key])
    for key in _SCHEMA_LIST_KEYWORDS:
        if isinstance(out.get(key), list):
            out[key] = [closed_objects(item) for item in out[key]]
    for key in _SCHEMA_MAP_KEYWORDS:
        if isinstance(out.get(key), dict):
            out[key] = {name: closed_objects(item) for name, item in out[key].items()}
    listed = out.get("properties")
    required = out.get("required", [])
    if (
        isinstance(listed, dict)
        and not any(key in out for key in _OPEN_KEYWORDS)
        and isinstance(required, list)
        and all(name in listed for name in required)
    ):
        out["additionalProperties"] = False
    return out


def bounded_integers(schema: Any) -> Any:
    """The schema with every integer that has no bound of its own kept to the safe integers."""
    if isinstance(schema, list):
        return [bounded_integers(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: bounded_integers(value) for key, value in schema.items()}
    kinds = out.get("type")
    if kinds == "integer" or (isinstance(kinds, list) and "integer" in kinds):
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = SAFE_INTEGERS[0]
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = SAFE_INTEGERS[1]
    return out


def _validated(compiled: str, param: str) -> str:
    error = llguidance.LLMatcher.validate_grammar(compiled)
    if error:
        where = "the JSON schema" if param == "response_format" else "the grammar"
        raise BadRequest(f"{where} cannot be enforced: {error}", param=param)
    return compiled


# By the vocabulary's address, with what identifies its contents: a model freed and another loaded
# at the same address (tests, the bench) must not get the first one's tokenizer, which also keeps
# the address to tokenize with.
_tokenizers: dict[int, tuple[tuple[object, ...], llguidance.LLTokenizer]] = {}
_lock = threading.Lock()


def _fingerprint(vocab: llama_cpp.llama_vocab_p, eog: list[int]) -> tuple[object, ...]:
    n = llama_cpp.llama_vocab_n_tokens(vocab)
    probes = sorted({0, 1, n // 3, n // 2, n - 1} & set(range(n)))
    return (n, tuple(eog), tuple(llama_cpp.llama_vocab_get_text(vocab, t) for t in probes))


def tokenizer(vocab: llama_cpp.llama_vocab_p, eog: list[int]) -> llguidance.LLTokenizer:
    """llguidance's view of this model's vocabulary, built once (callers wait for the first)."""
    key, fingerprint = int(vocab or 0), _fingerprint(vocab, eog)
    with _lock:
        cached = _tokenizers.get(key)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        with warnings.catch_warnings():  # its bridge calls a deprecated alias per token
            warnings.simplefilter("ignore", DeprecationWarning)
            found = llguidance.llamacpp.lltokenizer_from_vocab(vocab, eos_token=eog)
        _tokenizers[key] = (fingerprint, found)
        return found


def warm_up(vocab: llama_cpp.llama_vocab_p, eog: list[int]) -> threading.Thread:
    """Build the tokenizer on a background thread, so that the first JSON request need not."""
    thread = threading.Thread(
        target=tokenizer, args=(vocab, eog), name="llmkit-grammar", daemon=True
    )
    thread.start()
    return thread


def forget(vocab: llama_cpp.llama_vocab_p) -> None:
    """Drop the tokenizer built for a vocabulary about to be freed."""
    with _lock:
        _tokenizers.pop(int(vocab or 0), None)


class GrammarError(ValueError):
    """llguidance could not build a matcher for this grammar."""


# Stricter than llguidance's defaults (step_lexer_fuel 200,000, step_max_items 50,000): one mask
# is computed on the scheduler thread, which every sequence waits on; a grammar that needs more
# per token fails its own request (the matcher's error state) instead of stalling the others.
LIMITS = llguidance.LLParserLimits(
    step_lexer_fuel=100_000, step_max_items=20_000, verbose_errors=False
)


def matcher(vocab: llama_cpp.llama_vocab_p, eog: list[int], grammar: str) -> llguidance.LLMatcher:
    """A fresh matcher (one sequence's grammar state) for a grammar from `grammar_for`."""
    found = llguidance.LLMatcher(tokenizer(vocab, eog), grammar, log_level=0, limits=LIMITS)
    if found.is_error():
        raise GrammarError(f"the grammar cannot be enforced: {found.get_error()}")
    return found


def matchers(
    vocab: llama_cpp.llama_vocab_p, eog: list[int], grammars: list[str | None]
) -> list[llguidance.LLMatcher | None]:
    """A matcher for each grammar (None for none): each grammar built once, and copied for the
    others that repeat it (the n choices of one request)."""
    built: dict[str, llguidance.LLMatcher] = {}
    found: list[llguidance.LLMatcher | None] = []
    for text in grammars:
        if text is None:
            found.append(None)
        elif text in built:
            found.append(built[text].deep_copy())
        else:
            found.append(built.setdefault(text, matcher(vocab, eog, text)))
    return found
