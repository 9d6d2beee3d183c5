"""What ``stack-top`` draws: each panel as a Rich renderable from a ``shared.observe.View``.

Pure functions of the view, so they are tested without a terminal. With
``mask`` set, every figure that moves by itself (prices, pids, times, rates)
is drawn as ``###``: the snapshot tests compare screens, not numbers.
"""

from __future__ import annotations

import time
from typing import Any

from rich.table import Table
from rich.text import Text

from shared.activity import Activity
from shared.observe import BookState, Program, View

STATE_STYLE = {"RUNNING": "bold green", "STARTING": "yellow", "STOPPING": "yellow", "BACKOFF": "bold red",
               "EXITED": "bold red", "FATAL": "bold white on red", "STOPPED": "dim", "UNKNOWN": "magenta"}
SPARK = " ▁▂▃▄▅▆▇█"
MASK = "###"


class Fmt:
    """Formatting, masked or not."""

    def __init__(self, mask: bool = False) -> None:
        self.mask = mask

    def v(self, text: str) -> str:
        """A figure that moves by itself."""
        return MASK if self.mask and text not in ("", "-") else text

    def dur(self, s: float | None) -> str:
        if s is None:
            return "-"
        s = int(s)
        d, s = divmod(s, 86400)
        h, s = divmod(s, 3600)
        m, s = divmod(s, 60)
        return self.v(f"{d}d{h:02d}h" if d else f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}")

    def num(self, x: float | None, fmt: str = "{:.2f}") -> str:
        return "-" if x is None else self.v(fmt.format(x))


def _table(*cols: tuple[str, int, str]) -> Table:
    t = Table(box=None, padding=(0, 1, 0, 0), show_edge=False, expand=False, header_style="bold")
    for name, width, justify in cols:
        t.add_column(name, width=width, no_wrap=True, justify=justify)  # type: ignore[arg-type]
    return t


def programs(rows: list[Program] | str, f: Fmt) -> Table | Text:
    """Programs: state (coloured), pid, uptime, restarts, RSS, CPU, last exit."""
    if isinstance(rows, str):
        return Text(rows, style="bold red")
    t = _table(("program", 16, "left"), ("state", 8, "left"), ("pid", 7, "right"), ("uptime", 8, "right"),
               ("rst", 3, "right"), ("RSS MB", 6, "right"), ("CPU%", 5, "right"), ("last exit", 28, "left"))
    for p in rows:
        t.add_row(p.name, Text(p.state, style=STATE_STYLE.get(p.state, "")), f.v(str(p.pid)) if p.pid else "-",
                  f.dur(p.uptime_s), str(p.restarts),
                  f.num(None if p.rss_bytes is None else p.rss_bytes / 1e6, "{:.1f}"), f.num(p.cpu_pct, "{:.1f}"),
                  f.v(p.last_exit))
    return t


def book(b: BookState, f: Fmt) -> Table | Text:
    """The book: per symbol price, change, ticks/s, age; the writer, generation, fresh or stale."""
    if not b.quotes:
        return Text(b.status, style="bold red")
    style = "bold green" if b.status == "fresh" else "bold red"
    head = Text.assemble((b.status, style), f"  writer {f.v(str(b.writer_pid)) if b.writer_pid else '-'}",
                         f"  gen {b.generation}", f"  hb {f.num(b.heartbeat_age_ms, '{:.0f}')} ms")
    t = _table(("symbol", 7, "left"), ("price", 9, "right"), ("chg", 7, "right"), ("tick/s", 6, "right"),
               ("age ms", 7, "right"))
    t.title, t.title_justify = head, "left"  # type: ignore[assignment]
    for q in b.quotes:
        chg = Text(f.num(q.change, "{:+.2f}"), style="" if f.mask or not q.change else
                   "green" if q.change > 0 else "red")
        t.add_row(q.symbol, f.num(q.price), chg, f.num(q.ticks_per_s, "{:.0f}"), f.num(q.age_ms, "{:.0f}"))
    return t


