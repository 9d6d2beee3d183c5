"""One side of ``deploy/bench --against``: a process that starts and reads a
private stack of one source tree with that tree's own harness.

``ab.Side`` runs this file by its path in an interpreter whose ``sys.path``
starts at the side's tree (cwd and PYTHONPATH), so every ``shared`` import
here, in the harness, in supervisord's programs (which put their own tree
first) is that tree's. It imports nothing of the bench's tree for the same
reason, and speaks JSON lines: a command on stdin, one answer on stdout.
Older trees kept the harness at ``shared/harness.py``; both are tried, with
the editable install's finder taken out first (it would lend an older tree
this venv's ``shared.ops``).

Commands (``{"cmd": ...}``): ``start`` (workdir, overrides) → the order port,
token, symbols, strategies, and where the code came from; ``logged_on``
(timeout) → every strategy logged on; ``t2t`` (t0, t1) → each strategy's
``recv_ns − tick_ts_ns`` for news made in [t0, t1); ``count`` (prefix) →
orders journaled for clients whose id starts so; ``stop``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def _only_this_tree() -> None:
    """Drop the editable install's finder: it maps ``shared.*`` that this tree lacks
    (``shared.ops`` in an older one) to the installed tree's modules."""
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]


def _harness() -> Any:
    """The side's harness module, wherever its tree keeps it."""
    for name in ("shared.ops.harness", "shared.harness"):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    raise RuntimeError("no harness in this tree (shared/ops/harness.py or shared/harness.py)")


def _strategies(stack: Any) -> list[tuple[str, str]]:
    """(program, client_id) of every strategy the stack runs."""
    many = getattr(stack, "strategies", None)
    if many is not None:
        return [(st.program, st.client_id) for st in many]
    return [("strategy", stack.cfg.strategy.client_id)]


def _foreign(pids: dict[str, int], root: Path) -> list[str]:
    """Programs whose script does not lie in ``root``: they would measure another tree."""
    out = []
    for name, pid in pids.items():
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        scripts = [a.decode() for a in args if a.endswith(b".py")]
        if scripts and not all(Path(a).resolve().is_relative_to(root) for a in scripts):
            out.append(f"{name}: {' '.join(scripts)}")
    return out


class Agent:
    """The side's stack, driven one command at a time."""

    def __init__(self) -> None:
        self.root = Path.cwd().resolve()
        self.stack: Any = None

    def start(self, workdir: str, overrides: dict[str, Any]) -> dict[str, Any]:
        import shared

        harness = _harness()
        self.stack = harness.Stack(workdir, overrides)
        self.stack.start()
        cfg = self.stack.cfg
        pids = self.stack.pids()
        foreign = _foreign(pids, self.root)
        if not Path(harness.__file__).resolve().is_relative_to(self.root):
            foreign.append(f"the harness: {harness.__file__}")
        return {"host": cfg.ordermanager.host, "port": cfg.ordermanager.port, "token": self.stack.token,
                "symbols": list(cfg.symbols), "strategies": [cid for _, cid in _strategies(self.stack)],
                "shared": str(Path(shared.__file__).resolve().parent), "harness": harness.__name__,
                "foreign": foreign, "pids": pids}

    def logged_on(self, timeout: float) -> dict[str, Any]:
        for program, _ in _strategies(self.stack):
            self.stack.wait_for(lambda p=program: self.stack.events(p, "logged_on"), timeout=timeout)
        return {}

    def t2t(self, t0: int, t1: int) -> dict[str, Any]:
        ids = {cid for _, cid in _strategies(self.stack)}
        out: dict[str, list[int]] = {cid: [] for cid in ids}
        for e in self.stack.journal():
            cid = e.get("client_id")
            if cid in ids and t0 <= e.get("tick_ts_ns", -1) < t1:
                out[cid].append(e["recv_ns"] - e["tick_ts_ns"])
        return {"t2t": out}

    def count(self, prefix: str) -> dict[str, Any]:
        return {"journaled": sum(1 for e in self.stack.journal() if str(e.get("client_id", "")).startswith(prefix))}

    def stop(self) -> dict[str, Any]:
        if self.stack is not None:
            self.stack.stop()
            self.stack = None
        return {}


def main() -> None:
    """Answer commands until ``stop`` or EOF; the stack is stopped either way."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the harness or supervisord print goes to stderr, not into the answers
    sys.stdout = sys.stderr
    _only_this_tree()
    agent = Agent()
    try:
        for line in sys.stdin:
            req = json.loads(line)
            cmd = req.pop("cmd")
            t = time.monotonic()
            try:
                res = getattr(agent, cmd)(**req)
                res.update(ok=True, seconds=time.monotonic() - t)
            except Exception as e:  # reported to the bench, which decides
                res = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
            answers.write(json.dumps(res) + "\n")
            if cmd == "stop":
                break
    finally:
        agent.stop()


if __name__ == "__main__":
    main()
