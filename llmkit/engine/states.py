"""Sequence states: a prompt's place in a slot, from the slots' caches or from the prompt cache.

`place` carries out the slot plan (`slots.plan_slot`) with llama.cpp's memory calls. Before a
slot's cache is overwritten, its sequence's state is saved (`llama_state_seq_get_data`) into the RAM
tier, whose evictions go to the disk tier; a prompt that a saved state serves further than any
slot, by enough to beat computing those tokens (`RestoreCosts`, measured), has it restored
(`llama_state_seq_set_data`) and cut back to the shared prefix. A model's sliding-window layers
keep only the cells in the window of a sequence's last tokens (llama.cpp's SWA cache gives the
older ones to new tokens even with swa_full, and a saved state leaves them out): a prefix reaching
further back than that window's start is then not served at all, for its next tokens would attend
to missing cells (`min_reuse`). `persist` writes the slots and the
RAM tier to disk when the engine closes, so that a restart finds them. Runs on the scheduler thread
(and in `persist`, on the thread that closes the engine once the scheduler has stopped).
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp

from llmkit.engine.disk_cache import DiskCache, Identity
from llmkit.engine.prompt_cache import Entry, Match, PromptCache, RestoreCosts, TierStats
from llmkit.engine.sequences import Slot
from llmkit.engine.slots import SlotPlan

log = logging.getLogger("llmkit")
NEVER = 1 << 62  # the min_reuse of cells that serve no prefix


@dataclass(frozen=True)
class CacheConfig:
    """The prompt cache's tiers: bytes of RAM (0: none), and a folder with its bytes (None: none)."""

    ram_bytes: int = 0
    disk_dir: Path | None = None
    disk_bytes: int = 0
    model_sha256: str = ""  # what the disk tier's files are keyed by (with the context's shape)


