"""The embedder: text or token ids to L2-normalised vectors, on a llama.cpp context of its own.

It shares the weights the server already loaded (or loads the GGUF `--embedding-model` names):
one more llama.cpp context with embeddings on, made on the first request, run by one worker
thread of its own, so that generation's scheduler never waits on it.

A causal model (every generative model) is decoded in pieces of a few dozen tokens, each piece
extending the sequence in the context's KV cache, and pooled here from its token embeddings:
llama.cpp computes the logits of every token of an embedding batch, and on a large vocabulary
(Gemma's 262,144) a 512-token batch would need a gigabyte for them. A model whose attention is
not causal (BERT-like embedding models) sees each input whole in one decode and llama.cpp
pools it, with the model's own dense layers. Pooling is the model's own (its GGUF's
`pooling_type`: mean, CLS or last token) and mean where the model names none.
"""

from __future__ import annotations

import base64
import concurrent.futures
import ctypes
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np

from llmkit.engine.jobs import QueueFull, ShuttingDown
from llmkit.errors import BadRequest
from llmkit.prompts import longest_token_bytes

MAX_INPUTS = 2048  # as the OpenAI API
MAX_TOKENS = 300_000  # a request's inputs in all, as the OpenAI API: the worker is shared
# How much memory the logits of one piece may take (a causal model's embedding batch computes
# them for every token, as llama.cpp always does).
_PIECE_LOGITS_BYTES = 64 * 1024 * 1024
_MAX_SEQS = 16  # inputs decoded together in one batch

POOLINGS = {
    llama_cpp.LLAMA_POOLING_TYPE_MEAN: "mean",
    llama_cpp.LLAMA_POOLING_TYPE_CLS: "cls",
    llama_cpp.LLAMA_POOLING_TYPE_LAST: "last",
}


def piece_tokens(n_vocab: int) -> int:
    """Tokens per decode for a causal model: a power of two whose logits fit the budget."""
    tokens = 512
    while tokens > 16 and tokens * n_vocab * 4 > _PIECE_LOGITS_BYTES:
        tokens //= 2
    return tokens


def embedding_context_bytes(n_vocab: int) -> int:
    """The memory the embedding context adds beyond its KV cache: logits and compute buffers."""
    return 2 * piece_tokens(n_vocab) * n_vocab * 4 + 64 * 1024 * 1024


def normalized(vector: np.ndarray, dimensions: int | None = None) -> np.ndarray:
    """The vector cut to its first `dimensions` values (all if None), scaled to unit length."""
    if dimensions is not None:
        vector = vector[:dimensions]
    norm = float(np.linalg.norm(vector))
    return (vector / norm if norm > 0 else vector).astype(np.float32)


