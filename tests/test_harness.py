"""The test harness's own parts."""

from __future__ import annotations

from typing import Any

import pytest

from shared.ops import harness


def test_free_port_never_gives_a_port_twice_in_a_row(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel may offer a port again before it is bound (below the ephemeral range: none given yet).
    offered = iter([5001, 5001, 5002, 5001, 5003])

    class Sock:
        def __enter__(self) -> Sock:
            return self

        def __exit__(self, *exc: Any) -> None:
            pass

        def bind(self, addr: Any) -> None:
            pass

        def getsockname(self) -> tuple[str, int]:
            return "127.0.0.1", next(offered)

    monkeypatch.setattr(harness.socket, "socket", Sock)
    assert [harness.free_port() for _ in range(3)] == [5001, 5002, 5003]
