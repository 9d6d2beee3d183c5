"""stack-top (``deploy/top``): the live view of a running stack, on Textual.

Panels: programs, the book, order flow, strategies, events (see
``shared.ops.top.view``); the data comes from ``shared.observe.Watcher``,
polled a few times a second. Keys: ``r`` restart a program, ``h``
halt/resume a client, ``f`` inject a fault from the fault tool's menu (each
asks to confirm; faults are logged to ``logs/faults.log`` as the fault tool
logs them), ``?`` help, ``q`` quit.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.timer import Timer
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option

from shared import config, promconf
from shared.observe import DEFAULT_SERVERURL, Supervisor, View, Watcher
from shared.ops import haltcmd
from shared.ops.chaos import faults
from shared.ops.top import view
from shared.ops.top.alerts import AlertWatch

REFRESH_S = 0.33  # three times a second: a change shows within 1 s (moving figures: once a second)
HELP = """\
stack-top: the live view of the stack

programs    supervisord's programs: state, pid, uptime, restarts (under this
            supervisord), memory, CPU % of a core over the last 4 s, last exit
book        the segment: per symbol the latest price, its change since this
            view started, ticks/s, the tick's age; the writer, its generation,
            fresh or stale (writer heartbeat older than book.stale_ms)
order flow  journaled orders/s (10 s); fills/s, fills, open orders, the
            share of ended orders' quantity that filled, order-to-fill p50/p99
            (1 min); tick-to-trade p50/p99 over the last minute and one p50 a
            second as a sparkline, rejects by reason
strategies  per client, from fills: position, P&L realized and unrealized
            (marks: the book); fills, open orders, orders sent but not yet
            acked, halted, last fill
events      reconnects, gaps, faults, restarts, warnings, errors, orders
alerts      with [prometheus] enabled: its active alerts (firing, pending),
            asked every few seconds; or that it does not answer

keys   r restart a program   h halt / resume a client   f inject a fault
       ? this help           q quit          (Escape closes a dialog)
"""


class Target:
    """What the fault menu needs of a stack: its config, segment, logs and supervisord."""

    def __init__(self, cfg: config.Config, watcher: Watcher) -> None:
        self.cfg, self.watcher = cfg, watcher
        self.segment = cfg.book.segment
        self.logs = watcher.logs_dir

    @property
    def rpc(self) -> Any:
        """A connection of its own: actions run in a thread beside the polls."""
        return Supervisor(self.watcher.supervisor.serverurl).proxy.supervisor


class Choose(ModalScreen[str | None]):
    """Pick one item of a list (Enter), or none (Escape)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "cancel")]

    def __init__(self, title: str, items: list[tuple[str, str]]) -> None:
        super().__init__()
        self.title_text, self.items = title, items

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.title_text, classes="dialog-title")
            yield OptionList(*[Option(label, id=key) for key, label in self.items])

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)


class Confirm(ModalScreen[bool]):
    """Ask before doing it: y does it, anything else does not."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("y", "dismiss(True)", "yes"),
                                             Binding("n,escape", "dismiss(False)", "no")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(f"{self.question}\n\n[b]y[/b] yes    [b]n[/b] / Escape no")


class Help(ModalScreen[None]):
    """The panels and the keys."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "dismiss(None)", "close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(HELP)


