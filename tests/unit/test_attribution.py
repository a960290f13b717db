"""Attribution of clicks, cart adds and purchases to the latest impression of the item."""

from __future__ import annotations

from online_models.attribution import (
    HELD,
    RECORD,
    HeldActions,
    ImpressionLog,
    attribute,
    hold,
    key_of,
    record_impression,
    record_impressions,
    settle,
)

EXP = key_of("exp", 4)
HOUR = 3_600_000


def _shown(*impressions: tuple[str, int, int], max_entries: int = 100) -> ImpressionLog:
    """A log of ``(item, ts, arm)`` impressions, oldest first."""
    log: ImpressionLog | None = None
    for item, ts, arm in impressions:
        log = record_impression(log, key_of(item), ts, EXP, arm, max_entries)
    assert log is not None
    return log


def _credit(log: ImpressionLog, item: str, action: str, ts: int, **kw: int) -> int | None:
    found = attribute(log, key_of(item), EXP, action, ts, kw.get("window", HOUR), kw.get("skew", 0))
    return None if found is None else found[1]


def test_an_action_goes_to_the_latest_impression_of_the_item() -> None:
    log = _shown(("a", 1000, 0), ("b", 2000, 1), ("a", 3000, 1))
    assert _credit(log, "a", "click", 4000) == 1
    assert _credit(log, "b", "purchase", 4000) == 1
    assert _credit(log, "never-shown", "click", 4000) is None


def test_each_impression_is_credited_once_per_action() -> None:
    log = _shown(("a", 1000, 0))
    found = attribute(log, key_of("a"), EXP, "click", 2000, HOUR)
    assert found is not None
    log, arm = found
    assert arm == 0
    assert attribute(log, key_of("a"), EXP, "click", 2500, HOUR) is None  # a second click
    for action in ("add_to_cart", "purchase"):  # other actions are still open
        found = attribute(log, key_of("a"), EXP, action, 3000, HOUR)
        assert found is not None
        log = found[0]
    assert attribute(log, key_of("a"), EXP, "purchase", 3500, HOUR) is None


def test_the_window_and_the_clock_skew() -> None:
    log = _shown(("a", 10 * HOUR, 0))
    assert _credit(log, "a", "purchase", 11 * HOUR) == 0  # exactly one window later
    assert _credit(log, "a", "purchase", 11 * HOUR + 1) is None
    assert _credit(log, "a", "click", 10 * HOUR - 500) is None  # before the impression
    assert _credit(log, "a", "click", 10 * HOUR - 500, skew=1000) == 0


def test_the_log_is_bounded_and_forgets_the_oldest() -> None:
    log = _shown(*((f"item-{i}", i, i % 2) for i in range(30)), max_entries=10)
    assert len(log) == 10 * RECORD.size
    assert _credit(log, "item-19", "click", 100) is None  # fell out
    assert _credit(log, "item-20", "click", 100) == 0


def test_impressions_of_another_experiment_are_not_credited() -> None:
    log = record_impression(None, key_of("a"), 1000, key_of("old-exp", 4), 1, 10)
    assert attribute(log, key_of("a"), EXP, "click", 2000, HOUR) is None


def test_a_hash_found_inside_another_field_is_skipped() -> None:
    # the newer record's timestamp holds the same 8 bytes as the item's hash: the search must
    # skip that unaligned match and still find the real impression before it
    item = key_of("target")
    same_bytes = item - 2**64 if item >= 2**63 else item  # the hash read as a signed int64
    log = record_impression(None, item, 1000, EXP, 1, 10)
    log = record_impression(log, key_of("x"), same_bytes, EXP, 0, 10)
    assert log.rfind(item.to_bytes(8, "little")) == RECORD.size + 8
    assert _credit(log, "target", "click", 2000) == 1