def sparkline(values: list[float]) -> str:
    """One character per value, scaled to the largest."""
    top = max(values, default=0.0)
    if top <= 0:
        return ""
    return "".join(SPARK[min(len(SPARK) - 1, round(v / top * (len(SPARK) - 1)))] for v in values)


def flow(a: Activity, f: Fmt, width: int = 40) -> Text:
    """Order flow: orders/s, rejects by reason, tick-to-trade p50/p99 over the last minute, a sparkline."""
    p50, p99, spark = a.latency()
    out = Text()
    journaled = sum(c.orders for c in a.clients.values())
    out.append(f"orders/s {f.num(a.orders_per_s(), '{:.1f}')}   journaled {f.v(str(journaled))}\n")
    if p50 is None:
        out.append("tick-to-trade: no order in the last minute\n", style="dim")
    else:
        out.append(f"tick-to-trade 1 min  p50 {f.num(p50, '{:.0f}')} µs  p99 {f.num(p99, '{:.0f}')} µs\n")
        line = sparkline(spark[-max(8, width - 2):])
        out.append(("#" * len(line) if f.mask else line) + "\n", style="cyan")
    recent: dict[str, int] = {}
    for _, reason in a.recent_rejects:
        recent[reason] = recent.get(reason, 0) + 1
    seen: dict[str, int] = {}
    for (_, reason), n in a.rejects.items():
        seen[reason] = seen.get(reason, 0) + n
    if seen:
        out.append("rejects (1 min / seen): " + ", ".join(f"{r} {f.v(str(recent.get(r, 0)))}/{f.v(str(n))}"
                                                           for r, n in sorted(seen.items())), style="yellow")
    else:
        out.append("rejects: none", style="dim")
    return out


def _positions(c: Any) -> str:
    held = [f"{s} {p.qty:+d}" for s, p in sorted(c.positions.items()) if p.qty]
    return " ".join(held) if held else "flat"


def strategies(a: Activity, f: Fmt) -> Table | Text:
    """Per client: position, P&L (realized, unrealized), pending, halted, last order."""
    ids = dict.fromkeys([*a.strategy_ids.values(), *a.clients])
    if not ids:
        return Text("no client has traded yet", style="dim")
    t = _table(("client", 14, "left"), ("position", 26, "left"), ("realized", 9, "right"),
               ("unreal.", 9, "right"), ("pend", 4, "right"), ("halted", 6, "left"), ("last order", 24, "left"))
    for cid in ids:
        c = a.clients.get(cid)
        if c is None:
            t.add_row(cid, "flat", "0.00", "0.00", "0", _halted(cid in a.halted), "-")
            continue
        realized, unreal = c.pnl(a.marks)
        last = c.last
        last_s = (f"{time.strftime('%H:%M:%S', time.localtime(last['recv_ns'] / 1e9))} {last['side']} "
                  f"{last['qty']} {last['symbol']}") if last else "-"
        t.add_row(cid, f.v(_positions(c)) if c.positions else "flat", f.num(realized), f.num(unreal),
                  f.v(str(len(c.pending))), _halted(cid in a.halted), f.v(last_s))
    return t


def _halted(yes: bool) -> Text:
    return Text("HALTED", style="bold red") if yes else Text("no", style="dim")


def clock(ts: Any) -> str:
    """HH:MM:SS of a record's ISO ``ts`` (as written: UTC)."""
    s = str(ts)
    return s[11:19] if len(s) >= 19 else s


