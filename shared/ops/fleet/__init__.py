"""The simulated hosts (network namespaces joined by veths, each with sshd) that the fleet's playbook deploys
to: ``hosts`` builds and tears them down for ``tests/test_hosts.py`` and ``deploy/bench --hosts``.
"""
