"""What ``stack-top`` draws: each panel as a Rich renderable from a ``shared.observe.View``.

Pure functions of the view, so they are tested without a terminal. With
``mask`` set, every figure that moves by itself (prices, pids, times, rates)
is drawn as ``###``: the snapshot tests compare screens, not numbers.
"""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text

from shared.activity import Activity
from shared.observe import BookState, Program, View
from shared.ops.top.alerts import Alerts

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


Col = tuple[str, int, str]  # header, width, "left" or "right"


def _cell(text: str, width: int, justify: str) -> str:
    """One cell: cut to its width (an ellipsis marks the cut), padded to it."""
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.rjust(width) if justify == "right" else text.ljust(width)


def _grid(cols: tuple[Col, ...], rows: list[tuple[str | Text, ...]], title: Text | None = None) -> Text:
    """Fixed-width columns as one Text: a bold header, then the rows, a cell's style kept. (A Rich
    Table draws the same some twenty times slower, and the panels redraw three times a second.)"""
    out = Text(no_wrap=True, overflow="ellipsis")
    if title is not None:
        out.append_text(title)
        out.append("\n")
    out.append(" ".join(_cell(name, width, justify) for name, width, justify in cols), style="bold")
    for row in rows:
        out.append("\n")
        for i, ((_, width, justify), cell) in enumerate(zip(cols, row, strict=True)):
            if i:
                out.append(" ")
            if isinstance(cell, Text):
                out.append(_cell(cell.plain, width, justify), style=cell.style)
            else:
                out.append(_cell(cell, width, justify))
    return out


PROGRAM_COLS: tuple[Col, ...] = (
    ("program", 16, "left"), ("state", 8, "left"), ("pid", 7, "right"), ("uptime", 8, "right"), ("rst", 3, "right"),
    ("RSS MB", 6, "right"), ("CPU%", 5, "right"), ("last exit", 28, "left"))


def programs(rows: list[Program] | str, f: Fmt) -> Text:
    """Programs: state (coloured), pid, uptime, restarts, RSS, CPU, last exit."""
    if isinstance(rows, str):
        return Text(rows, style="bold red")
    return _grid(PROGRAM_COLS, [(
        p.name, Text(p.state, style=STATE_STYLE.get(p.state, "")), f.v(str(p.pid)) if p.pid else "-",
        f.dur(p.uptime_s), str(p.restarts), f.num(None if p.rss_bytes is None else p.rss_bytes / 1e6, "{:.1f}"),
        f.num(p.cpu_pct, "{:.1f}"), f.v(p.last_exit)) for p in rows])


def book(b: BookState, f: Fmt) -> Text:
    """The book: per symbol price, change, ticks/s, age; the writer, generation, fresh or stale."""
    if not b.quotes:
        return Text(b.status, style="bold red")
    style = "bold green" if b.status == "fresh" else "bold red"
    head = Text.assemble((b.status, style), f"  writer {f.v(str(b.writer_pid)) if b.writer_pid else '-'}",
                         f"  gen {b.generation}", f"  hb {f.num(b.heartbeat_age_ms, '{:.0f}')} ms")
    rows: list[tuple[str | Text, ...]] = []
    for q in b.quotes:
        chg = Text(f.num(q.change, "{:+.2f}"), style="" if f.mask or not q.change else
                   "green" if q.change > 0 else "red")
        rows.append((q.symbol, f.num(q.price), chg, f.num(q.ticks_per_s, "{:.0f}"), f.num(q.age_ms, "{:.0f}")))
    return _grid((("symbol", 7, "left"), ("price", 9, "right"), ("chg", 7, "right"), ("tick/s", 6, "right"),
                  ("age ms", 7, "right")), rows, title=head)


def sparkline(values: list[float]) -> str:
    """One character per value, scaled to the largest."""
    top = max(values, default=0.0)
    if top <= 0:
        return ""
    return "".join(SPARK[min(len(SPARK) - 1, round(v / top * (len(SPARK) - 1)))] for v in values)


