"""One sequence's sampler: llama.cpp's sampler chain, plus a grammar checked against the chosen token first.

Each sequence in a batch gets its own chain (its own seed and penalties history) and its own
llguidance matcher (grammar state). The grammar is kept out of the chain: the chain picks a token
first and the matcher only checks that one token; only when it is rejected is the mask of allowed
tokens computed (tens of microseconds with llguidance) and the pick made again among them, as
llama.cpp's own server does. Only the token finally chosen enters the chain's history.

The chain is composed of small builders' pieces: `make_logits_processors` (bans, biases,
penalties), then `make_sampler` (greedy, mirostat, or truncation, temperature and a seeded draw).
"""

from __future__ import annotations

import collections
import ctypes
import time
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np

from llmkit import grammar

PENALTY_LAST_N = 64
# The time one choice's grammar may take on the scheduler thread (masks, in all; --grammar-seconds),
# which every sequence waits on: an ambiguous grammar fails its own request, not the others'.
GRAMMAR_SECONDS = 5.0


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
    grammar: str | None = None  # an llguidance grammar, from grammar.grammar_for
    min_tokens: int = 0
    logprobs: int | None = None  # report each token's logprob with this many alternatives
    prompt_logprobs: bool = False  # and the prompt's tokens' (completions with echo)
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    speculation: bool = True  # n-gram drafts for this sequence (when the engine speculates)


def make_logit_bias(n_vocab: int, biases: dict[int, float]) -> llama_cpp.llama_sampler_p:
    """A sampler adding a bias to some tokens' logits (-inf bans them)."""
    array = (llama_cpp.llama_logit_bias * len(biases))()
    for i, (token, bias) in enumerate(biases.items()):
        array[i].token, array[i].bias = token, bias  # type: ignore[assignment]
    return llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(biases), array)


def make_logits_processors(
    params: SamplingParams, n_vocab: int, banned: list[int]
) -> list[llama_cpp.llama_sampler_p]:
    """The samplers that change the logits before the pick, in chain order: the ban on `banned`
    (the end-of-generation tokens until min_tokens are out; it must stay first, where
    `Sampler.tokens_generated` removes it), the request's logit bias, the penalties."""
    processors = []
    if banned:
        processors.append(make_logit_bias(n_vocab, {t: float("-inf") for t in banned}))
    if params.logit_bias:
        processors.append(make_logit_bias(n_vocab, params.logit_bias))
    if (
        params.repeat_penalty != 1.0
        or params.frequency_penalty != 0.0
        or params.presence_penalty != 0.0
    ):
        processors.append(
            llama_cpp.llama_sampler_init_penalties(
                n_vocab,
                PENALTY_LAST_N,
                params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            )
        )
    return processors


