"""Breaking the stack on purpose (``deploy/fault``, ``deploy/soak``) and saying whether it healed.

``faults`` holds the fault actions and the soak's menu; ``proxy`` the fault proxy on a link and ``proxyproc`` its
process; ``disk`` the full-disk faults; ``faultcmd`` the command line; ``soak`` the chaos soak; ``invariants``
what "nothing lost, nothing doubled, healed" means, checked from the logs and the journal.
"""