def encoded(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """A vector as the OpenAI API sends it: floats, or base64 of little-endian float32."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return [float(x) for x in vector]


@dataclass
class Embedded:
    """The vectors of one request's inputs, in order, and the tokens they took."""

    vectors: list[np.ndarray]
    prompt_tokens: int


@dataclass(eq=False)
class _Sequence:
    index: int
    tokens: list[int]
    seq_id: int
    done: int = 0  # tokens decoded so far
    total: np.ndarray | None = None  # pieces: sum of the token embeddings
    first: np.ndarray | None = None
    last: np.ndarray | None = None
    rows: tuple[int, int] = field(default=(0, 0))  # this batch's rows: start, count


class Embedder:
    """Embeddings from one model, on a llama.cpp context made when first needed."""

    def __init__(
        self,
        model: llama_cpp.llama_model_p | Path,
        *,
        n_ctx: int,
        threads: int,
        max_queue: int,
        whole: bool | None = None,
    ) -> None:
        """`model`: the loaded model to share, or a GGUF path to load on first use.

        `whole`: decode each input in one piece with llama.cpp's pooling (None: when the model's
        attention is not causal, or it has no KV cache)."""
        self._source = model
        self.n_ctx = n_ctx
        self.threads = threads
        self.max_queue = max_queue
        self._whole = whole
        self._model: llama_cpp.llama_model_p | None = None
        self._owns_model = isinstance(model, Path)
        self.ctx: llama_cpp.llama_context_p | None = None
        self._pending = 0
        self._closing = False
        self._lock = threading.Lock()
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="llmkit-embed")
        self.tokens = 0  # input tokens embedded, for /metrics

    # The interface callers use -------------------------------------------------------------

    def submit(
        self,
        inputs: list[str] | list[list[int]],
        dimensions: int | None = None,
        stop: threading.Event | None = None,
    ) -> concurrent.futures.Future[Embedded]:
        """Queue one request's inputs, from any thread; its future holds the vectors.

        Raises QueueFull or ShuttingDown at once; the future raises BadRequest for an input
        this model cannot embed as asked. Setting `stop` (its client has gone) ends the work
        between two batches, as closing the embedder does."""
        with self._lock:
            if self._closing:
                raise ShuttingDown("the server is shutting down")
            if self._pending > self.max_queue:
                raise QueueFull(f"{self._pending} embedding requests are already waiting")
            self._pending += 1
        try:
            return self._worker.submit(self._embed, inputs, dimensions, stop or threading.Event())
        except RuntimeError:  # the worker was shut down meanwhile
            with self._lock:
                self._pending -= 1
            raise ShuttingDown("the server is shutting down") from None

    def embed(self, inputs: list[str] | list[list[int]], dimensions: int | None = None) -> Embedded:
        """The vectors of `inputs`, waiting for them (scripts, tests)."""
        return self.submit(inputs, dimensions).result()

    def close(self) -> None:
        """Stop taking work, let the running request finish, free the context (and own model)."""
        with self._lock:
            self._closing = True
        self._worker.shutdown(wait=True, cancel_futures=True)
        # The grace period's end and the server's exit may both close it: free once (freed twice,
        # llama.cpp aborts).
        with self._lock:
            if self.ctx:
                llama_cpp.llama_free(self.ctx)
                self.ctx = None
            if self._owns_model and self._model:
                llama_cpp.llama_model_free(self._model)
            self._model = None

    # The worker thread ----------------------------------------------------------------------

    def _embed(
        self, inputs: list[str] | list[list[int]], dimensions: int | None, stop: threading.Event
    ) -> Embedded:
        try:
            self._open()
            if dimensions is not None and not 1 <= dimensions <= self.n_embd:
                raise BadRequest(
                    f"dimensions must be 1 to {self.n_embd}, this model's embedding size",
                    param="dimensions",
                )
            items: list[str | list[int]] = list(inputs)
            sequences = []
            for i, item in enumerate(items):  # each up to seconds: stopped between two
                if stop.is_set() or self._closing:
                    raise ShuttingDown("the request was stopped (its client left, or the server)")
                sequences.append(self._checked(i, item))
            total = sum(len(s) for s in sequences)
            if total > MAX_TOKENS:
                raise BadRequest(
                    f"the inputs are {total} tokens in all; one request takes at most {MAX_TOKENS}",
                    param="input",
                )
            vectors = self._run(sequences, stop)
            tokens = sum(len(s) for s in sequences)
            self.tokens += tokens
            return Embedded([normalized(v, dimensions) for v in vectors], tokens)
        finally:
            with self._lock:
                self._pending -= 1

    def _open(self) -> None:
        if self.ctx:
            return
        if isinstance(self._source, Path):
            params = llama_cpp.llama_model_default_params()
            params.n_gpu_layers = 0
            model = llama_cpp.llama_model_load_from_file(str(self._source).encode(), params)
            if not model:
                raise RuntimeError(f"llama.cpp could not load {self._source}")
            self._model = model
        else:
            self._model = self._source
        self.vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_embd = llama_cpp.llama_model_n_embd_out(self._model)
        self.token_bytes = longest_token_bytes(self._model)  # once: 0.1 to 0.3 s
        self.pooling = self._model_pooling()
        whole = self._whole
        if whole is None:
            whole = self._meta(f"{self._meta('general.architecture')}.attention.causal") == "false"
        self.ctx = self._context(whole)
        if not whole and not llama_cpp.llama_get_memory(self.ctx):
            # No KV cache (an encoder): a piece cannot build on the last, so inputs go whole.
            llama_cpp.llama_free(self.ctx)
            whole = True
            self.ctx = self._context(whole)
        self.whole = whole
        self.n_batch = llama_cpp.llama_n_batch(self.ctx)
        self.memory = llama_cpp.llama_get_memory(self.ctx)

    def _context(self, whole: bool) -> llama_cpp.llama_context_p:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.n_ctx
        params.n_batch = params.n_ubatch = self.n_ctx if whole else piece_tokens(self.n_vocab)
        params.n_seq_max = _MAX_SEQS
        params.kv_unified = True  # the inputs decoded together share the n_ctx cells
        params.n_threads = params.n_threads_batch = self.threads
        params.embeddings = True
        # In pieces the token embeddings are pooled here; whole, llama.cpp pools.
        params.pooling_type = self.pooling if whole else llama_cpp.LLAMA_POOLING_TYPE_NONE
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not ctx:
            raise RuntimeError("llama.cpp could not create an embedding context for this model")
        return ctx

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode(errors="replace") if n >= 0 else None

    def _model_pooling(self) -> int:
        """The pooling the GGUF asks for when it is mean, CLS or last token; mean otherwise."""
        raw = self._meta(f"{self._meta('general.architecture')}.pooling_type")
        try:
            pooling = int(raw) if raw is not None else None
        except ValueError:
            pooling = None
        return pooling if pooling in POOLINGS else llama_cpp.LLAMA_POOLING_TYPE_MEAN

    def _checked(self, i: int, item: str | list[int]) -> list[int]:
        """One input as token ids, refused when empty, outside the vocabulary or too long."""
        where = f"input[{i}]"
        if isinstance(item, str):
            if not item:
                raise BadRequest(f"{where} is an empty string", param="input")
            raw = item.encode()
            # Refused untokenized when too long for the context whatever its tokens: llama.cpp's
            # tokenizer is superlinear in special tokens (a minute for a few MB of them).
            if self.token_bytes is not None and len(raw) > self.n_ctx * self.token_bytes:
                raise BadRequest(
                    f"{where} is {len(raw)} bytes, longer than the embedding context holds "
                    f"({self.n_ctx} tokens of at most {self.token_bytes} bytes each); shorten it "
                    "or split it",
                    param="input",
                )
            tokens = self._tokenize(item)
        else:
            tokens = list(item)
            bad = next((t for t in tokens if not 0 <= t < self.n_vocab), None)
            if bad is not None:
                raise BadRequest(
                    f"{where} has token id {bad}, outside this model's vocabulary "
                    f"(0 to {self.n_vocab - 1})",
                    param="input",
                )
        if not tokens:
            raise BadRequest(f"{where} has no tokens", param="input")
        if len(tokens) > self.n_ctx:
            raise BadRequest(
                f"{where} is {len(tokens)} tokens, longer than the embedding context "
                f"({self.n_ctx} tokens); shorten it or split it",
                param="input",
            )
        return tokens

    def _tokenize(self, text: str) -> list[int]:
        raw = text.encode()
        buf = (llama_cpp.llama_token * (len(raw) + 8))()
        n = llama_cpp.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), True, True)
        if n < 0:
            buf = (llama_cpp.llama_token * -n)()
            n = llama_cpp.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), True, True)
        return list(buf[:n])

    def _run(self, inputs: list[list[int]], stop: threading.Event) -> list[np.ndarray]:
        """Decode the inputs, several to a batch, and pool each one's vector; between batches,
        give up if the request's client has gone or the server is stopping."""
        vectors: list[np.ndarray | None] = [None] * len(inputs)
        waiting = deque(range(len(inputs)))
        running: list[_Sequence] = []
        free = list(range(_MAX_SEQS - 1, -1, -1))
        cells = 0  # KV cells the running inputs will hold
        batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        try:
            while waiting or running:
                if stop.is_set() or self._closing:
                    for s in running:
                        self._forget(s)
                    raise ShuttingDown("the request was stopped (its client left, or the server)")
                n = 0
                # Whole inputs join only while they fit this batch; pieces while the cache has room.
                while waiting and free:
                    size = len(inputs[waiting[0]])
                    if (self.whole and n + size > self.n_batch) or cells + size > self.n_ctx:
                        break
                    index = waiting.popleft()
                    running.append(_Sequence(index, inputs[index], free.pop()))
                    cells += size
                    if self.whole:
                        n += size
                n = 0
                for s in running:
                    piece = s.tokens[s.done : s.done + self.n_batch - n]
                    s.rows = (n, len(piece))
                    for j, token in enumerate(piece):
                        batch.token[n] = token
                        batch.pos[n] = s.done + j
                        batch.n_seq_id[n] = 1
                        batch.seq_id[n][0] = s.seq_id
                        batch.logits[n] = 1
                        n += 1
                    if n == self.n_batch:
                        break
                batch.n_tokens = n
                status = llama_cpp.llama_decode(self.ctx, batch)
                if status != 0:
                    for s in running:
                        self._forget(s)
                    raise RuntimeError(f"llama_decode failed ({status}) computing embeddings")
                rows = None
                if not self.whole:
                    pointer = llama_cpp.llama_get_embeddings(self.ctx)
                    rows = np.ctypeslib.as_array(pointer, (n, self.n_embd))
                for s in list(running):
                    start, count = s.rows
                    if count == 0:
                        continue
                    s.done += count
                    if rows is not None:
                        self._accumulate(s, rows[start : start + count])
                    if s.done == len(s.tokens):
                        vectors[s.index] = self._pooled(s)
                        running.remove(s)
                        self._forget(s)
                        free.append(s.seq_id)
                        cells -= len(s.tokens)
                    s.rows = (0, 0)
        finally:
            llama_cpp.llama_batch_free(batch)
        return [v for v in vectors if v is not None]

    def _accumulate(self, s: _Sequence, rows: np.ndarray) -> None:
        total = rows.sum(axis=0, dtype=np.float64)
        s.total = total if s.total is None else s.total + total
        if s.first is None:
            s.first = rows[0].copy()
        s.last = rows[-1].copy()

    def _pooled(self, s: _Sequence) -> np.ndarray:
        if self.whole:
            pointer = llama_cpp.llama_get_embeddings_seq(self.ctx, s.seq_id)
            return np.ctypeslib.as_array(pointer, (self.n_embd,)).astype(np.float64)
        if self.pooling == llama_cpp.LLAMA_POOLING_TYPE_CLS:
            assert s.first is not None
            return s.first.astype(np.float64)
        if self.pooling == llama_cpp.LLAMA_POOLING_TYPE_LAST:
            assert s.last is not None
            return s.last.astype(np.float64)
        assert s.total is not None
        return s.total / len(s.tokens)

    def _forget(self, s: _Sequence) -> None:
        if self.memory:
            llama_cpp.llama_memory_seq_rm(self.memory, s.seq_id, -1, -1)
