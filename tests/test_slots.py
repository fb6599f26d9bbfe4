"""The slot-reuse plan: which slot a prompt goes to and what of it is cached (`slots.plan_slot`, no model)."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmkit.engine.slots import SlotPlan, common_prefix, plan_slot

SYSTEM = [1, 2, 3]


@dataclass
class SlotState:
    cached: list[int] = field(default_factory=list)
    last_used: float = 0.0
    salt: bytes = b""
    min_reuse: int = 0


def plan(
    slots: list[SlotState], prompt: list[int], free: list[int] | None = None, **kw: int
) -> SlotPlan:
    """The plan with every slot free unless `free` says which are."""
    return plan_slot(slots, list(range(len(slots))) if free is None else free, prompt, **kw)


def test_common_prefix_counts_the_leading_tokens_two_sequences_share() -> None:
    assert common_prefix([1, 2, 3, 4], [1, 2, 9]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [1]) == 0


def test_a_chats_next_turn_goes_to_its_slot_and_reuses_all_it_holds() -> None:
    chat = SlotState([*SYSTEM, 10, 11, 12, 13], last_used=5.0)
    other = SlotState([*SYSTEM, 20, 21, 22, 23], last_used=1.0)
    next_turn = [*chat.cached, 14, 15]
    assert plan([chat, other, SlotState()], next_turn) == SlotPlan(slot=0, reuse=len(chat.cached))


def test_the_same_prompt_again_reuses_all_but_its_last_token() -> None:
    # A short prompt with a long answer: the slot holds far more than the prompt shares with it.
    answered = SlotState([*SYSTEM, 40, 41, 42, *range(100, 120)], last_used=9.0)
    again = [*SYSTEM, 40, 41, 42]
    assert plan([SlotState(), answered], again) == SlotPlan(slot=1, reuse=len(again) - 1)


def test_a_shared_system_prompt_is_copied_from_a_donor_rather_than_taking_its_slot() -> None:
    chat = SlotState([*SYSTEM, 10, 11, 12, 13], last_used=5.0)
    other = SlotState([*SYSTEM, 20, 21, 22, 23], last_used=1.0)
    new = [*SYSTEM, 30, 31, 32, 33]
    assert plan([chat, other, SlotState()], new) == SlotPlan(slot=2, reuse=len(SYSTEM), donor=0)


def test_without_an_empty_slot_the_least_recently_used_one_is_overwritten() -> None:
    chat = SlotState([*SYSTEM, 10, 11, 12, 13], last_used=5.0)
    other = SlotState([*SYSTEM, 20, 21, 22, 23], last_used=1.0)
    new = [*SYSTEM, 30, 31, 32, 33]
    # It keeps the system prompt its own cache holds: nothing longer elsewhere to copy.
    assert plan([chat, other], new) == SlotPlan(slot=1, reuse=len(SYSTEM))
    unrelated = [50, 51, 52, 53]
    assert plan([chat, other], unrelated) == SlotPlan(slot=1, reuse=0)


def test_an_empty_slot_is_taken_before_the_least_recently_used_one() -> None:
    old = SlotState([7, 8, 9], last_used=1.0)
    # Used since, then cleared (a full KV cache clears the idle slots).
    emptied = SlotState([], last_used=9.0)
    assert plan([old, emptied], [50, 51, 52]) == SlotPlan(slot=1, reuse=0)


def test_a_prompt_sharing_half_of_a_slots_cache_continues_that_slot() -> None:
    held = SlotState([1, 2, 3, 4], last_used=5.0)
    assert plan([held, SlotState()], [1, 2, 9, 9, 9]) == SlotPlan(slot=0, reuse=2)
    # Less than half: the slot's cache is kept, the shared tokens are copied to an empty slot.
    assert plan([held, SlotState()], [1, 9, 9, 9, 9]) == SlotPlan(slot=1, reuse=1, donor=0)


def test_only_free_slots_are_given_out_and_a_busy_slots_prefix_is_copied() -> None:
    # A choice extending a prompt that another sequence is generating from.
    base = list(range(1, 30))
    busy = SlotState([*base, 90, 91])
    assert plan([busy, SlotState()], [*base, 40, 41], free=[1]) == SlotPlan(
        slot=1, reuse=len(base), donor=0
    )


def test_a_copied_prefix_stops_before_the_prompts_last_token() -> None:
    prompt = [1, 2, 3, 4, 5]
    busy = SlotState([*prompt, 6, 7])  # holds all of the prompt and more
    assert plan([busy, SlotState()], prompt, free=[1]) == SlotPlan(slot=1, reuse=4, donor=0)


def test_the_longest_prefix_among_the_other_slots_is_copied() -> None:
    short = SlotState([1, 2, *[9] * 10], last_used=1.0)
    long = SlotState([1, 2, 3, 4, *[9] * 10], last_used=2.0)
    prompt = [1, 2, 3, 4, 5, 6, 7, 8]
    assert plan([short, long, SlotState()], prompt) == SlotPlan(slot=2, reuse=4, donor=1)


def test_with_prompt_logprobs_nothing_is_reused_but_the_prompt_keeps_its_own_slot() -> None:
    # Every prompt position's logits are needed (limit 0): the slot holding this prompt is
    # recomputed, and no other slot's cache is overwritten for it.
    mine = SlotState([*SYSTEM, 40, 41, 42, 43], last_used=1.0)
    other = SlotState([*SYSTEM, 20, 21], last_used=9.0)
    prompt = [*SYSTEM, 40, 41, 42]
    assert plan([other, mine, SlotState()], prompt, limit=0) == SlotPlan(slot=1, reuse=0)
    assert plan([other, mine, SlotState()], prompt) == SlotPlan(slot=1, reuse=len(prompt) - 1)


def test_a_cache_serves_only_prompts_of_its_salt() -> None:
    system = list(range(100))
    slots = [SlotState(system + [7, 8], 1.0, b"alice"), SlotState([], 0.0)]
    # Bob's prompt shares Alice's 100 system tokens: nothing of hers is reused or copied.
    bob = plan_slot(slots, [0, 1], system + [9], salt=b"bob")
    assert bob.reuse == 0 and bob.donor is None and bob.slot == 1
    # Alice's own next turn continues her slot.
    alice = plan_slot(slots, [0, 1], system + [7, 8, 9], salt=b"alice")
    assert (alice.slot, alice.reuse) == (0, 102)
    # No salt is a salt of its own: an unsalted request does not reuse a salted cache.
    assert plan_slot(slots, [0, 1], system + [7, 8, 9]).reuse == 0


def test_a_cache_serves_no_prefix_behind_the_window_its_cells_keep() -> None:
    # A sliding-window model keeps, in those layers, only the cells near the sequence's last
    # tokens: a shorter prefix's next tokens would attend to cells that are gone.
    held = SlotState(list(range(1, 1001)), last_used=5.0, min_reuse=600)
    behind = [*range(1, 301), 7]
    assert plan([held, SlotState()], behind) == SlotPlan(slot=1, reuse=0)  # nor copied
    within = [*range(1, 801), 7]
    assert plan([held, SlotState()], within) == SlotPlan(slot=0, reuse=800)
    assert plan([held, SlotState()], within, free=[1]) == SlotPlan(slot=1, reuse=800, donor=0)
