"""The matching engine alone, one core: events/s and p50/p99 per event (from timed batches), with ``resting``
orders per symbol. Seeded events, drawn before the clock starts: passive orders and their cancels (the bulk,
so the book stays near ``resting``), ioc orders that take the quote or sweep into the book, ticks."""

from __future__ import annotations

import random
import sys
import time
from typing import Any

from shared.matching import Engine

BATCH = 100  # events per timed batch: perf_counter_ns around each event would cost as much as the event


def _events(rng: random.Random, n: int, resting: int, syms: list[str]) -> list[tuple[str, tuple[Any, ...]]]:
    """``resting`` passive orders per symbol away from the quote (ticks stay within 100 +- 0.1), then ``n`` events."""
    live: dict[str, list[str]] = {s: [] for s in syms}
    out: list[tuple[str, tuple[Any, ...]]] = [("tick", (s, 100.0)) for s in syms]
    for i in range(len(syms) * resting + n):
        sym = syms[i % len(syms)]
        r = rng.random() if i >= len(syms) * resting else 0.0
        if r < 0.425 or not live[sym]:  # a passive order, 0.2 to 1.0 away from 100
            buy = rng.random() < 0.5
            price = round(100 + (-1 if buy else 1) * rng.uniform(0.2, 1.0), 2)
            out.append(("order", (i, "c", f"o{i}", sym, "BUY" if buy else "SELL", rng.randint(1, 50), price)))
            live[sym].append(f"o{i}")
        elif r < 0.85:  # cancel a random earlier one (it may have been filled meanwhile: then None)
            ids = live[sym]
            j = rng.randrange(len(ids))
            ids[j], ids[-1] = ids[-1], ids[j]
            out.append(("cancel", ("c", ids.pop())))
        elif r < 0.95:  # ioc: half take only the quote, half sweep into the resting orders
            buy, far = rng.random() < 0.5, rng.random() < 0.5
            price = 100 + (1 if buy else -1) * (0.5 if far else 0.15)
            out.append(("order", (i, "t", f"t{i}", sym, "BUY" if buy else "SELL", rng.randint(1, 120), price,
                                  "limit", "ioc")))
        else:
            out.append(("tick", (sym, round(100 + rng.uniform(-0.1, 0.1), 2))))
    return out


def run(n_events: int = 200_000, resting: int = 1000, symbols: int = 4) -> dict[str, float]:
    """Time ``n_events`` events after a warm-up that rests ``resting`` orders per symbol; a dict of figures."""
    events = _events(random.Random(1), n_events, resting, [f"S{i}" for i in range(symbols)])
    engine = Engine(spread_bps=2.0, depth=100)
    warm = symbols * (resting + 1)
    for kind, args in events[:warm]:
        getattr(engine, kind)(*args)
    calls = [(getattr(engine, kind), args) for kind, args in events[warm:]]
    per_event: list[float] = []
    execs = total_ns = 0
    cpu0 = time.thread_time_ns()  # beside the wall clock: on a busy machine the wall clock counts others' turns
    for i in range(0, len(calls), BATCH):
        batch = calls[i:i + BATCH]
        t0 = time.perf_counter_ns()
        for fn, args in batch:
            execs += len(fn(*args) or ())
        total_ns += (ns := time.perf_counter_ns() - t0)
        per_event.append(ns / len(batch) / 1000)
    cpu_ns = time.thread_time_ns() - cpu0
    per_event.sort()
    return {"events": len(calls), "events_per_s": len(calls) / total_ns * 1e9,
            "events_per_cpu_s": len(calls) / cpu_ns * 1e9, "p50_us": per_event[len(per_event) // 2],
            "p99_us": per_event[int(len(per_event) * 0.99)], "execs": execs, "symbols": symbols,
            "resting_start": resting, "resting_end": len(engine.open_orders()) / symbols}


def main() -> None:
    """``python -m shared.ops.bench.engine [EVENTS [RESTING [SYMBOLS]]]``: one line of figures."""
    r = run(*(int(a) for a in sys.argv[1:4]))
    print(f"matching engine: {r['events']:.0f} events, {r['symbols']:.0f} symbols x {r['resting_start']:.0f} resting "
          f"({r['resting_end']:.0f} at the end): {r['events_per_s']:,.0f} events/s "
          f"({r['events_per_cpu_s']:,.0f} per CPU second), p50 {r['p50_us']:.2f} us, "
          f"p99 {r['p99_us']:.2f} us per event (batches of {BATCH}), {r['execs']:.0f} execs")


if __name__ == "__main__":
    main()
