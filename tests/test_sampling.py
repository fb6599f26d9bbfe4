"""Grammars are checked by llama.cpp against the real gemma vocabulary before a request is accepted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest
from llama_cpp.llama_grammar import JSON_GBNF

from llmkit.sampling import GrammarError, Sampler, SamplingParams, check_grammar

BROKEN = 'root ::= "a" | undefined-rule'


@pytest.fixture(scope="module")
def vocab(gemma_gguf: Path) -> Iterator[Any]:
    llama = llama_cpp.Llama(model_path=str(gemma_gguf), n_ctx=256, verbose=False)
    yield llama._model.vocab
    llama.close()


def test_check_grammar_accepts_llama_cpps_json_grammar(vocab: Any) -> None:
    check_grammar(vocab, JSON_GBNF)


def test_check_grammar_rejects_a_broken_grammar(vocab: Any) -> None:
    with pytest.raises(GrammarError):
        check_grammar(vocab, BROKEN)
    with pytest.raises(GrammarError):
        check_grammar(vocab, 'start ::= "x"')  # no root rule


def test_a_sampler_refuses_a_broken_grammar(vocab: Any) -> None:
    eog = [llama_cpp.llama_vocab_eos(vocab)]
    with pytest.raises(GrammarError):
        Sampler(SamplingParams(grammar=BROKEN), vocab, eog)
    sampler = Sampler(SamplingParams(grammar=JSON_GBNF, temperature=0), vocab, eog)
    assert sampler.grammar is not None
    sampler.close()
    assert sampler.grammar is None and sampler.chain is None