def make_truncation(params: SamplingParams) -> list[llama_cpp.llama_sampler_p]:
    """The samplers that narrow the candidates: top-k, typical, top-p, min-p, when set."""
    pieces = []
    if params.top_k > 0:
        pieces.append(llama_cpp.llama_sampler_init_top_k(params.top_k))
    if params.typical_p < 1.0:
        pieces.append(llama_cpp.llama_sampler_init_typical(params.typical_p, 1))
    if params.top_p < 1.0:
        pieces.append(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0.0:
        pieces.append(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
    return pieces


def make_sampler(params: SamplingParams, n_vocab: int) -> list[llama_cpp.llama_sampler_p]:
    """The samplers that pick the token, in chain order: greedy at temperature 0, else mirostat
    (1 or 2) or the truncation, temperature and a seeded draw."""
    seed = params.seed % 2**32
    if params.temperature == 0:
        return [llama_cpp.llama_sampler_init_greedy()]
    temp = llama_cpp.llama_sampler_init_temp(params.temperature)
    if params.mirostat_mode == 1:
        tau, eta = params.mirostat_tau, params.mirostat_eta
        return [temp, llama_cpp.llama_sampler_init_mirostat(n_vocab, seed, tau, eta, 100)]
    if params.mirostat_mode == 2:
        tau, eta = params.mirostat_tau, params.mirostat_eta
        return [temp, llama_cpp.llama_sampler_init_mirostat_v2(seed, tau, eta)]
    # llama_cpp's own order (Llama._init_sampler), so results match what it would sample.
    return [*make_truncation(params), temp, llama_cpp.llama_sampler_init_dist(seed)]


def make_chain(pieces: list[llama_cpp.llama_sampler_p]) -> llama_cpp.llama_sampler_p:
    """A llama.cpp sampler chain of these pieces, in order (the chain owns them)."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    for piece in pieces:
        llama_cpp.llama_sampler_chain_add(chain, piece)
    return chain


class Sampler:
    """Picks one sequence's tokens from the logits of its row in the last decode."""

    def __init__(
        self,
        params: SamplingParams,
        vocab: llama_cpp.llama_vocab_p,
        eog: list[int],
        matcher: Any = None,  # the grammar's, built beforehand (grammar.matcher)
        grammar_seconds: float | None = None,  # its time budget; None: GRAMMAR_SECONDS
    ) -> None:
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        # Until min_tokens are out, end-of-generation tokens are banned by a bias at the head of the
        # chain; it is removed once the sequence is long enough.
        banned = eog if params.min_tokens > 0 else []
        self._ban_eog = bool(banned)
        processors = make_logits_processors(params, self.n_vocab, banned)
        self.chain: llama_cpp.llama_sampler_p | None = make_chain(
            processors + make_sampler(params, self.n_vocab)
        )
        # Greedy (with penalties, if any): an argmax over the logits row in numpy (~0.1 ms) instead
        # of the chain, which first copies all 262k candidates and runs the penalties over every
        # one of them (~1.2 ms and more a sequence: 14% of an 8-sequence step).
        self._argmax = params.temperature == 0 and not params.logit_bias and not self._ban_eog
        self._penalties = (params.repeat_penalty, params.frequency_penalty, params.presence_penalty)
        self._recent: collections.deque[int] = collections.deque(maxlen=PENALTY_LAST_N)
        self._full: np.ndarray | None = None
        self.matcher = matcher
        self.grammar_seconds = 0.0  # spent in the matcher, up to the budget
        self.grammar_budget = GRAMMAR_SECONDS if grammar_seconds is None else grammar_seconds
        if params.grammar is not None and matcher is None:
            try:
                self.matcher = grammar.matcher(vocab, eog, params.grammar)
            except BaseException:
                self.close()
                raise

    def sample(self, ctx: llama_cpp.llama_context_p, row: int) -> int:
        """The next token from the logits at `row` of the last decode; accepted into the state."""
        if self.matcher is None:
            if not self._argmax:
                return int(llama_cpp.llama_sampler_sample(self.chain, ctx, row))
            token = self._greedy(ctx, row)
        else:
            token = self._pick(ctx, row, None)
            started = time.perf_counter()
            if not self.matcher.try_consume_tokens([token]):
                allowed = self._allowed()
                self.grammar_seconds += time.perf_counter() - started
                token = self._pick(ctx, row, allowed)
                started = time.perf_counter()
                self.matcher.consume_token(token)
            self.grammar_seconds += time.perf_counter() - started
        self._accepted(token)
        return token

    def accept(self, token: int) -> None:
        """Take a token the grammar forces, without sampling: into the grammar and the history.
        A token it refuses puts it in its error state (see `failure`)."""
        if self.matcher is not None:
            self.matcher.consume_token(token)
        self._accepted(token)

    @property
    def failure(self) -> str | None:
        """Why the grammar cannot go on (its error state, or its time budget spent); None while
        it can. llguidance's matcher reports an error as stopped too: never read it as done."""
        if self.matcher is None:
            return None
        if self.matcher.is_error():
            return f"the grammar cannot be followed: {self.matcher.get_error()}"
        if self.grammar_seconds > self.grammar_budget:
            return (
                f"the grammar took more than {self.grammar_budget:g} s of the server's time to "
                "follow; simplify it"
            )
        return None

    def _accepted(self, token: int) -> None:
        if self._argmax:
            self._recent.append(token)
        llama_cpp.llama_sampler_accept(self.chain, token)  # the chain's penalties' history

    @property
    def done(self) -> bool:
        """The grammar is complete and allows nothing more."""
        return (
            self.matcher is not None and self.matcher.is_stopped() and not self.matcher.is_error()
        )

    def _pick(self, ctx: llama_cpp.llama_context_p, row: int, allowed: np.ndarray | None) -> int:
        """The chain's pick (without accepting it), among the allowed tokens if given."""
        if self._argmax:
            return self._greedy(ctx, row, allowed)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, row), (self.n_vocab,))
        if self._full is None:
            self._full = np.zeros(
                self.n_vocab, dtype=[("id", np.int32), ("logit", np.float32), ("p", np.float32)]
            )
        full = self._full
        full["id"] = np.arange(self.n_vocab, dtype=np.int32)
        full["logit"] = logits if allowed is None else np.where(allowed, logits, -np.inf)
        full["p"] = 0.0
        array = llama_cpp.llama_token_data_array(
            data=full.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=self.n_vocab,
            selected=-1,
            sorted=False,
        )
        llama_cpp.llama_sampler_apply(self.chain, ctypes.byref(array))
        return int(full["id"][array.selected])

    def _allowed(self) -> np.ndarray:
        """The grammar's mask for the next token: True where a token is allowed."""
        assert self.matcher is not None
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        return np.unpackbits(bits, bitorder="little")[: self.n_vocab].astype(bool)

    def _greedy(
        self, ctx: llama_cpp.llama_context_p, row: int, allowed: np.ndarray | None = None
    ) -> int:
        """The chain's greedy pick, penalties included (llama.cpp's formula, same window)."""
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, row), (self.n_vocab,))
        repeat, frequency, presence = self._penalties
        if self._recent and (repeat != 1.0 or frequency != 0.0 or presence != 0.0):
            tokens, counts = np.unique(np.fromiter(self._recent, np.int32), return_counts=True)
            seen = logits[tokens]
            seen = np.where(seen <= 0, seen * repeat, seen / repeat)
            logits = logits.copy()
            logits[tokens] = seen - counts * frequency - presence
        if allowed is not None:
            logits = np.where(allowed, logits, -np.inf)
        return int(logits.argmax())

    def tokens_generated(self, count: int, min_tokens: int) -> None:
        """Lift the end-of-generation ban once min_tokens have been generated."""
        if self._ban_eog and count >= min_tokens:
            llama_cpp.llama_sampler_free(llama_cpp.llama_sampler_chain_remove(self.chain, 0))
            self._ban_eog = False

    def close(self) -> None:
        if self.chain:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None
        self.matcher = None
