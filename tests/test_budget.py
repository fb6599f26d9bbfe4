"""The memory budget's policy (llmkit.server.budget), without a model."""

from __future__ import annotations

from llmkit.server.budget import Resident, Room, make_room

MB = 10**6


def test_a_model_that_fits_unloads_nothing() -> None:
    assert make_room([Resident("a", 400 * MB, True, 1.0)], 500 * MB, 1000 * MB) == Room()


def test_the_least_recently_used_idle_models_go_first_and_no_more_than_needed() -> None:
    resident = [
        Resident("recent", 300 * MB, True, 30.0),
        Resident("oldest", 300 * MB, True, 10.0),
        Resident("older", 300 * MB, True, 20.0),
    ]
    assert make_room(resident, 300 * MB, 1000 * MB) == Room(("oldest",))
    assert make_room(resident, 600 * MB, 1000 * MB) == Room(("oldest", "older"))


def test_a_busy_model_is_never_unloaded_the_request_waits_instead() -> None:
    resident = [Resident("busy", 600 * MB, False, 1.0), Resident("idle", 300 * MB, True, 2.0)]
    # Unloading the idle one is not enough: unload nothing now (it would lose its cache for
    # nothing) and wait for the busy one to finish.
    assert make_room(resident, 500 * MB, 1000 * MB) == Room(wait=True)
    assert make_room(resident, 300 * MB, 1000 * MB) == Room(("idle",))


def test_an_unknown_budget_never_unloads() -> None:
    assert make_room([Resident("a", 10**12, True, 1.0)], 10**12, None) == Room()