def describe(source: str, r: dict[str, Any]) -> tuple[str, str] | None:
    """A notable record as one human line and its style; None to skip it."""
    ev, level = r.get("event"), str(r.get("level", "info"))
    g = r.get
    if ev == "process_state":
        name, to = g("process"), g("to_state")
        how = " unexpectedly" if g("expected") is False else ""
        if to == "RUNNING" and "_down_s" in r:
            how = " unexpectedly" if r.get("_expected") is False else ""
            return f"{name} {r['_left']}{how}, RUNNING again after {r['_down_s']:.1f} s", "green"
        if to in ("STARTING", "STOPPING"):
            return None
        return f"{name} {to}{how}" + (f" (pid {g('pid')})" if g("pid") else ""), \
            "green" if to == "RUNNING" else "bold red"
    if ev == "order_received":
        return str(g("msg") or f"Received Order {g('order_no')}"), ""
    if ev == "order_rejected":
        return f"{source}: rejected {g('order_id')} of {g('client_id')}: {g('reason')} ({g('detail')})", "yellow"
    if ev == "reconnected":
        return f"{source} reconnected to {g('peer')} ({g('stream')}) after {float(g('down_ms') or 0):.0f} ms", "cyan"
    if ev == "disconnected":
        return f"{source} lost {g('peer')} ({g('stream')}): {g('reason')}", "yellow"
    if ev == "reconnect_attempt":
        if (g("attempt") or 0) > 1:
            return None
        return f"{source} cannot reach {g('peer')} ({g('stream')}): {g('error')}; retrying", "yellow"
    if ev == "gap_detected":
        return f"{source} gap: expected seq {g('expected')}, got {g('got')}", "yellow"
    if ev in ("fault_injected", "fault_cleared"):
        what = " ".join(f"{k}={r[k]}" for k in ("program", "pid", "signal", "segment", "mode", "path", "port")
                        if k in r)
        return f"{'FAULT' if ev == 'fault_injected' else 'fault cleared'} {g('fault')} {what}", "bold magenta"
    if ev in ("client_halted", "client_resumed"):
        return f"client {g('client_id')} {'HALTED' if ev == 'client_halted' else 'resumed'}", \
            "bold red" if ev == "client_halted" else "green"
    if ev in ("book_stale", "book_fresh"):
        return f"{source}: book {ev[5:]} (age {g('age_ms')} ms)", "yellow" if ev == "book_stale" else "green"
    if ev == "started":
        return f"{source} started (pid {g('pid')})", "dim"
    if level in ("warning", "error", "critical"):
        skip = {"ts", "level", "event", "daemon", "pid", "exception"}
        rest = " ".join(f"{k}={v}" for k, v in r.items() if k not in skip and not k.startswith("_"))
        return f"{source} {level.upper()} {ev} {rest}".rstrip(), "red" if level != "warning" else "yellow"
    return None


def events(a: Activity, height: int, f: Fmt, width: int = 200) -> Text:
    """The latest ``height`` notable records as human lines (cut at ``width``), newest last."""
    lines: list[tuple[str, str]] = []
    for source, r in sorted(a.events, key=lambda e: str(e[1].get("ts", "")), reverse=True):
        d = describe(source, r)
        if d is not None:
            line = f"{f.v(clock(r.get('ts')))} {d[0]}"
            lines.append((line if len(line) <= width else line[: max(1, width - 1)] + "…", d[1]))
            if len(lines) >= height:
                break
    if not lines:
        return Text("no events yet", style="dim")
    out = Text(no_wrap=True, overflow="ellipsis")
    for i, (line, style) in enumerate(reversed(lines)):
        out.append(line + ("\n" if i < len(lines) - 1 else ""), style=style)
    return out


def header(v: View, config_path: str, f: Fmt) -> Text:
    """The top line: the stack, the time, and the worst news."""
    sup = "no supervisor" if isinstance(v.programs, str) else f"{len(v.programs)} programs"
    now = f.v(time.strftime("%H:%M:%S", time.localtime(v.at)))
    t = Text.assemble(("tradestack ", "bold"), (sup, "bold"), f"  {now}", f"  {f.v(config_path)}")
    t.no_wrap, t.overflow = True, "ellipsis"
    return t