def flow(a: Activity, f: Fmt, width: int = 40) -> Text:
    """Order flow: orders/s, fills/s, open orders, fill ratio, order-to-fill p50/p99, rejects by reason,
    tick-to-trade p50/p99 over the last minute, a sparkline."""
    p50, p99, spark = a.latency()
    out = Text()
    cs = a.clients.values()
    journaled = sum(c.orders for c in cs)
    out.append(f"orders/s {f.num(a.orders_per_s(), '{:.1f}')}   journaled {f.v(str(journaled))}\n")
    ended = sum(c.ended_qty for c in cs)
    ratio = f.num(sum(c.ended_filled for c in cs) / ended * 100, "{:.0f}") + " %" if ended else "-"
    out.append(f"fills/s {f.num(a.fills_per_s(), '{:.1f}')}   fills {f.v(str(sum(c.fills for c in cs)))}   "
               f"open {f.v(str(sum(len(c.open) for c in cs)))}   filled {ratio}\n")
    f50, f99 = a.fill_latency()
    if f50 is not None:
        out.append(f"order-to-fill 1 min  p50 {f.num(f50, '{:.0f}')} µs  p99 {f.num(f99, '{:.0f}')} µs\n")
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


def strategies(a: Activity, f: Fmt) -> Text:
    """Per client: position and P&L (realized, unrealized) from fills, fills, open orders, pending,
    halted, last fill."""
    ids = dict.fromkeys([*a.strategy_ids.values(), *a.clients])
    if not ids:
        return Text("no client has traded yet", style="dim")
    rows: list[tuple[str | Text, ...]] = []
    for cid in ids:
        c = a.clients.get(cid)
        if c is None:
            rows.append((cid, "flat", "0.00", "0.00", "0", "0", "0", _halted(cid in a.halted), "-"))
            continue
        realized, unreal = c.pnl(a.marks)
        last = c.last_fill
        last_s = (f"{time.strftime('%H:%M:%S', time.localtime(last['recv_ns'] / 1e9))} "
                  f"{last['last_qty'] if last['side'] == 'BUY' else -last['last_qty']:+d} {last['symbol']}"
                  ) if last else "-"
        rows.append((cid, f.v(_positions(c)) if c.positions else "flat", f.num(realized), f.num(unreal),
                     f.v(str(c.fills)), f.v(str(len(c.open))), f.v(str(len(c.pending))), _halted(cid in a.halted),
                     f.v(last_s)))
    return _grid((("client", 12, "left"), ("position", 22, "left"), ("realized", 9, "right"), ("unreal.", 9, "right"),
                  ("fills", 5, "right"), ("open", 4, "right"), ("pend", 4, "right"), ("halted", 6, "left"),
                  ("last fill", 20, "left")), rows)


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


def alerts(a: Alerts, f: Fmt) -> Text:
    """Prometheus's active alerts, firing first, one a line; or why it cannot say."""
    if a.status:
        return Text(a.status, style="bold yellow")
    if not a.alerts:
        return Text("none firing", style="green")
    out = Text(no_wrap=True, overflow="ellipsis")
    for i, x in enumerate(a.alerts):
        style = "bold red" if x.state == "firing" else "yellow"
        out.append(f"{x.state.upper():<7} {x.name:<32} {f.v(x.about) if x.about else '-':<14} {x.summary}"
                   + ("\n" if i < len(a.alerts) - 1 else ""), style=style)
    return out


def header(v: View, config_path: str, f: Fmt) -> Text:
    """The top line: the stack, the time, and the worst news."""
    sup = "no supervisor" if isinstance(v.programs, str) else f"{len(v.programs)} programs"
    now = f.v(time.strftime("%H:%M:%S", time.localtime(v.at)))
    t = Text.assemble(("tradestack ", "bold"), (sup, "bold"), f"  {now}", f"  {f.v(config_path)}")
    t.no_wrap, t.overflow = True, "ellipsis"
    return t
