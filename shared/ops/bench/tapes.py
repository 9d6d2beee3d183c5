"""deploy/bench's tape rows (issue 16): ``stack-record`` beside the gateway's random walk at 200,000 price
ticks/s, and the gateway serving a tape at ``speed = 0`` to a bare subscriber, beside the raw stream.

The real programs run alone, outside supervisord, in a temporary directory: the gateway
(``daemons/gateway.py``, a config of its own on free ports) and ``stack-record`` (``shared/recorder.py``)
subscribed to it. Recorded ticks/s is the growth of the tape on disk over a window, by the bench's clock;
the gateway's sent rate over the same window is the advance of its seqs over its own ``ts_ns``, read from the
tape (exact, gaps or not). The speed-0 subscriber is a bare reader in a process of its own: both streams,
frames counted by their length prefix and the first letter of their type, nothing decoded but the first
and the last (their ``ts_ns``: the gateway's clock of serving).

Alone: ``deploy/bench --tape [--quick]`` or ``python -m shared.ops.bench.tapes [--quick]``.
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from shared.config import ROOT
from shared.ops.bench.loopback import _LEN, FLOOR_RECV, JOIN_S, Roles, _recv, raw_stream
from shared.ops.bench.plan import QUICK_TAPE, RECORD_NEWS, TapePlan, say
from shared.ops.bench.probes import cpu_seconds
from shared.ops.harness import dump_toml, free_port, read_jsonl

KEEP_UP = 0.97  # recorded / sent over the window, at least (the tape grows in steps: a few % of noise)
BEHIND_MS = 250.0  # the tape's lag at the window's end, at most: falling behind by 5 % for 5 s would pass it
SAMPLE_S = 0.1  # the tape's size is sampled this often over the window


class GatewayProc:
    """``daemons/gateway.py`` alone: a config of its own (``[gateway]`` keys given, free ports), its log
    in ``workdir``; ``stop()`` ends it."""

    def __init__(self, workdir: Path, **gateway: Any) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.price_port, self.news_port = free_port(), free_port()
        self.config = workdir / "gateway.toml"
        self.config.write_text(dump_toml({"symbols": ["AAPL", "MSFT", "GOOGL"], "gateway": {
            "price_port": self.price_port, "news_port": self.news_port, **gateway}}))
        self.log_path = workdir / "gateway.log"
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, str(ROOT / "daemons" / "gateway.py")], cwd=ROOT,
                                         env={**os.environ, "STACK_CONFIG": str(self.config)},
                                         stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: len(self.events("listening")) == 2, self.proc, self.log_path, "listening")
        except BaseException:
            self.stop()
            raise

    def events(self, event: str) -> list[dict[str, Any]]:
        return [r for r in read_jsonl(self.log_path) if r.get("event") == event]

    def drops(self) -> int:
        """Subscribers dropped as slow consumers so far."""
        return sum(1 for r in self.events("disconnected") if r.get("reason") == "slow_consumer")

    def stop(self) -> None:
        stop(self.proc)


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(ok: Any, proc: subprocess.Popen[Any], log: Path, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if proc.poll() is not None:
            raise RuntimeError(f"{log.stem} exited {proc.returncode} before {what}: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{log.stem}: no {what} in {timeout:g} s: {log.read_text()[-2000:]}")
        time.sleep(0.02)


def _records(path: Path) -> int:
    from shared import tape as tape_mod

    try:
        return max(0, path.stat().st_size - tape_mod.RECORDS_OFFSET) // tape_mod.RECORD_SIZE
    except FileNotFoundError:
        return 0


# --- stack-record beside the gateway's walk -------------------------------------


def record(workdir: Path, rate: int, seconds: float) -> dict[str, Any]:
    """The gateway's walk at ``rate`` price ticks/s and RECORD_NEWS news/s, ``stack-record`` subscribed;
    over ``seconds`` after a second of warm-up: records written per second, the gateway's sent rate, both
    processes' CPU, then the recorder's own count of gaps and missed ticks (and the tape's)."""
    import numpy as np

    from shared import tape as tape_mod

    gw = GatewayProc(workdir, price_rate=rate, news_rate=RECORD_NEWS, seed=1)
    out, log = workdir / "walk.tape", workdir / "recorder.log"
    warm, tail = 1.0, 0.5
    try:
        with open(log, "wb") as f:
            rec = subprocess.Popen([sys.executable, "-m", "shared.recorder", "--seconds", str(warm + seconds + tail),
                                    "--out", str(out), "--config", str(gw.config)], cwd=ROOT, stdout=f,
                                   stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: _records(out) > 0, rec, log, "records on the tape")
            time.sleep(warm)
            r0, g0, t0, w0 = cpu_seconds(rec.pid), cpu_seconds(gw.proc.pid), time.monotonic(), time.time_ns()
            samples = []  # (monotonic, wall clock ns, records on disk), every SAMPLE_S
            while (now := time.monotonic()) < t0 + seconds:
                samples.append((now, time.time_ns(), _records(out)))
                time.sleep(SAMPLE_S)
            r1, g1, t1, w1 = cpu_seconds(rec.pid), cpu_seconds(gw.proc.pid), time.monotonic(), time.time_ns()
            samples.append((t1, w1, _records(out)))
            rec.wait(warm + seconds + tail + 30)
        finally:
            stop(rec)
        drops = gw.drops()
    finally:
        gw.stop()
    done = [r for r in read_jsonl(log) if r.get("event") == "recorded"]
    if rec.returncode != 0 or not done:
        raise RuntimeError(f"stack-record exited {rec.returncode}: {log.read_text()[-2000:]}")
    summary = done[-1]
    t = tape_mod.read(out)
    r = t.records
    ts, seq, kind = np.asarray(r["ts_ns"]), np.asarray(r["seq"]), np.asarray(r["kind"])
    win = (ts >= w0) & (ts < w1)
    sent = 0.0
    for k in (tape_mod.PRICE, tape_mod.NEWS):  # the advance of each stream's seq over the gateway's clock
        s, q = ts[win & (kind == k)], seq[win & (kind == k)]
        if len(s) > 1:
            sent += (int(q[-1]) - int(q[0])) / ((int(s[-1]) - int(s[0])) / 1e9)
    tape_gaps = sum(int(np.count_nonzero(np.diff(seq[kind == k].astype(np.int64)) != 1))
                    for k in (tape_mod.PRICE, tape_mod.NEWS))
    elapsed = t1 - t0
    # The tape grows by a write every 50 ms: the slope of records on disk over the samples, not two of them.
    x, y = np.array([m for m, _, _ in samples]), np.array([n for _, _, n in samples], dtype=float)
    recorded = float(np.polyfit(x - x[0], y, 1)[0]) if len(samples) > 2 else 0.0
    lags = [(w - int(ts[n - 1])) / 1e6 for _, w, n in samples if 0 < n <= len(ts)]  # the newest on disk, then
    return {"rate_cfg": rate, "seconds": elapsed, "recorded": recorded, "sent": sent,
            "lag_ms": lags[-1] if lags else float("nan"), "lag_max_ms": max(lags, default=float("nan")),
            "rec_cpu": (r1 - r0) / elapsed, "gw_cpu": (g1 - g0) / elapsed,
            "gaps": int(summary["price_gaps"]) + int(summary["news_gaps"]),
            "missed": int(summary["price_missed"]) + int(summary["news_missed"]), "tape_gaps": tape_gaps,
            "drops": drops, "ticks": int(summary["price_ticks"]) + int(summary["news_ticks"]),
            "records": len(t), "per_s_log": summary.get("per_s")}


# --- the gateway serving a tape at speed 0 --------------------------------------


def _reader(pipe: Connection, host: str, ports: tuple[int, int], expect: int, timeout: float) -> None:
    """Subscribe to both streams (price first); count price and news frames until ``expect`` of them or
    EOF or ``timeout``; the first and last one's receive time and body."""
    socks = [socket.create_connection((host, p), timeout=JOIN_S) for p in ports]
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, bytearray())
    pipe.send("ready")
    unpack = _LEN.unpack_from
    got = 0
    first_ns = last_ns = 0
    first = last = b""
    eof = False
    deadline = time.monotonic() + timeout
    while got < expect and not eof and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            data = key.fileobj.recv(FLOOR_RECV)  # type: ignore[union-attr]
            now = time.time_ns()
            if not data:
                eof = True
                break
            buf: bytearray = key.data
            buf += data
            pos, end, at = 0, len(buf), -1
            while end - pos >= 4:
                n = unpack(buf, pos)[0]
                if end - pos - 4 < n:
                    break
                if buf[pos + 13] in b"pn":  # {"type":"price" or "news": a tick (not hello, not a heartbeat)
                    got += 1
                    at = pos
                    if not first:
                        first, first_ns = bytes(buf[pos + 4: pos + 4 + n]), now
                pos += 4 + n
            if at >= 0:
                last, last_ns = bytes(buf[at + 4: at + 4 + unpack(buf, at)[0]]), now
            del buf[:pos]
    for s in socks:
        s.close()
    pipe.send({"got": got, "first_ns": first_ns, "last_ns": last_ns, "first": first, "last": last, "eof": eof})


