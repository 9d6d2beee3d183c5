"""``stack-top`` (``deploy/top``), the live view: ``app`` the textual app, ``view`` its panels (pure),
``measure`` what it costs and how soon it shows a change (``python -m shared.ops.top.measure``).
"""
