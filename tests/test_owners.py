"""shared.owners: which process owns a client_id at the ordermanager, as a table."""

from __future__ import annotations

import pytest

from shared.owners import Owners, taken_over

# (logons so far as (client_id, instance), the next logon, the verdict on it)
CASES = [
    ([], ("c", None), "accept"),
    ([], ("c", "a"), "accept"),
    ([("c", "a")], ("c", "a"), "accept"),  # the owner reconnects
    ([("c", "a")], ("c", "b"), "take_over"),
    ([("c", "a"), ("c", "b")], ("c", "a"), "refuse"),  # superseded: for good
    ([("c", "a"), ("c", "b"), ("c", "b")], ("c", "a"), "refuse"),
    ([("c", "a"), ("c", "b")], ("c", "b"), "accept"),
    ([("c", "a"), ("c", "b")], ("c", "c"), "take_over"),
    ([("c", "a"), ("c", "b"), ("c", "c")], ("c", "b"), "refuse"),
    ([("c", "a"), ("c", "b")], ("c", None), "accept"),  # no instance: as before, whoever it is
    ([("c", "a"), ("c", None)], ("c", "a"), "accept"),  # ... and it changes no owner
    ([("c", "a")], ("d", "b"), "accept"),  # per client_id
    ([("c", "a"), ("c", "b")], ("d", "a"), "accept"),
]


@pytest.mark.parametrize(("before", "logon", "verdict"), CASES)
def test_verdicts(before: list[tuple[str, str | None]], logon: tuple[str, str | None], verdict: str) -> None:
    owners = Owners()
    for cid, inst in before:
        owners.logon(cid, inst)
    assert owners.logon(*logon) == verdict


def test_only_the_last_superseded_are_remembered() -> None:
    owners = Owners(remember=2)
    for inst in ("a", "b", "c", "d"):
        owners.logon("c", inst)
    assert [owners.logon("c", i) for i in ("b", "c")] == ["refuse", "refuse"]
    assert owners.logon("c", "a") == "take_over"  # forgotten: past the window


def test_the_refusal_names_the_client() -> None:
    assert taken_over("momentum") == "client_id momentum taken over by a newer instance"
