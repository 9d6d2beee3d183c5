"""A journal's files: its segments (contract §8: closed ones are the open one's
path plus ``.<n>``), read in order and rolled; and beside them (the path plus a
suffix that is not a number) the lock that makes one process its owner, the
checkpoint, and writing a file whole or not at all."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import msgspec

LOCK, CHECKPOINT, NEXT = ".lock", ".checkpoint", ".next"


class Checkpoint(msgspec.Struct):
    """The state at the end of closed segments 1..``segments``."""

    segments: int
    orders: int  # journal lines in them
    last_no: int
    positions: dict[str, dict[str, int]]
    last_id: dict[str, str]
    window: dict[str, dict[str, int]]  # client_id -> its last order ids -> order_no, oldest first
    window_size: int
    written_ns: int
    version: int = 1


class JournalLocked(Exception):
    """Another process owns the journal (holds its lock)."""

    def __init__(self, path: str, holder: int | None) -> None:
        super().__init__(f"{path} is locked by {f'pid {holder}' if holder else 'another process'}")
        self.holder = holder


def closed_segments(path: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """The closed segments that exist, as (n, path), oldest first."""
    p = Path(path)
    out = []
    for q in p.parent.glob(p.name + ".*"):
        n = q.name[len(p.name) + 1 :]
        if n.isdigit() and not n.startswith("0"):
            out.append((int(n), q))
    return sorted(out)


def segments(path: str | os.PathLike[str]) -> list[Path]:
    """Every segment that exists, in order: closed ones by n, then the open one."""
    p = Path(path)
    return [q for _, q in closed_segments(p)] + ([p] if p.exists() else [])


def segment_lines(path: str | os.PathLike[str]) -> Iterator[bytes]:
    """Every line of every segment, oldest first: the closed segments by n, then the open one. A roll
    while this reads is followed: an open segment closed before it was opened here is read as closed."""
    closed = closed_segments(path)
    for _, seg in closed:
        with open(seg, "rb") as f:
            yield from f
    n = closed[-1][0] if closed else 0
    while True:
        rolled = Path(f"{path}.{n + 1}")
        try:
            f = open(path, "rb")
        except FileNotFoundError:  # between a roll's two renames, or no journal
            if not rolled.exists():
                return
        else:
            with f:
                if not rolled.exists():  # opened before any roll since the listing: the rest is in it
                    yield from f
                    return
        n += 1
        with open(rolled, "rb") as g:
            yield from g


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint | None:
    """The checkpoint beside a journal, or None if there is none; ValueError if it is unreadable."""
    try:
        data = Path(str(path) + CHECKPOINT).read_bytes()
    except FileNotFoundError:
        return None
    try:
        return msgspec.json.decode(data, type=Checkpoint)
    except msgspec.DecodeError as e:
        raise ValueError(str(e)) from None


def encode_checkpoint(cp: Checkpoint) -> bytes:
    """A checkpoint's bytes (the bench writes journals with it)."""
    return msgspec.json.encode(cp)


def write_atomically(path: str, data: bytes) -> None:
    """Write a file whole or not at all: a temporary beside it, fsync, rename, fsync the directory."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # no half checkpoint left to take room on a full disk
        raise
    sync_dir(path)


def roll_segment(path: str, fd: int, n: int) -> int:
    """Close the open segment ``path`` (written through ``fd``, left open) as ``path.<n>`` and put an
    empty one in its place; the new one's fd. OSError: the open segment is still ``path``, as it was."""
    closed, nxt = f"{path}.{n}", path + NEXT
    os.fsync(fd)  # a closed segment is on disk before a checkpoint counts it
    if os.path.exists(closed):
        raise FileExistsError(errno.EEXIST, "a closed segment is never overwritten", closed)
    new = os.open(nxt, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.rename(path, closed)
    except OSError:
        os.close(new)
        os.unlink(nxt)
        raise
    try:
        os.rename(nxt, path)
    except OSError:  # put the open segment back; if even that fails, the loader sorts it out
        os.close(new)
        os.rename(closed, path)
        os.unlink(nxt)
        raise
    with contextlib.suppress(OSError):
        sync_dir(path)  # else the checkpoint's own fsync of the directory tries again
    return new


def sync_dir(path: str) -> None:
    """fsync the directory holding ``path`` (a rename in it is then durable)."""
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock(path: str) -> int:
    """Take the journal's lock for the life of the process (or until the fd
    is closed); its fd. Raises JournalLocked if another process holds it."""
    fd = os.open(path + LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raw = os.pread(fd, 32, 0)
        os.close(fd)
        holder = raw.strip()
        raise JournalLocked(path, int(holder) if holder.isdigit() else None) from None
    except BaseException:
        os.close(fd)
        raise
    try:  # who holds it, for the next one's log line; best effort (a full disk)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass
    return fd


def errno_name(e: OSError) -> str:
    """The symbolic errno of an error (``ENOSPC``), for log records."""
    return errno.errorcode.get(e.errno or 0, str(e.errno))
