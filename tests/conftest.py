"""Shared fixtures: a private stack under the real supervisord."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shared.ops.harness import Stack


@pytest.fixture
def make_stack(tmp_path: Any) -> Iterator[Callable[..., Stack]]:
    """Factory: ``make_stack(overrides)`` starts a private stack, removed after the test."""
    stacks: list[Stack] = []

    def make(overrides: dict[str, Any] | None = None, start: bool = True) -> Stack:
        s = Stack(tmp_path / f"stack{len(stacks)}", overrides)
        stacks.append(s)
        return s.start() if start else s

    yield make
    for s in stacks:
        s.stop()


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    """A running private stack with the shipped config (own ports and segment)."""
    return make_stack()
