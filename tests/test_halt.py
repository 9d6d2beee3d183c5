"""The halt file (shared/halt.py) and deploy/halt's logic (shared/ops/haltcmd.py), without processes:
the ordermanager's side is a HaltWatch polled in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from shared import halt
from shared.ops import haltcmd


class Watcher:
    """A HaltWatch polled every 10 ms in a thread, as the ordermanager's loop polls it."""

    def __init__(self, journal: Path) -> None:
        self.watch = halt.HaltWatch(str(journal), structlog.get_logger())
        self.loaded = self.watch.load()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def halted(self) -> frozenset[str]:
        """What the watch applied (the ordermanager hands it to its risk checks in the same turn)."""
        return self.watch.state.halted

    def _run(self) -> None:
        while not self.stop.is_set():
            self.watch.poll(time.monotonic())
            time.sleep(0.01)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with capture_logs() as cap:
        yield cap


def events(cap: list[MutableMapping[str, Any]], *names: str) -> list[tuple[str, Any]]:
    return [(r["event"], r.get("client_id") or r.get("clients")) for r in cap if r["event"] in names]


HALTS = ("client_halted", "client_resumed", "halts_loaded")


def test_halt_and_resume_are_applied_logged_and_survive_a_restart(tmp_path: Path,
                                                                  logs: list[MutableMapping[str, Any]]) -> None:
    journal = tmp_path / "orders.jsonl"
    w = Watcher(journal)
    try:
        assert w.halted == frozenset()
        code, text = haltcmd.change(str(journal), "alpha", True, timeout=10)
        assert code == 0 and text.startswith("halted alpha: the ordermanager"), text
        assert w.halted == {"alpha"}
        assert haltcmd.change(str(journal), "beta", True, timeout=10)[0] == 0
        assert w.halted == {"alpha", "beta"}
        assert haltcmd.change(str(journal), "alpha", True, timeout=10) == (
            0, f"alpha is already halted ({journal}.halted)")
    finally:
        w.close()
    assert events(logs, *HALTS) == [("client_halted", "alpha"), ("client_halted", "beta")]
    logs.clear()

    # The ordermanager starts again: the same halts, logged as loaded, not as new halts.
    w = Watcher(journal)
    try:
        assert w.halted == {"alpha", "beta"}
        code, text = haltcmd.change(str(journal), "alpha", False, timeout=10)
        assert code == 0 and text.startswith("resumed alpha"), text
        assert w.halted == {"beta"}
        assert haltcmd.change(str(journal), "alpha", False, timeout=10)[1].startswith("alpha is not halted")
    finally:
        w.close()
    assert events(logs, *HALTS) == [("halts_loaded", ["alpha", "beta"]), ("client_resumed", "alpha")]


def test_a_change_while_the_ordermanager_is_down_is_applied_at_its_start(tmp_path: Path,
                                                                         logs: list[MutableMapping[str, Any]]) -> None:
    journal = tmp_path / "orders.jsonl"
    Watcher(journal).close()  # it ran once: nobody halted
    code, text = haltcmd.change(str(journal), "gamma", True, timeout=0.3)
    assert code == 1 and "has not applied it within 0.3 s: is it running?" in text, text
    w = Watcher(journal)
    w.close()
    assert w.halted == {"gamma"}
    assert events(logs, *HALTS) == [("client_halted", "gamma"), ("halts_loaded", ["gamma"])]


def test_a_bad_halt_file_keeps_what_was_in_force(tmp_path: Path, logs: list[MutableMapping[str, Any]]) -> None:
    """An edited, broken halt file: the ordermanager logs it and keeps its halts (at a start too);
    the command refuses to change it."""
    journal = tmp_path / "orders.jsonl"
    w = Watcher(journal)
    try:
        assert haltcmd.change(str(journal), "delta", True, timeout=10)[0] == 0
        Path(f"{journal}.halted").write_text('{"seq": 9, "halted": "everyone"}')
        deadline = time.monotonic() + 10
        while not events(logs, "halt_file_bad") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert w.halted == {"delta"}
    finally:
        w.close()
    assert events(logs, "halt_file_bad")
    w = Watcher(journal)
    w.close()
    assert w.halted == {"delta"}  # a start reads the applied state back
    code, text = haltcmd.change(str(journal), "delta", False, timeout=1)
    assert code == 2 and "cannot read" in text and "fix or remove it" in text, text


@pytest.mark.parametrize(("data", "ok"), [
    (b'{"seq": 3, "halted": ["a", "b"]}', True),
    (b'{"seq": 0, "halted": [], "pid": 12}', True),
    (b'{"seq": -1, "halted": []}', False),
    (b'{"seq": 1}', False),
    (b'{"seq": 1, "halted": [1]}', False),
    (b"not json", False),
    (b"", False),
])
def test_decode(data: bytes, ok: bool) -> None:
    if ok:
        st = halt.decode(data)
        assert halt.decode(halt.encode(st)) == st
    else:
        with pytest.raises(halt.HaltFileError):
            halt.decode(data)


@pytest.mark.parametrize(("cid", "ok"), [("momentum", True), ("a b-1_2", True), ("x" * 128, True), ("", False),
                                         ("x" * 129, False), ("tab\there", False), ("café", False)])
def test_valid_client_id(cid: str, ok: bool) -> None:
    assert haltcmd.valid_client_id(cid) is ok
