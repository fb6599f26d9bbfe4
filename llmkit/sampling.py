"""One sequence's sampler: llama.cpp's sampler chain, plus a grammar checked against the chosen token first.

Each sequence in a batch gets its own chain (its own seed, penalties history and grammar state). The
grammar is kept out of the chain: a full grammar pass over Gemma's 262k-token vocabulary costs
about 30 ms, so the chain picks a token first and the grammar only checks that one token; only when
it is rejected does the full pass run (as llama.cpp's own server does).
"""

from __future__ import annotations

import collections
import ctypes
from dataclasses import dataclass, field

import llama_cpp
import numpy as np

LLAMA_GRAMMAR_ROOT = "root"
PENALTY_LAST_N = 64


class GrammarError(ValueError):
    """llama.cpp could not parse the grammar."""


@dataclass
class SamplingParams:
    """What a request asks of the sampler; plain data, so it crosses threads safely."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    mirostat_mode: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    seed: int = 0
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: str | None = None  # GBNF text
    min_tokens: int = 0
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)


def check_grammar(vocab: llama_cpp.llama_vocab_p, grammar: str) -> None:
    """Raise GrammarError if llama.cpp cannot build a sampler from this grammar."""
    sampler = llama_cpp.llama_sampler_init_grammar(
        vocab, grammar.encode(), LLAMA_GRAMMAR_ROOT.encode()
    )
    if not sampler:
        raise GrammarError("llama.cpp could not parse the grammar")
    llama_cpp.llama_sampler_free(sampler)


class Sampler:
    """Picks one sequence's tokens from the logits of its row in the last decode."""

    def __init__(
        self, params: SamplingParams, vocab: llama_cpp.llama_vocab_p, eog: list[int]
    ) -> None:
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self.chain = llama_cpp.llama_sampler_chain_init(
            llama_cpp.llama_sampler_chain_default_params()
        )
        # Until min_tokens are out, end-of-generation tokens are banned by a bias at the head of the
        # chain; it is removed once the sequence is long enough.
        self._ban_eog = params.min_tokens > 0 and bool(eog)
        if self._ban_eog:
            self._add(self._bias({t: float("-inf") for t in eog}))
        if params.logit_bias:
            self._add(self._bias(params.logit_bias))
        if (
            params.repeat_penalty != 1.0
            or params.frequency_penalty != 0.0
            or params.presence_penalty != 0.0
        ):
            self._add(
                llama_cpp.llama_sampler_init_penalties(
                    self.n_vocab,
                    PENALTY_LAST_N,
                    params.repeat_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                )
            )
        seed = params.seed % 2**32
        # Greedy (with penalties, if any): an argmax over the logits row in numpy (~0.1 ms) instead
        # of the chain, which first copies all 262k candidates and runs the penalties over every
        # one of them (~1.2 ms and more a sequence: 14% of an 8-sequence step).
        self._argmax = params.temperature == 0 and not params.logit_bias and not self._ban_eog
        self._penalties = (params.repeat_penalty, params.frequency_penalty, params.presence_penalty)
        self._recent: collections.deque[int] = collections.deque(maxlen=PENALTY_LAST_N)
        if params.temperature == 0:
            self._add(llama_cpp.llama_sampler_init_greedy())
        elif params.mirostat_mode == 1:
            self._add(llama_cpp.llama_sampler_init_temp(params.temperature))
            self._add(
                llama_cpp.llama_sampler_init_mirostat(
                    self.n_vocab, seed, params.mirostat_tau, params.mirostat_eta, 100
                )
            )
        elif params.mirostat_mode == 2:
            self._add(llama_cpp.llama_sampler_init_temp(params.temperature))
            self._add(
                llama_cpp.llama_sampler_init_mirostat_v2(
                    seed, params.mirostat_tau, params.mirostat_eta
                )
            )
        else:
            # llama_cpp's own order (Llama._init_sampler), so results match what it would sample.
            if params.top_k > 0:
                self._add(llama_cpp.llama_sampler_init_top_k(params.top_k))
            if params.typical_p < 1.0:
                self._add(llama_cpp.llama_sampler_init_typical(params.typical_p, 1))
            if params.top_p < 1.0:
                self._add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                self._add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
            self._add(llama_cpp.llama_sampler_init_temp(params.temperature))
            self._add(llama_cpp.llama_sampler_init_dist(seed))
        self.grammar = None
        if params.grammar is not None:
            self.grammar = llama_cpp.llama_sampler_init_grammar(
                vocab, params.grammar.encode(), LLAMA_GRAMMAR_ROOT.encode()
            )
            if not self.grammar:
                self.close()
                raise GrammarError("llama.cpp could not parse the grammar")
        self._one = llama_cpp.llama_token_data()
        self._one_array = llama_cpp.llama_token_data_array(
            data=ctypes.pointer(self._one), size=1, selected=-1, sorted=False
        )
        self._full: np.ndarray | None = None

    def _add(self, sampler: llama_cpp.llama_sampler_p) -> None:
        llama_cpp.llama_sampler_chain_add(self.chain, sampler)

    def _bias(self, biases: dict[int, float]) -> llama_cpp.llama_sampler_p:
        array = (llama_cpp.llama_logit_bias * len(biases))()
        for i, (token, bias) in enumerate(biases.items()):
            array[i].token, array[i].bias = token, bias  # type: ignore[assignment]
        return llama_cpp.llama_sampler_init_logit_bias(self.n_vocab, len(biases), array)

    def sample(self, ctx: llama_cpp.llama_context_p, row: int) -> int:
        """The next token from the logits at `row` of the last decode; accepted into the state."""
        if self._argmax:
            token = self._greedy(ctx, row)
            llama_cpp.llama_sampler_accept(
                self.chain, token
            )  # keeps the chain's penalties' history
        else:
            token = llama_cpp.llama_sampler_sample(self.chain, ctx, row)
        if self.grammar is None:
            return token
        if not self._allowed(token):
            token = self._sample_with_grammar(ctx, row)
        llama_cpp.llama_sampler_accept(self.grammar, token)
        return token

    def _greedy(self, ctx: llama_cpp.llama_context_p, row: int) -> int:
        """The chain's greedy pick, penalties included (llama.cpp's formula, same window)."""
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, row), (self.n_vocab,))
        repeat, frequency, presence = self._penalties
        if self._recent and (repeat != 1.0 or frequency != 0.0 or presence != 0.0):
            tokens, counts = np.unique(np.fromiter(self._recent, np.int32), return_counts=True)
            seen = logits[tokens]
            seen = np.where(seen <= 0, seen * repeat, seen / repeat)
            logits = logits.copy()
            logits[tokens] = seen - counts * frequency - presence
        token = int(logits.argmax())
        self._recent.append(token)
        return token

    def tokens_generated(self, count: int, min_tokens: int) -> None:
        """Lift the end-of-generation ban once min_tokens have been generated."""
        if self._ban_eog and count >= min_tokens:
            llama_cpp.llama_sampler_free(llama_cpp.llama_sampler_chain_remove(self.chain, 0))
            self._ban_eog = False

    def _allowed(self, token: int) -> bool:
        self._one.id, self._one.logit, self._one.p = token, 1.0, 0.0  # type: ignore[assignment]
        self._one_array.size, self._one_array.selected = 1, -1  # type: ignore[assignment]
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(self._one_array))
        return bool(self._one.logit != float("-inf"))

    def _sample_with_grammar(self, ctx: llama_cpp.llama_context_p, row: int) -> int:
        # The full pass: every token's logit, the grammar's mask, then the chain over what is left.
        # The chain has already accepted the rejected token; for penalties that means one extra
        # token in their history, which llama.cpp's server avoids and we accept for simplicity.
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, row), (self.n_vocab,))
        if self._full is None:
            self._full = np.zeros(
                self.n_vocab, dtype=[("id", np.int32), ("logit", np.float32), ("p", np.float32)]
            )
        full = self._full
        full["id"] = np.arange(self.n_vocab, dtype=np.int32)
        full["logit"] = logits
        full["p"] = 0.0
        array = llama_cpp.llama_token_data_array(
            data=full.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=self.n_vocab,
            selected=-1,
            sorted=False,
        )
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(array))
        llama_cpp.llama_sampler_apply(self.chain, ctypes.byref(array))
        token = int(full["id"][array.selected])
        llama_cpp.llama_sampler_accept(self.chain, token)
        return token

    def close(self) -> None:
        if self.chain:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None
        if getattr(self, "grammar", None):
            llama_cpp.llama_sampler_free(self.grammar)
            self.grammar = None
