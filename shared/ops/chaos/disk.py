"""Disk faults: fill a filesystem to the last block and give the space back,
and a small tmpfs to do it on without touching the machine's own disks.

``full(directory)`` holds a ballast file that takes every free block of the
filesystem under ``directory`` (what a runaway log or a full partition does);
``tmpfs(mountpoint, size)`` mounts a private one (root only). Each fault is
logged like the others (``shared.ops.chaos.faults.emit``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.ops.chaos.faults import Fault, FaultError, emit

BALLAST = ".tradestack-ballast"
MAX_FILL = 1 << 30  # refuse to fill more than this unless told: it is the whole filesystem's free space


def free_bytes(directory: str | os.PathLike[str]) -> int:
    """Bytes this process may still write under ``directory`` (root may use the reserved blocks)."""
    st = os.statvfs(directory)
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


def fill(directory: str | os.PathLike[str], target: Any = None, max_bytes: int = MAX_FILL) -> Path:
    """Take every free block under ``directory`` with a ballast file; its path."""
    d = Path(directory)
    free = free_bytes(d)
    if free > max_bytes:
        raise FaultError(f"{d}: {free:,} bytes free, more than the {max_bytes:,} allowed (--max-bytes)")
    ballast = d / BALLAST
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    size, chunk = 0, max(free, 4096)
    try:
        while chunk >= 512:  # allocate ever smaller chunks until not even one block is left
            try:
                os.posix_fallocate(fd, size, chunk)
                size += chunk
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                    raise
                chunk //= 2
    except BaseException:
        os.close(fd)
        ballast.unlink()
        raise
    os.close(fd)
    emit("fault_injected", target, fault="disk_full", path=str(ballast), bytes=size, free_before=free,
         free_after=free_bytes(d))
    return ballast


def release(ballast: str | os.PathLike[str], target: Any = None) -> None:
    """Remove the ballast: the space is back."""
    p = Path(ballast)
    size = p.stat().st_size
    p.unlink()
    emit("fault_cleared", target, fault="disk_full", path=str(p), bytes=size)


@contextlib.contextmanager
def full(directory: str | os.PathLike[str], target: Any = None, max_bytes: int = MAX_FILL) -> Iterator[Path]:
    """The filesystem under ``directory`` full for the ``with`` block, its space back after it, whatever happens."""
    ballast = fill(directory, target, max_bytes)
    try:
        yield ballast
    finally:
        release(ballast, target)


@contextlib.contextmanager
def tmpfs(mountpoint: str | os.PathLike[str], size: int) -> Iterator[Path]:
    """A private tmpfs of ``size`` bytes (mode 0700) on ``mountpoint`` for the ``with`` block; unmounted after it."""
    mnt = Path(mountpoint)
    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mnt)], check=True,
                   capture_output=True)
    try:
        yield mnt
    finally:
        # A process that still has a file open there keeps it busy: detach it anyway (lazy).
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True, capture_output=True)


def full_for(directory: str | os.PathLike[str], seconds: float = 2.0) -> Fault:
    """A menu entry ``disk_full_journal``: the filesystem under ``directory`` full for ``seconds``."""
    def run(stack: Any) -> dict[str, Any]:
        with full(directory, stack):
            time.sleep(seconds)
        return {"fault": "disk_full_journal", "restarted": {}}
    return run