def test_a_served_list_is_one_append_with_an_impression_per_item() -> None:
    log = _shown(("old", 500, 1))
    log = record_impressions(log, [key_of(i) for i in ("a", "b", "c")], 1000, EXP, 0, 100)
    assert len(log) == 4 * RECORD.size
    assert [_credit(log, item, "click", 2000) for item in ("a", "c", "old")] == [0, 0, 1]
    assert _credit(log, "d", "click", 2000) is None  # not in the list


def test_a_long_list_keeps_only_the_newest_entries() -> None:
    log = _shown(("old", 500, 1), max_entries=3)
    log = record_impressions(log, [key_of(i) for i in ("a", "b", "c")], 1000, EXP, 0, 3)
    assert len(log) == 3 * RECORD.size
    assert _credit(log, "old", "click", 2000) is None  # pushed out by the list
    assert _credit(log, "a", "click", 2000) == 0


# --- actions that arrive before their impression ------------------------------------------------
GRACE = 10_000


def _held(*actions: tuple[str, str, int], max_held: int = 32) -> HeldActions:
    """Held ``(item, action, ts)`` actions, oldest first."""
    held: HeldActions | None = None
    for item, action, ts in actions:
        held = hold(held, key_of(item), action, ts, GRACE, max_held)
    assert held is not None
    return held


def _arrives(
    log: ImpressionLog | None, held: HeldActions, items: list[str], ts: int, arm: int
) -> tuple[ImpressionLog, HeldActions, list[tuple[str, int]]]:
    """A list impression of ``items`` at ``ts`` arrives: recorded, then the held settled."""
    keys = [key_of(i) for i in items]
    log = record_impressions(log, keys, ts, EXP, arm, 100)
    return settle(log, held, keys, EXP, ts, HOUR, 0, GRACE)


def test_a_click_that_arrives_before_its_impression_is_credited_when_it_arrives() -> None:
    held = _held(("b", "click", 1500), ("b", "add_to_cart", 1600), ("z", "click", 1700))
    log, held, credited = _arrives(None, held, ["a", "b", "c"], 1000, arm=1)
    assert credited == [("click", 1), ("add_to_cart", 1)]
    assert held == _held(("z", "click", 1700))  # not shown in that list: still waiting
    # the credit is in the log: the same click arriving again is not counted twice
    assert attribute(log, key_of("b"), EXP, "click", 1500, HOUR) is None
    assert _credit(log, "b", "purchase", 2000) == 1  # the list's other actions stay open


def test_held_actions_follow_the_attribution_rule() -> None:
    # a click long before the impression (beyond the clock skew) stays uncredited; an impression
    # of another experiment credits nothing
    held = _held(("a", "click", 500))
    _, still, credited = _arrives(None, held, ["a"], 5000, arm=0)
    assert (credited, still) == ([], held)
    log = record_impressions(None, [key_of("a")], 400, key_of("other", 4), 0, 100)
    assert settle(log, held, [key_of("a")], EXP, 400, HOUR, 0, GRACE)[2] == []


def test_only_actions_soon_after_a_late_impression_are_credited_and_the_held_are_bounded() -> None:
    held = _held(("a", "click", 1000 + GRACE), ("b", "click", 1000 + GRACE + 1))
    _, still, credited = _arrives(None, held, ["a", "b"], 1000, arm=0)
    assert credited == [("click", 0)]  # b came too long after the list to have raced it
    assert still == _held(("b", "click", 1000 + GRACE + 1))
    held = _held(("a", "click", 1000), ("b", "click", 1000 + GRACE + 1))
    assert held == _held(("b", "click", 1000 + GRACE + 1))  # a newer held action expires a
    many = _held(*((f"i{n}", "click", 5000 + n) for n in range(40)), max_held=32)
    assert len(many) == 32 * HELD.size
    _, _, credited = _arrives(None, many, ["i7", "i8", "i39"], 5000, arm=0)
    assert credited == [("click", 0), ("click", 0)]  # i8 and i39 (i0..i7 fell out)