class Top(App[None]):
    """The live view."""

    TITLE = "stack-top"
    CSS = """
    Screen { layout: vertical; }
    .title { background: $primary-darken-2; color: $text; text-style: bold; height: 1; }
    #programs, #strategies, #alerts { height: auto; }
    #middle { height: auto; }
    #book-box { width: 1fr; min-width: 40; height: auto; }
    #flow-box { width: 1fr; height: auto; }
    #events { height: 1fr; }
    #status, #header { height: 1; }
    Choose, Confirm, Help { align: center middle; }
    #dialog { width: auto; max-width: 90%; height: auto; max-height: 90%; border: round $accent;
              background: $surface; padding: 0 1; }
    #dialog OptionList { height: auto; max-height: 18; width: 40; }
    .dialog-title { text-style: bold; }
    #dialog > Static { width: auto; max-width: 90; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "restart", "restart"), Binding("h", "halt", "halt/resume"), Binding("f", "fault", "fault"),
        Binding("question_mark", "help", "help"), Binding("q", "quit", "quit"),
    ]

    def __init__(self, cfg: config.Config, serverurl: str = DEFAULT_SERVERURL, mask: bool = False,
                 refresh_s: float = REFRESH_S, backlog: int = 1 << 16) -> None:
        super().__init__()
        self.cfg, self.serverurl, self.refresh_s = cfg, serverurl, refresh_s
        self.fmt = view.Fmt(mask)
        self.watcher = Watcher(cfg, serverurl, backlog=backlog)
        self.target = Target(cfg, self.watcher)
        self.alerts = AlertWatch(promconf.url(cfg)) if cfg.prometheus.enabled else None
        self.view: View | None = None
        self.message = ""
        self._drawn: dict[str, Any] = {}
        self._lines: dict[str, int] = {}
        self.timer: Timer | None = None
        faults.configure_log(open(os.devnull, "wb"))  # noqa: SIM115 - the screen is ours; faults go to faults.log

    def compose(self) -> ComposeResult:
        yield Static(id="header")
        yield Static("programs", classes="title")
        yield Static(id="programs")
        with Horizontal(id="middle"):
            with Vertical(id="book-box"):
                yield Static("book", classes="title")
                yield Static(id="book")
            with Vertical(id="flow-box"):
                yield Static("order flow", classes="title")
                yield Static(id="flow")
        yield Static("strategies", classes="title")
        yield Static(id="strategies")
        if self.alerts is not None:
            yield Static("alerts (Prometheus)", classes="title")
            yield Static(id="alerts")
        yield Static("events", classes="title")
        yield Static(id="events")
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_view()
        self.timer = self.set_interval(self.refresh_s, self.refresh_view)

    def on_unmount(self) -> None:
        if self.timer is not None:
            self.timer.stop()
        self.watcher.close()

    def _draw(self, wid: str, renderable: Any, key: Any) -> None:
        """Update a panel only when what it shows changed, and lay the screen out again only
        when its number of lines changed: most of the cost of a refresh is the layout."""
        if self._drawn.get(wid) == key:
            return
        self._drawn[wid] = key
        lines = _lines(renderable)
        self.query_one(f"#{wid}", Static).update(renderable, layout=self._lines.get(wid) != lines)
        self._lines[wid] = lines

    def refresh_view(self) -> None:
        """Poll the stack and redraw the panels that changed."""
        try:
            self._refresh_view()
        except NoMatches:  # a refresh that ran as the app closed: its panels are gone
            pass

    def _refresh_view(self) -> None:
        v = self.view = self.watcher.poll()
        f = self.fmt
        self._draw("header", view.header(v, self.cfg.path, f), None if f.mask else int(v.at))
        progs = view.programs(v.programs, f)
        self._draw("programs", progs, progs.plain)
        bk = view.book(v.book, f)
        self._draw("book", bk, _figures_each_second(bk.plain, v.at))
        width = self.query_one("#flow", Static).size.width or 40
        fl = view.flow(v.activity, f, width)
        self._draw("flow", fl, _figures_each_second(fl.plain, v.at))
        st = view.strategies(v.activity, f)
        self._draw("strategies", st, _figures_each_second(st.plain, v.at))
        if self.alerts is not None:
            al = view.alerts(self.alerts.poll(), f)
            self._draw("alerts", al, al.plain)
        size = self.query_one("#events", Static).size
        ev = view.events(v.activity, max(1, size.height), f, size.width or 200)
        self._draw("events", ev, (ev.plain, size))
        self._draw("status", self.message, self.message)

    def say(self, message: str) -> None:
        """One line at the bottom: what the last action did."""
        self.message = message
        self._draw("status", message, message)

    # --- keys -----------------------------------------------------------------

    def _ask(self, question: str, then: Callable[[], str]) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.say(f"{question} ...")
                self.run_worker(lambda: self.call_from_thread(self.say, _safe(then)), thread=True)
            else:
                self.say("cancelled")
        self.push_screen(Confirm(question), answered)

    def _programs(self) -> list[str]:
        v = self.view
        return [] if v is None or isinstance(v.programs, str) else [p.name for p in v.programs]

    def action_restart(self) -> None:
        names = self._programs()
        if not names:
            self.say("no supervisor: nothing to restart")
            return
        states = {p.name: p.state for p in self.view.programs} if self.view and not isinstance(
            self.view.programs, str) else {}

        def chosen(name: str | None) -> None:
            if name:
                self._ask(f"Restart {name}?", lambda: self._restart(name))
        self.push_screen(Choose("Restart which program?", [(n, f"{n}  {states.get(n, '')}") for n in names]), chosen)

    def _restart(self, name: str) -> str:
        sup = Supervisor(self.serverurl)
        faults.emit("restart_requested", self.target, level="info", program=name, by="stack-top")
        try:
            sup.call("stopProcess", name, True)
        except xmlrpc.client.Fault as e:
            if "NOT_RUNNING" not in e.faultString:
                raise
        sup.call("startProcess", name, True)
        return f"restarted {name}"

    def action_halt(self) -> None:
        v = self.view
        if v is None:
            return
        a = v.activity
        ids = list(dict.fromkeys([*a.strategy_ids.values(), *a.clients]))
        if not ids:
            self.say("no client known yet")
            return

        def chosen(cid: str | None) -> None:
            if cid:
                stop = cid not in a.halted
                self._ask(f"{'Halt' if stop else 'Resume'} client {cid}?", lambda: self._halt(cid, stop))
        self.push_screen(Choose("Halt or resume which client?",
                                [(c, f"{c}  {'HALTED: resume' if c in a.halted else 'trading: halt'}") for c in ids]),
                         chosen)

    def _halt(self, cid: str, stop: bool) -> str:
        _, text = haltcmd.change(str(self.cfg.resolve(self.cfg.ordermanager.journal)), cid, stop, timeout=5.0)
        return text

    def action_fault(self) -> None:
        def chosen(name: str | None) -> None:
            if name:
                self._ask(f"Inject fault {name}?", lambda: self._fault(name))
        self.push_screen(Choose("Inject which fault?", [(n, n) for n in faults.MENU]), chosen)

    def _fault(self, name: str) -> str:
        result = faults.MENU[name](self.target)
        return f"injected {result.get('fault', name)}"

    def action_help(self) -> None:
        self.push_screen(Help())


_DIGITS = re.compile(r"\d")


def _figures_each_second(text: str, at: float) -> tuple[str, int]:
    """A panel's key that changes with its words at once (fresh to stale, a halt, a new row) but
    with its figures alone (prices, ages, P&L) at most once a second: redrawing the book and the
    strategies three times a second for their moving figures was most of stack-top's CPU."""
    return _DIGITS.sub("#", text), int(at)


