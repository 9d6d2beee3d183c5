"""bootstrap: creates the segment (or validates the one it finds) and re-creates it if it vanishes."""

from __future__ import annotations

import errno
import time
from typing import Any

from shared import config as config_mod
from shared.book import CHECK_S, BookError, Segment, SegmentMissing
from shared.net import Retry


class Keeper:
    """bootstrap: makes sure the segment exists and matches the config."""

    def __init__(self, cfg: config_mod.Config, log: Any) -> None:
        self.cfg, self.log = cfg, log
        self.name = cfg.book.segment
        self.seg: Segment | None = None
        self.retry = Retry(log, "segment_open_failed", "error", segment=self.name)
        self.ensure()

    def ensure(self) -> None:
        """Attach and validate, or create; an incompatible segment is fatal."""
        try:
            seg = Segment.attach(self.name)
        except SegmentMissing:
            try:
                seg = Segment.create(self.name, self.cfg.symbols, self.cfg.book.ring_len)
            except FileExistsError:  # someone raced us: validate theirs next turn
                return
            except OSError as e:
                self._failed("create", e)
                return
            self.retry.succeeded()
            self.seg = seg
            self.log.info("segment_created", segment=self.name, generation=seg.generation,
                          size=seg.size, symbols=seg.symbols, ring_len=seg.ring_len)
            return
        except BookError as e:  # never wiped: a person decides (deploy/down removes it)
            self.log.error("segment_incompatible", segment=self.name, error=str(e))
            raise SystemExit(1) from None
        except OSError as e:
            self._failed("attach", e)
            return
        try:
            seg.check_symbols(self.cfg.symbols)
            seg.check_ring(self.cfg.book.ring_len)
        except BookError as e:
            seg.close()
            self.log.error("segment_incompatible", segment=self.name, error=str(e))
            raise SystemExit(1) from None
        self.seg = seg
        self.log.info("segment_attached", segment=self.name, generation=seg.generation, size=seg.size)

    def _failed(self, op: str, e: OSError) -> None:
        """/dev/shm full, no fd left, …: not fatal, tried again with backoff."""
        self.retry.failed(time.monotonic(), e.strerror or str(e), op=op, errno=errno.errorcode.get(e.errno or 0))

    def step(self) -> None:
        time.sleep(CHECK_S)
        if self.seg is None and not self.retry.due(time.monotonic()):
            return
        if self.seg is None or self.seg.replaced():
            if self.seg is not None:
                self.log.error("segment_missing", segment=self.name)
                self.seg.close()
                self.seg = None
            self.ensure()

    def shutdown(self, deadline: float) -> None:
        if self.seg is not None:
            self.seg.close()  # never unlink: only deploy/down removes the segment