def serve(workdir: Path, prices: int, news: int) -> dict[str, Any]:
    """A tape of ``prices`` and ``news`` ticks served at speed 0 to a bare reader: ticks/s served (the
    gateway's clock) and received (the reader's), the gateway's CPU per tick."""
    import msgspec

    from shared.ops.research import sampletape

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "serve.tape"
    say(f"tape: serving {prices + news:,} records at speed 0 to a bare reader")
    n = sampletape.write(path, prices, news)
    gw = GatewayProc(workdir, tape=str(path), speed=0)
    try:
        with Roles() as roles:
            cpu0 = cpu_seconds(gw.proc.pid)
            pipe = roles.spawn(_reader, "127.0.0.1", (gw.price_port, gw.news_port), n, 120.0)
            _recv(pipe)
            got = _recv(pipe, 150.0)
            cpu = cpu_seconds(gw.proc.pid) - cpu0
        drops = gw.drops()
    finally:
        gw.stop()
    ts = msgspec.json.Decoder(dict[str, Any])
    served_s = (ts.decode(got["last"])["ts_ns"] - ts.decode(got["first"])["ts_ns"]) / 1e9 if got["last"] else 0.0
    received_s = (got["last_ns"] - got["first_ns"]) / 1e9
    return {"records": n, "got": got["got"], "served": got["got"] / served_s if served_s > 0 else 0.0,
            "received": got["got"] / received_s if received_s > 0 else 0.0, "seconds": received_s,
            "cpu_us": cpu / max(got["got"], 1) * 1e6, "drops": drops, "eof": got["eof"]}