def _lines(renderable: Any) -> int:
    """How many lines a panel takes."""
    return str(renderable).count("\n") + 1


def _safe(action: Callable[[], str]) -> str:
    try:
        return action()
    except faults.FaultError as e:
        return f"not done: {e}"
    except xmlrpc.client.Fault as e:
        return f"not done: {e.faultString}"
    except OSError as e:
        return f"not done: {e.strerror or e}"


def main(argv: list[str] | None = None) -> int:
    """``stack-top [--serverurl URL] [--refresh S]``: the live view of the stack in force."""
    ap = argparse.ArgumentParser(prog="stack-top", description=__doc__.split("\n\n")[0])
    ap.add_argument("--serverurl", help="supervisord's control socket (default: from deploy/supervisord.conf)")
    ap.add_argument("--conf", type=Path, default=config.ROOT / "deploy" / "supervisord.conf",
                    help="the supervisord.conf whose serverurl to use")
    ap.add_argument("--refresh", type=float, default=REFRESH_S, help=f"seconds between refreshes ({REFRESH_S})")
    args = ap.parse_args(argv)
    if not os.environ.get("STACK_CONFIG") and Path("/tmp/tradestack/config").exists():
        os.environ["STACK_CONFIG"] = Path("/tmp/tradestack/config").read_text().strip()  # the one deploy/up used
    try:
        cfg = config.load()
    except config.ConfigError as e:
        print(f"stack-top: bad config: {e}", file=sys.stderr)
        return 2
    serverurl = args.serverurl or faults.serverurl_of(args.conf)
    Top(cfg, serverurl, refresh_s=max(0.05, args.refresh)).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
