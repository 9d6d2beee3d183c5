"""The halt file: whose order entry is stopped (contract §8 ``deploy/halt`` / ``deploy/resume``).

It lies beside the journal (the journal's path + ``.halted``): one JSON object
``{"seq": n, "halted": [client_id, ...]}``, replaced whole (write, fsync,
rename) by the command. The ordermanager stats it every 100 ms, applies a
change, logs ``client_halted`` / ``client_resumed`` and answers in
``.halted.applied`` (the same document and its pid), which the command waits
for. No port and no signal: the file is the state, so a halt outlives the
ordermanager, and a change made while it is down is applied (and logged) at
its start.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import msgspec

from shared import logs

SUFFIX = ".halted"
APPLIED_SUFFIX = ".halted.applied"
LOCK_SUFFIX = ".halted.lock"
POLL_S = 0.1


class HaltFileError(ValueError):
    """A halt file that is not a halt document."""


class HaltState(NamedTuple):
    """One version of the halt file."""

    seq: int
    halted: frozenset[str]


NONE = HaltState(0, frozenset())


class _Doc(msgspec.Struct):
    seq: int
    halted: list[str]
    pid: int | None = None


_decoder = msgspec.json.Decoder(_Doc)


def decode(data: bytes) -> HaltState:
    """The state in a halt (or applied) file's bytes; HaltFileError if it is not one."""
    try:
        doc = _decoder.decode(data)
    except msgspec.DecodeError as e:
        raise HaltFileError(str(e)) from None
    if doc.seq < 0:
        raise HaltFileError(f"seq {doc.seq} is negative")
    return HaltState(doc.seq, frozenset(doc.halted))


def applied(journal: str) -> tuple[int, int | None] | None:
    """(seq, pid) of the ordermanager's last answer beside ``journal``, or None."""
    try:
        with open(journal + APPLIED_SUFFIX, "rb") as f:
            doc = _decoder.decode(f.read())
    except (OSError, msgspec.DecodeError):
        return None
    return doc.seq, doc.pid


def encode(state: HaltState, pid: int | None = None) -> bytes:
    doc: dict[str, Any] = {"seq": state.seq, "halted": sorted(state.halted)}
    if pid is not None:
        doc["pid"] = pid
    return msgspec.json.encode(doc) + b"\n"


def read(path: str) -> HaltState:
    """The state in ``path``; no file is nobody halted."""
    try:
        with open(path, "rb") as f:
            return decode(f.read())
    except FileNotFoundError:
        return NONE


def write(path: str, data: bytes, durable: bool = True) -> None:
    """Replace ``path`` whole: a reader sees the old file or the new one, never a part."""
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _stat_key(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class HaltWatch:
    """The ordermanager's side: the halted clients, re-read when the file changes."""

    def __init__(self, journal: str, log: Any) -> None:
        self.path, self.applied_path, self.log = journal + SUFFIX, journal + APPLIED_SUFFIX, log
        self.key: tuple[int, int, int] | None = None
        self.next_poll = 0.0
        try:
            self.state = read(self.applied_path)  # what was in force before this start
        except (OSError, HaltFileError):
            self.state = NONE

    def load(self) -> frozenset[str]:
        """At start: the halt file applied (a bad one keeps what was in force before)."""
        self._apply(_stat_key(self.path))
        if self.state.halted:
            self.log.warning("halts_loaded", path=self.path, clients=sorted(self.state.halted))
        return self.state.halted

    def poll(self, now: float) -> frozenset[str] | None:
        """Every ``POLL_S`` of monotonic time: the new halted set if the file changed, else None."""
        if now < self.next_poll:
            return None
        self.next_poll = now + POLL_S
        key = _stat_key(self.path)
        if key == self.key:
            return None
        before = self.state.halted
        self._apply(key)
        return self.state.halted if self.state.halted != before else None

    def _apply(self, key: tuple[int, int, int] | None) -> None:
        self.key = key
        try:
            new = read(self.path)
        except (OSError, HaltFileError) as e:
            self.log.error("halt_file_bad", path=self.path, error=str(e), halted=sorted(self.state.halted))
            return
        for cid in sorted(new.halted - self.state.halted):
            self.log.warning("client_halted", client_id=cid, seq=new.seq)
        for cid in sorted(self.state.halted - new.halted):
            self.log.info("client_resumed", client_id=cid, seq=new.seq)
        self.state = new
        logs.flush()  # logged before the command hears it was applied
        try:
            write(self.applied_path, encode(new, os.getpid()), durable=False)
        except OSError as e:
            self.log.error("halt_not_acknowledged", path=self.applied_path, error=str(e))