def measure(plan: TapePlan, workdir: Path, raw: float | None = None) -> dict[str, Any]:
    """Both runs; the raw stream too unless the caller measured it (frames/s)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if raw is None:
        say("tape: raw framed stream")
        raw = raw_stream(plan.raw_s)
    say(f"tape: stack-record beside the gateway at {plan.rate:,} price ticks/s for {plan.seconds:g} s")
    rec = record(workdir / "record", plan.rate, plan.seconds)
    srv = serve(workdir / "serve", plan.serve_prices, plan.serve_news)
    return {"record": rec, "serve": srv, "raw": raw, "load": os.getloadavg()[0]}


def rows(res: dict[str, Any]) -> list[tuple[str, str, str, str, str, str, str]]:
    """The table's rows: recorded beside sent, gaps, the recorder's CPU; served at speed 0 beside raw."""
    r, s, raw = res["record"], res["serve"], res["raw"]
    ratio = r["recorded"] / r["sent"] if r["sent"] else 0.0
    clean = r["gaps"] == r["missed"] == r["tape_gaps"] == r["drops"] == 0
    at_rate = r["sent"] >= 0.95 * (r["rate_cfg"] + RECORD_NEWS)  # else the gateway did not make the rate asked
    keeps = clean and ratio >= KEEP_UP and r["lag_ms"] <= BEHIND_MS and at_rate
    whole = s["got"] == s["records"] and not s["drops"]
    return [
        (f"stack-record beside the gateway at {r['rate_cfg']:,} price ticks/s (ticks/s recorded)",
         f"{r['recorded']:,.0f} (the tape {r['lag_ms']:,.0f} ms behind at the end, {r['lag_max_ms']:,.0f} at most)",
         f"{r['sent']:,.0f} sent by the gateway", f"{ratio:.2f}×", "",
         f"≥ {KEEP_UP:g}× sent, ≤ {BEHIND_MS:g} ms behind, sent ≥ 95 % of the rate (issue 16)",
         "pass" if keeps else "FAIL"),
        ("stack-record gaps / missed ticks / slow-consumer drops",
         f"{r['gaps']} / {r['missed']} / {r['drops']}", f"{r['tape_gaps']} seq gaps on the tape", "", "",
         "0 / 0 / 0 (issue 16)", "pass" if clean else "FAIL"),
        (f"stack-record CPU at {r['rate_cfg']:,} price ticks/s (% of a core)", f"{100 * r['rec_cpu']:.1f}",
         f"{100 * r['gw_cpu']:.1f} the gateway making them", f"{r['rec_cpu'] / r['gw_cpu']:.2f}×"
         if r["gw_cpu"] else "–", "", "", ""),
        ("stack-record ticks per CPU second it used (its cost a tick; at a low rate, small reads cost more)",
         f"{r['recorded'] / r['rec_cpu']:,.0f}" if r["rec_cpu"] else "–",
         f"{r['sent'] / r['gw_cpu']:,.0f} the gateway's, making them" if r["gw_cpu"] else "",
         f"{r['recorded'] / r['rec_cpu'] / (r['sent'] / r['gw_cpu']):.2f}×" if r["rec_cpu"] and r["gw_cpu"] else "–",
         "", "", ""),
        (f"gateway serving a tape at speed 0, {s['records']:,} records (ticks/s served / received)",
         f"{s['served']:,.0f} / {s['received']:,.0f}", f"{raw:,.0f} raw stream",
         f"{s['received'] / raw:.2f}×" if raw else "–", "", "every record, no drop",
         "pass" if whole else "FAIL"),
        ("gateway serving a tape at speed 0: CPU per tick (µs)", f"{s['cpu_us']:.2f}",
         f"{1e6 / raw:.2f} raw stream's time per frame" if raw else "", "", "", "", ""),
    ]


def note(res: dict[str, Any]) -> str:
    """How the rows were made, for the notes under the table."""
    r, s = res["record"], res["serve"]
    return (
        f"- Tape: the gateway (`daemons/gateway.py`, alone, a config of its own) walks at {r['rate_cfg']:,} price"
        f" and {RECORD_NEWS} news ticks/s; `stack-record` subscribes; over {r['seconds']:.1f} s after a second of"
        " warm-up, recorded = the growth of the tape on disk per second (the slope over its size sampled every"
        f" {SAMPLE_S * 1000:.0f} ms), sent = the advance of each stream's"
        " seq over the gateway's `ts_ns` of the ticks in that window (read from the tape); behind = the time of a"
        " sample less the `ts_ns` of the newest record then on disk (the recorder writes out every 50 ms, so up to"
        " 50 ms of it is its buffer); gaps and missed ticks are the recorder's `recorded` summary, drops the"
        " gateway's `slow_consumer` disconnects; CPU from `/proc/PID/schedstat`. Speed 0: `sampletape.py` writes"
        f" a tape of {s['records']:,} records, the gateway serves it (`tape`, `speed = 0`) to a bare reader in a"
        " process of its own (both streams, frames counted by their length prefix, nothing decoded but the first"
        " and the last); served = records over the gateway's `ts_ns` span, received = over the reader's clock"
        f" ({s['seconds']:.2f} s). Raw stream: one process blasting prebuilt price frames, one counting them by"
        f" their length prefixes. Load average then {res['load']:.1f}.")


def main(argv: list[str] | None = None) -> int:
    """``python -m shared.ops.bench.tapes [--quick]``: the tape rows alone (``deploy/bench --tape`` adds the
    table's head)."""
    args = sys.argv[1:] if argv is None else argv
    plan = QUICK_TAPE if "--quick" in args else TapePlan()
    with tempfile.TemporaryDirectory(prefix="tstape") as d:
        res = measure(plan, Path(d))
    for r in rows(res):
        print("| " + " | ".join(r) + " |")
    print(note(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