class SequenceStates:
    """The slots' sequences, saved to and restored from the prompt cache's tiers."""

    def __init__(
        self, ctx: Any, memory: Any, config: CacheConfig, identity: Identity, window: int = 0
    ) -> None:
        self.ctx = ctx
        self.memory = memory
        self.window = window  # the sliding-window layers' window (llama_model_n_swa); 0: none
        self.ram = PromptCache(config.ram_bytes) if config.ram_bytes > 0 else None
        self.disk = (
            DiskCache(config.disk_dir, identity, config.disk_bytes)
            if config.disk_dir is not None and config.disk_bytes > 0
            else None
        )
        self.costs = RestoreCosts()
        self.restored_tokens = 0  # prompt tokens restored instead of computed

    @property
    def enabled(self) -> bool:
        return self.ram is not None or self.disk is not None

    def stats(self) -> dict[str, TierStats]:
        """Each tier's counters (/metrics)."""
        tiers = {}
        if self.ram is not None:
            tiers["ram"] = self.ram.stats()
        if self.disk is not None:
            tiers["disk"] = self.disk.stats()
        return tiers

    # What a sequence's cells serve -----------------------------------------------------------

    def track(self, slots: Sequence[Slot]) -> None:
        """Bring the slots' `min_reuse` up to date: any decode or restore may have given the cells
        behind a sequence's window to another sequence's tokens."""
        for slot in slots:
            first = llama_cpp.llama_memory_seq_pos_min(self.memory, slot.seq_id)
            slot.min_reuse = self.min_reuse(first) if first >= 0 or not slot.cached else NEVER

    def min_reuse(self, first: int) -> int:
        """The shortest prefix that a sequence's cells from position `first` on serve: the next
        token attends, in a sliding-window layer, to the `window` positions up to its own."""
        if first <= 0:
            return 0
        return first + self.window - 1 if self.window else NEVER

    def _serves(self, seq_id: int, reuse: int) -> bool:
        first = llama_cpp.llama_memory_seq_pos_min(self.memory, seq_id)
        return reuse == 0 or 0 <= first and self.min_reuse(first) <= reuse

    def place(
        self,
        slots: Sequence[Slot],
        plan: SlotPlan,
        prompt: list[int],
        salt: bytes = b"",
        limit: int | None = None,
    ) -> int:
        """Make the plan's slot hold the longest prefix of the prompt it can have cheaply: from its
        own cache, another slot's, or a saved state; returns how many tokens it holds."""
        target = slots[plan.slot]
        limit = len(prompt) - 1 if limit is None else limit
        if self.enabled:
            if len(target.cached) > (plan.reuse if plan.donor is None else 0):
                self.save(target)  # what the plan would overwrite
            if plan.reuse < limit:
                restored = self._restore(target, prompt, salt, limit, plan.reuse)
                if restored:
                    target.salt = salt
                    return restored
        mem = self.memory
        if plan.donor is not None:
            donor = slots[plan.donor]
            reuse = plan.reuse
            llama_cpp.llama_memory_seq_rm(mem, target.seq_id, -1, -1)
            # Slots are streams of their own: llama.cpp copies a stream whole, then the target
            # keeps the shared prefix.
            llama_cpp.llama_memory_seq_cp(mem, donor.seq_id, target.seq_id, -1, -1)
            llama_cpp.llama_memory_seq_rm(mem, target.seq_id, reuse, -1)
            target.cached = donor.cached[:reuse]
        else:
            reuse = min(plan.reuse, len(target.cached))
            if not llama_cpp.llama_memory_seq_rm(mem, target.seq_id, reuse, -1):
                llama_cpp.llama_memory_seq_rm(mem, target.seq_id, -1, -1)
                reuse = 0
        del target.cached[reuse:]
        target.salt = salt
        if not self._serves(target.seq_id, reuse):  # never expected: the plan heeds min_reuse
            log.warning("prompt cache: slot %d lacks cells of its prefix", target.seq_id)
            llama_cpp.llama_memory_seq_rm(mem, target.seq_id, -1, -1)
            target.cached.clear()
            reuse = 0
        return reuse

    # Saving ---------------------------------------------------------------------------------

    def save(self, slot: Slot) -> None:
        """Keep a slot's state in the RAM tier (or on disk without one), unless a tier holds it
        already or it is so short that computing it again costs less than restoring it."""
        tokens = tuple(slot.cached)
        if not tokens:
            return
        least = self._saved_min_reuse(slot)
        tier: Any = self.ram if self.ram is not None else self.disk
        if tier.covers(tokens, slot.salt, least):
            return
        state = self._read(slot.seq_id)
        if state is None or not self.costs.worth(len(tokens), len(state)):
            return
        if self.ram is None:
            assert self.disk is not None
            self.disk.save(tokens, state, slot.salt, least)
            return
        for evicted in self.ram.put(Entry(tokens, len(state), state, slot.salt, least)):
            if self.disk is not None:
                self.disk.save(evicted.tokens, evicted.payload, evicted.salt, evicted.min_reuse)

    def _saved_min_reuse(self, slot: Slot) -> int:
        """The shortest prefix a saved state of the slot serves: llama.cpp saves, of a
        sliding-window layer, only the cells in the window of the sequence's last token."""
        first = llama_cpp.llama_memory_seq_pos_min(self.memory, slot.seq_id)
        if first < 0:
            return NEVER
        if self.window:
            first = max(first, len(slot.cached) - self.window)
        return self.min_reuse(first)

    def _read(self, seq_id: int) -> Any:
        size = llama_cpp.llama_state_seq_get_size(self.ctx, seq_id)
        if size <= 0:
            return None
        state = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(self.ctx, state, size, seq_id) != size:
            log.warning("prompt cache: llama.cpp did not save sequence %d", seq_id)
            return None
        return state

    def persist(self, slots: Sequence[Slot]) -> None:
        """On closing: write the RAM tier, then the slots (the most recent last: kept longest), to
        disk, and wait for every write. Needs the scheduler stopped."""
        if self.disk is None:
            return
        try:
            for entry in self.ram.entries() if self.ram is not None else []:
                self.disk.save(entry.tokens, entry.payload, entry.salt, entry.min_reuse, wait=True)
            for slot in sorted(slots, key=lambda s: s.last_used):
                tokens, least = tuple(slot.cached), self._saved_min_reuse(slot)
                if tokens and not self.disk.covers(tokens, slot.salt, least):
                    state = self._read(slot.seq_id)
                    if state is not None and self.costs.worth(len(tokens), len(state)):
                        self.disk.save(tokens, state, slot.salt, least, wait=True)
        finally:
            self.disk.close()

    # Restoring ------------------------------------------------------------------------------

    def _restore(
        self, target: Slot, prompt: list[int], salt: bytes, limit: int, have: int
    ) -> int | None:
        """Restore the saved state serving the prompt furthest past `have` tokens, into the
        target slot, if that beats computing them; returns the tokens it holds then."""
        found = self._find(prompt, salt, limit, have)
        if found is None:
            return None
        match, disk = found
        start = time.perf_counter()
        state = match.entry.payload
        if disk:
            assert self.disk is not None
            view = self.disk.load(match.entry)
            if view is None:
                return None
            state = (ctypes.c_uint8 * len(view)).from_buffer_copy(view)
        elif self.ram is not None:
            self.ram.use(match.entry)
        mem, seq = self.memory, target.seq_id
        llama_cpp.llama_memory_seq_rm(mem, seq, -1, -1)
        target.cached = []
        if llama_cpp.llama_state_seq_set_data(self.ctx, state, len(state), seq) == 0:
            log.warning("prompt cache: llama.cpp could not restore a state of %d bytes", len(state))
            llama_cpp.llama_memory_seq_rm(mem, seq, -1, -1)
            return None
        reuse = match.reuse
        if not llama_cpp.llama_memory_seq_rm(mem, seq, reuse, -1):  # past the shared prefix
            llama_cpp.llama_memory_seq_rm(mem, seq, -1, -1)
            return None
        self.costs.restored(len(state), time.perf_counter() - start, disk)
        target.cached = list(match.entry.tokens[:reuse])
        self.restored_tokens += reuse
        return reuse

    def _find(
        self, prompt: list[int], salt: bytes, limit: int, have: int
    ) -> tuple[Match, bool] | None:
        """The saved state worth restoring, and whether it is on disk; counts the misses."""
        if self.ram is not None:
            match = self.ram.best(prompt, limit, salt)
            if match and self.costs.worth(match.reuse - have, match.entry.nbytes):
                return match, False
            self.ram.miss()
        if self.disk is not None:
            match = self.disk.best(prompt, limit, salt)
            if match and self.costs.worth(match.reuse - have, match.entry.nbytes, disk=True):
                return match, True
            self.disk.miss()
        return None
