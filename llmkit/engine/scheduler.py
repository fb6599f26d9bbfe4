"""The scheduler: N sequence slots in one llama.cpp context, decoded together (continuous batching).

One long-lived scheduler thread owns the context. Each step it admits waiting sequences into free
slots, then makes ONE llama_decode holding the next token of every generating sequence plus prompt
chunks of newly admitted ones, samples each sequence from its own row of logits and hands the text
to each job's channel in one call a step. A finished sequence frees its slot at once; the next step fills it.
Which slot a sequence goes to, and what of its prompt it reuses, is the plan of `slots`; how a
step's chunks are written into llama.cpp's batch is `batch`'s.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from typing import Any

import llama_cpp
import numpy as np

from llmkit import grammar, logprobs
from llmkit.engine.admission import admit
from llmkit.engine.batch import fill
from llmkit.engine.context import logit_rows, make_context
from llmkit.engine.disk_cache import Identity
from llmkit.engine.jobs import (
    END,
    CacheFull,
    Channel,
    Choice,
    Delta,
    EngineError,
    GrammarFailed,
    Job,
    Observer,
    Outbox,
    PromptTooLong,
    QueueChannel,
    QueueFull,
    ShuttingDown,
)
from llmkit.engine.sequences import Running, Slot
from llmkit.engine.slots import plan_slot
from llmkit.engine.states import CacheConfig, SequenceStates
from llmkit.logprobs import TokenLogprob
from llmkit.sampling import GRAMMAR_SECONDS, Sampler
from llmkit.speculation import CROWDED_MATCH, MIN_DRAFT, MIN_MATCH, Drafter, Recall
from llmkit.textstream import TextStream

DEFAULT_N_BATCH = 512

log = logging.getLogger("llmkit")
_DEFAULT_CHANNEL = QueueChannel()


class Engine:
    """N slots decoded together by one scheduler thread; a bounded queue of jobs in front of them."""

    def __init__(
        self,
        model: llama_cpp.llama_model_p,
        *,
        parallel: int,
        slot_ctx: int,
        threads: int,
        max_queue: int,
        n_batch: int = DEFAULT_N_BATCH,
        kv_size: int | None = None,
        kv_type: str = "f16",
        speculation: bool = True,
        draft_from_recent: bool = False,
        observer: Observer | None = None,
        grammar_seconds: float = GRAMMAR_SECONDS,
        cache: CacheConfig | None = None,
    ) -> None:
        self.parallel = parallel
        self.grammar_seconds = grammar_seconds  # each choice's grammar's time budget
        self.speculation = speculation
        # The finished sequences that drafted, for drafts across requests (off by default: a
        # request's text would then depend on the earlier ones', through the batch shapes).
        self.recall = Recall() if draft_from_recent else None
        self.slot_ctx = slot_ctx
        self.max_queue = max_queue
        self.n_batch = n_batch
        self.observer = observer
        self.kv_type = kv_type
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        n_vocab = self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        # What the context reserves; drafts and prompt logprobs stay within it (_step).
        self.logit_rows = logit_rows(parallel, n_vocab, n_batch)
        # None once closed (freed): what reads it checks first.
        self.ctx: Any = make_context(
            model,
            parallel=parallel,
            cells=kv_size or slot_ctx * parallel,
            n_batch=n_batch,
            threads=threads,
            kv_type=kv_type,
            logit_rows=self.logit_rows,
        )
        self.kv_size = llama_cpp.llama_n_ctx(self.ctx)
        # llama.cpp lowers n_batch to a smaller cache; more tokens in one decode abort the process.
        self.n_batch = min(n_batch, llama_cpp.llama_n_batch(self.ctx))
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        # The prompt cache: slots' states saved before they are overwritten, restored on a hit.
        cache = cache or CacheConfig()
        identity = Identity.of(cache.model_sha256, self.kv_size, kv_type, parallel)
        window = llama_cpp.llama_model_n_swa(model)
        self.states = SequenceStates(self.ctx, self.memory, cache, identity, window)
        self.eog = [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, t)]
        self._eog = set(self.eog)
        self._pieces: dict[int, bytes] = {}
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._slots = [Slot(seq_id=i) for i in range(parallel)]
        self._jobs: list[Job] = []  # with choices still to start, in arrival order
        self._admitting: list[tuple[Job, Choice]] = []  # taken from the queue, being started
        self._closing = False
        self._cv = threading.Condition()
        # Counters for /metrics, written only by the scheduler thread.
        self.prompt_tokens_computed = 0
        self.prompt_tokens_cached = 0
        self.tokens_generated = 0
        self.decode_calls = 0
        self.tokens_drafted = 0
        self.batch_tokens_max = 0  # the most tokens one decode held (never above n_batch)
        self.batch_logit_rows_max = 0  # the most rows with logits it had (never above logit_rows)
        self.tokens_draft_accepted = 0
        self.tokens_forced = 0  # tokens a grammar forced, decoded as drafts that cannot fail
        self._thread = threading.Thread(target=self._run, name="llmkit-engine", daemon=True)
        self._thread.start()

    # The interface callers use -------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Choices that wait for a slot: the queue is counted in what it costs, not in requests
        (a request with n: 16 is sixteen sequences to run)."""
        with self._cv:
            return sum(len(job.unstarted) for job in self._jobs)

    @property
    def active(self) -> int:
        return sum(1 for slot in self._slots if slot.running is not None)

    @property
    def accepting(self) -> bool:
        """The scheduler runs and takes new work (not closed, not crashed)."""
        return not self._closing and self._thread.is_alive()

    @property
    def capacity(self) -> int:
        """The most choices one request may have: what the slots and the queue hold together."""
        return self.max_queue + self.parallel

    @property
    def queue_full(self) -> bool:
        """A one-choice request submitted now would be refused."""
        return self._refuses(1)

    def _refuses(self, choices: int) -> bool:
        # A free slot takes a choice at once: only choices beyond the free slots count against
        # --max-queue.
        with self._cv:
            free = sum(1 for slot in self._slots if slot.running is None)
            return self.waiting + choices > self.max_queue + free

    @property
    def busy(self) -> bool:
        return self.active > 0 or self.waiting > 0

    def submit(self, choices: list[Choice], channel: Channel | None = None) -> Job:
        """Queue a request's choices, from any thread; raises instead of waiting when it can't.

        Raises PromptTooLong, QueueFull or ShuttingDown. Without a channel, read the job's events
        with `job.events()`."""
        for choice in choices:
            if len(choice.prompt) >= self.slot_ctx:
                raise PromptTooLong.of(len(choice.prompt), self.slot_ctx)
        job = Job(choices=choices, channel=channel or _DEFAULT_CHANNEL)
        with self._cv:
            if self._closing:
                raise ShuttingDown("the server is shutting down")
            if self._refuses(len(choices)):
                raise QueueFull(f"{self.waiting} choices are already waiting for a slot")
            self._jobs.append(job)
            self._cv.notify()
        return job

    def prepare(self, choices: list[Choice]) -> None:
        """Build the choices' grammar matchers here, on the caller's thread (the server's worker),
        not on the scheduler thread that every sequence waits on (grammar.matchers: once per
        grammar). Raises GrammarFailed for a grammar llguidance cannot build."""
        try:
            found = grammar.matchers(self.vocab, self.eog, [c.params.grammar for c in choices])
        except grammar.GrammarError as exc:
            raise GrammarFailed(str(exc)) from None
        for choice, matcher in zip(choices, found, strict=True):
            choice.matcher = choice.matcher or matcher

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking work, cancel what is queued or running, and wait for the scheduler to stop."""
        with self._cv:
            self._closing = True
            for job in self._jobs:
                job.cancel()
            for slot in self._slots:
                if slot.running:
                    slot.running.job.cancel()
            self._cv.notify_all()
        self._thread.join(timeout)
        with self._cv:  # the grace timer and the server's exit may both close: free once
            if not self._thread.is_alive() and self.ctx:
                try:
                    self.states.persist(self._slots)  # the slots' states, for a restart
                except Exception:  # noqa: BLE001 - a full disk must not stop the shutdown
                    log.exception("could not write the prompt cache to disk")
                llama_cpp.llama_free(self.ctx)
                self.ctx = None

    # The scheduler thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._closing and not self._jobs and self.active == 0:
                        self._cv.wait()
                    if self._closing and self.active == 0:
                        out = Outbox()
                        self._reap_cancelled(out)  # every queued job was cancelled by close
                        out.send()
                        return
                out = Outbox()
                try:
                    self._step(out)
                except Exception as exc:  # noqa: BLE001 - a bug must not stop the server
                    log.exception("the engine failed a step")
                    self._fail_everything(exc, out)
                out.send()
        finally:
            llama_cpp.llama_batch_free(self._batch)

    def _fail_everything(self, exc: Exception, out: Outbox) -> None:
        """Fail every job in hand, and clear the cache, whose state is no longer known."""
        error = EngineError(f"the engine failed: {exc}")
        jobs = [s.running.job for s in self._slots if s.running] + [j for j, _ in self._admitting]
        with self._cv:
            jobs += list(self._jobs)
        for job in dict.fromkeys(jobs):
            self._fail(job, error, out)
        llama_cpp.llama_memory_clear(self.memory, True)
        for slot in self._slots:
            slot.cached.clear()

    def _fail(self, job: Job, error: Exception, out: Outbox) -> None:
        """End one job with an error: its running choices are released, the rest never start."""
        if job.ended:
            return
        job.failed = True
        out.put(job, error)
        with self._cv:
            job.unstarted.clear()
            if job in self._jobs:
                self._jobs.remove(job)
        self._reap_cancelled(out)
        self._end(job, out)

    def _end(self, job: Job, out: Outbox) -> None:
        """Send the job's END once nothing of it runs any more (at most once)."""
        if not job.ended and job.running == 0:
            job.ended = True
            out.put(job, END)

    def _step(self, out: Outbox) -> None:
        self._reap_cancelled(out)
        self._admit(out)
        running = [(s.running, s) for s in self._slots if s.running is not None]
        if not running:
            return
        batch = self._batch
        chunks: list[tuple[Running, Slot, list[int]]] = []
        # Generating sequences first (one token each, plus their drafts), then prompt chunks in the
        # room left.
        for r, _ in running:
            r.row, r.forced = -1, 0
        generating = [(r, slot) for r, slot in running if not r.todo]
        for r, slot in generating:
            chunks.append((r, slot, [r.next_token]))
        budget = self.n_batch - len(chunks)
        # Rows with logits beyond the one each sequence may need this step (its next token, or its
        # prompt's last): n-gram drafts and prompt logprobs share them (context.LOGITS_BYTES_MAX).
        rows = self.logit_rows - len(running)
        crowded = len(generating) == self.parallel > 1
        for r, slot, chunk in chunks:
            if r.drafter is not None and budget > 0:
                draft = self._draft(r, slot, crowded, budget, rows)
                chunk.extend(draft)
                budget -= len(draft)
                if not r.forced or r.logprobs is not None:  # forced rows need no logits
                    rows -= len(draft)
        for r, slot in running:
            if r.todo and budget > 0:
                # With prompt logprobs, each token takes a row: its own, then the spare ones.
                every_row = r.prompt_logprobs is not None
                chunk = r.todo[: min(budget, rows + 1) if every_row else budget]
                budget -= len(chunk)
                if every_row:
                    rows -= len(chunk) - 1
                chunks.append((r, slot, chunk))
        n = fill(batch, chunks)
        self.batch_tokens_max = max(self.batch_tokens_max, n)
        outputs = sum(batch.logits[:n])
        if outputs > self.logit_rows:  # llama.cpp would abort the process: fail the step instead
            raise RuntimeError(f"{outputs} rows of logits in one decode, {self.logit_rows} at most")
        self.batch_logit_rows_max = max(self.batch_logit_rows_max, outputs)
        started = time.perf_counter()
        status = llama_cpp.llama_decode(self.ctx, batch)
        if not generating:  # a prompt-only decode: what computing a prompt token costs
            self.states.costs.computed(n, time.perf_counter() - started)
        self.decode_calls += 1
        if status != 0:
            self._decode_failed(status, chunks, out)
            return
        now = time.perf_counter()
        for r, slot, chunk in chunks:
            if not r.todo:
                self._verify(r, slot, chunk, now, out)
                continue
            slot.cached.extend(chunk)
            if r.prompt_rows >= 0:
                self._prompt_logprobs(r, chunk)
            if r.todo:
                del r.todo[: len(chunk)]
                self.prompt_tokens_computed += len(chunk)
            if r.row >= 0:
                self._sample(r, slot, now, out)

    def _draft(self, r: Running, slot: Slot, crowded: bool, budget: int, rows: int) -> list[int]:
        """This step's draft for a generating sequence, within the batch, its context and max_tokens;
        each drafted token takes a row of logits, of the `rows` left (unless forced, unread).

        Where its grammar allows only one continuation (a schema's keys, quotes, punctuation), the
        draft is those tokens, forced: they are taken without sampling, so they cannot be rejected.
        Otherwise it is the n-gram draft, cut where the grammar would refuse it."""
        assert r.drafter is not None
        # Room for the next token and the drafts, and one more: a slot must never fill up.
        room = min(budget, self.slot_ctx - len(slot.cached) - 2)
        if r.choice.params.max_tokens is not None:  # each accepted draft is one more token out
            room = min(room, r.choice.params.max_tokens - r.generated - 1)
        if room <= 0:
            return []
        matcher = r.sampler.matcher
        if matcher is not None:  # it has consumed the next token: drafts come after it
            forced = matcher.compute_ff_tokens()[: room if r.logprobs is None else min(room, rows)]
            if forced:
                r.forced = len(forced)
                return forced
        room = min(room, rows)
        if room <= 0:
            return []
        k = min(r.draft_length.length(crowded), room)
        draft = r.drafter.draft(k, CROWDED_MATCH if crowded else MIN_MATCH, self.recall)[:room]
        if draft and matcher is not None:
            draft = draft[: matcher.validate_tokens(draft)]
        return draft if len(draft) >= MIN_DRAFT else []

    def _verify(self, r: Running, slot: Slot, chunk: list[int], now: float, out: Outbox) -> None:
        """Take a generating sequence's forced tokens, then sample row by row while its drafts
        agree; drop the rest's cells."""
        start = len(slot.cached)
        first = r.row
        drafted = len(chunk) - 1
        used = 0
        for j, token in enumerate(chunk):
            slot.cached.append(token)
            used = j + 1
            r.row = first + j
            if j < r.forced:
                self._sample(r, slot, now, out, forced=chunk[j + 1])
                if slot.running is not r:
                    break
                continue
            sampled = self._sample(r, slot, now, out)
            if slot.running is not r or j == drafted or sampled != chunk[j + 1]:
                break
        if r.forced:
            self.tokens_forced += r.forced
        elif drafted:
            accepted = used - 1
            self.tokens_drafted += drafted
            self.tokens_draft_accepted += accepted
            r.draft_length.update(drafted, accepted)
        if used < len(chunk):  # the rejected drafts' cells (and past a finished sequence)
            llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, start + used, -1)

    def _logits(self, row: int) -> Any:
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, row), (self.n_vocab,))

    def _prompt_logprobs(self, r: Running, chunk: list[int]) -> None:
        """Each prompt token's logprob, from the row of the token before it."""
        assert r.prompt_logprobs is not None
        following = chunk[1:] + r.todo[len(chunk) : len(chunk) + 1]
        top = r.choice.params.logprobs or 0
        for j, token in enumerate(following):
            r.prompt_logprobs.append(logprobs.at(self._logits(r.prompt_rows + j), token, top))

    def _sample(
        self, r: Running, slot: Slot, now: float, out: Outbox, forced: int | None = None
    ) -> int:
        """Sample the sequence's next token from its row (or take the one its grammar forces); the
        sequence may finish (and free its slot)."""
        if forced is None:
            token = r.sampler.sample(self.ctx, r.row)
        else:
            token = forced
            r.sampler.accept(token)
        failure = r.sampler.failure
        if failure is not None:  # its request fails alone, never a silent stop
            self._fail(r.job, GrammarFailed(failure), out)
            return token
        params = r.choice.params
        if r.logprobs is not None and token not in self._eog:
            r.logprobs.append(logprobs.at(self._logits(r.row), token, params.logprobs or 0))
        if self.observer is not None:
            if r.generated == 0:
                self.observer.first_token(now - r.job.submitted)
            else:
                self.observer.next_token(now - r.last_time)
        r.last_time = now
        if token in self._eog:
            self._finish(slot, "stop", "", out)
            return token
        r.generated += 1
        r.job.usage.completion_tokens += 1
        self.tokens_generated += 1
        r.sampler.tokens_generated(r.generated, params.min_tokens)
        text = r.text.feed(self.piece(token))
        if r.text.stopped or r.sampler.done:  # a stop string, or a grammar that is complete
            self._finish(slot, "stop", text, out)
        elif params.max_tokens is not None and r.generated >= params.max_tokens:
            self._finish(slot, "length", text, out)
        elif len(slot.cached) + 1 >= self.slot_ctx:
            self._finish(slot, "length", text, out)
        else:
            r.next_token = token
            if r.drafter is not None:
                r.drafter.append(token)
            if text:
                out.put(r.job, self._delta(r, text))
        return token

    def _delta(self, r: Running, text: str, reason: str | None = None) -> Delta:
        """The next delta of a choice, with the logprobs gathered since the last one."""
        delta = Delta(r.choice.index, text, reason, r.logprobs, r.prompt_logprobs)
        if r.logprobs is not None:
            r.logprobs = []
        r.prompt_logprobs = None
        return delta

    def _finish(self, slot: Slot, reason: str, text: str, out: Outbox) -> None:
        r = slot.running
        assert r is not None
        job = r.job
        delta = self._delta(r, text + r.text.flush(), reason)
        delta.stop = r.text.matched  # the stop sequence that ended it, if one did
        out.put(job, delta)
        self._release(slot)
        if not job.unstarted and job.running == 0 and not job.ended:
            out.put(job, job.usage)
            self._end(job, out)

    def _release(self, slot: Slot) -> None:
        """Free the slot; its cache stays for reuse."""
        r = slot.running
        assert r is not None
        r.sampler.close()
        if r.drafter is not None and self.recall is not None:
            self.recall.remember(r.drafter)
        slot.running = None
        slot.last_used = time.perf_counter()
        r.job.running -= 1

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (cached)."""
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            piece = self._pieces[token] = buf.raw[:n]
        return piece

    def _reap_cancelled(self, out: Outbox) -> None:
        """Release the slots of cancelled and failed jobs, drop them from the queue, end them."""
        stopped = []
        for slot in self._slots:
            r = slot.running
            if r is not None and (r.job.cancelled or r.job.failed):
                self._release(slot)
                stopped.append(r.job)
        with self._cv:
            for job in [j for j in self._jobs if j.cancelled or j.failed]:
                self._jobs.remove(job)
                job.unstarted.clear()
                stopped.append(job)
        for job in stopped:
            if not job.unstarted:
                self._end(job, out)

    def _admit(self, out: Outbox) -> None:
        """Start waiting choices in the free slots, as `admission.admit` picks them (fairly).

        The queue is read under the lock; samplers (a grammar may take a while to parse) are built
        outside it, so that submit, /health and the metrics never wait on them."""
        free = [s for s in self._slots if s.running is None]
        if not free:
            return
        starts = self._admitting
        with self._cv:
            running = (s.running for s in self._slots if s.running is not None)
            starts += admit(self._jobs, len(free), running)
            for job in [j for j in self._jobs if not j.unstarted]:
                self._jobs.remove(job)
        try:
            for job, choice in starts:
                if job.failed:  # an earlier choice of it could not start
                    continue
                try:
                    self._start(job, choice, free)
                except grammar.GrammarError as exc:
                    self._fail(job, GrammarFailed(str(exc)), out)
                except Exception as exc:  # noqa: BLE001 - fail this job alone
                    log.exception("could not start a choice of a request")
                    self._fail(job, EngineError(f"could not start this request: {exc}"), out)
        finally:
            starts.clear()

    def _start(self, job: Job, choice: Choice, free: list[Slot]) -> None:
        """Put one choice in a free slot as `plan_slot` says: the one that holds the longest prefix
        of its prompt, which may be copied there from another slot or restored from the prompt
        cache (`states`)."""
        params = choice.params
        sampler = Sampler(params, self.vocab, self.eog, choice.matcher, self.grammar_seconds)
        choice.matcher = None  # the sampler's now
        prompt = choice.prompt
        # Prompt logprobs need the logits of every prompt position: nothing is reused then.
        limit = 0 if params.prompt_logprobs else None
        self.states.track(self._slots)
        plan = plan_slot(
            self._slots, [self._slots.index(s) for s in free], prompt, limit, choice.cache_salt
        )
        target = self._slots[plan.slot]
        free.remove(target)
        # Its own cache, another slot's, or a state the prompt cache restores.
        reuse = self.states.place(self._slots, plan, prompt, choice.cache_salt, limit)
        if choice.counts_prompt:
            job.usage.prompt_tokens += len(prompt)
            job.usage.cached_tokens += reuse
        self.prompt_tokens_cached += reuse
        target.running = Running(
            job=job,
            choice=choice,
            sampler=sampler,
            text=TextStream(params.stop),
            todo=list(prompt[reuse:]),
            logprobs=[] if params.logprobs is not None else None,
            prompt_logprobs=[TokenLogprob(prompt[0], None)] if params.prompt_logprobs else None,
            drafter=Drafter(prompt) if self.speculation and params.speculation else None,
        )
        job.running += 1

    def _decode_failed(
        self, status: int, chunks: list[tuple[Running, Slot, list[int]]], out: Outbox
    ) -> None:
        """No room in the KV cache (1) or an error: fail one job and let the others go on."""
        # Roll back whatever part of the batch llama.cpp may have placed.
        for _, slot, _ in chunks:
            llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, len(slot.cached), -1)
        # Each slot's cells are a stream of its own (no slot takes another's): the one that
        # outgrew its stream is the longest.
        victim = max(chunks, key=lambda c: len(c[1].cached) + len(c[2]))[0]
        error = (
            CacheFull(
                "the server's KV cache is full: no room for this request's tokens; retry shortly"
            )
            if status == 1
            else EngineError(f"llama_decode failed ({status})")
        )
        self._fail(victim.job, error, out)
