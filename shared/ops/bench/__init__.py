"""The bench (``deploy/bench``): each figure beside a reference measured in the same run.

``run`` drives it (``python -m shared.ops.bench``); ``plan`` holds what every part shares (the plan, the rates,
the targets, ``say``); ``report`` renders the table; ``loopback``, ``fanout`` and ``probes`` are the bare
references and observers; ``fourhop`` sets an order's life (decision → new, → fill) beside a bare four-hop
chain; ``orderentry`` is the outside order-entry client; ``recovery``, ``journal`` and
``scrape`` are its other modes; ``tapes`` runs the gateway and ``stack-record`` alone (``--tape``);
``ab`` (with ``abagent`` and ``abreport``) is ``--against REV``; ``omprofile`` puts py-spy on the
ordermanager; ``hosts`` runs it across simulated hosts (``deploy/bench --hosts``); ``iomodels`` is the
I/O-model study.
"""
