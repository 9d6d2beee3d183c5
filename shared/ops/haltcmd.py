"""``deploy/halt CLIENT_ID`` and ``deploy/resume CLIENT_ID``: stop and restart one client's order entry.

The command changes the halt file beside the journal (``shared.halt``) under a
lock, then waits until the ordermanager has applied it (and logged
``client_halted`` / ``client_resumed``). Exit 0: applied (or nothing to
change); 1: recorded, but not applied in time (the ordermanager applies it
when it runs); 2: a bad config, client_id or halt file.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import time

from shared import config, halt


def valid_client_id(cid: str) -> bool:
    """1..128 printable ASCII characters (contract §4's order_id rule, held for client_id too)."""
    return 1 <= len(cid) <= 128 and all(" " <= c <= "~" for c in cid)


def change(journal: str, client_id: str, stop: bool, timeout: float) -> tuple[int, str]:
    """Halt (``stop``) or resume ``client_id``; (exit code, what to tell the operator)."""
    path = journal + halt.SUFFIX
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    verb = "halt" if stop else "resume"
    lock = os.open(journal + halt.LOCK_SUFFIX, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        # Held until the ordermanager has applied it: one change at a time, each logged on its own.
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = halt.read(path)
            applied = halt.applied(journal)
        except (OSError, halt.HaltFileError) as e:
            return 2, f"{verb} {client_id}: cannot read {path}: {e}; fix or remove it"
        if (client_id in state.halted) == stop:
            return 0, f"{client_id} is {'already' if stop else 'not'} halted ({path})"
        halted = state.halted | {client_id} if stop else state.halted - {client_id}
        new = halt.HaltState(max(state.seq, applied[0] if applied else 0) + 1, halted)
        t0 = time.monotonic()
        halt.write(path, halt.encode(new))
        while time.monotonic() - t0 < timeout:
            applied = halt.applied(journal)
            if applied is not None and applied[0] == new.seq:
                return 0, (f"{'halted' if stop else 'resumed'} {client_id}: the ordermanager (pid {applied[1]}) "
                           f"applied it in {(time.monotonic() - t0) * 1000:.0f} ms")
            time.sleep(0.02)
        return 1, (f"{verb} {client_id} is recorded in {path}, but the ordermanager has not applied it within "
                   f"{timeout:g} s: is it running? It applies it when it starts.")
    finally:
        os.close(lock)


def main(argv: list[str] | None = None) -> int:
    """``python -m shared.ops.haltcmd {halt,resume} CLIENT_ID [--timeout S]``."""
    ap = argparse.ArgumentParser(prog="deploy/halt | deploy/resume", description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=("halt", "resume"))
    ap.add_argument("client_id")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the ordermanager (10)")
    args = ap.parse_args(argv)
    try:
        cfg = config.load()
    except config.ConfigError as e:
        print(f"deploy/{args.action}: bad config: {e}", file=sys.stderr)
        return 2
    if not valid_client_id(args.client_id):
        print(f"deploy/{args.action}: client_id {args.client_id!r} is not 1..128 printable ASCII characters",
              file=sys.stderr)
        return 2
    try:
        code, text = change(str(cfg.resolve(cfg.ordermanager.journal)), args.client_id, args.action == "halt",
                            args.timeout)
    except OSError as e:  # the logs directory unwritable, the disk full
        code, text = 2, f"deploy/{args.action} {args.client_id}: {e}"
    print(text, file=sys.stderr if code else sys.stdout)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
