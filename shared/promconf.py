"""A real Prometheus beside the stack (``[prometheus]``): its prometheus.yml rendered from our
config, its command line, and the supervisord program that runs it.

Pure but for ``find_binary`` (PATH), ``check_rules`` (runs promtool) and ``prepare``
(writes the rendered file). ``deploy/prometheus/prometheus.yml`` is ``render(Config())``:
the file to give a Prometheus of your own; ``deploy/prometheus/rules.yml`` (``[prometheus]
rules``) holds the alerts and recording rules both use.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from shared import config

PROGRAM = "prometheus"  # its supervisord program, run by daemons/prometheus.py
JOB = "tradestack"  # the scrape job of every host's metrics program
RULES = config.ROOT / "deploy" / "prometheus" / "rules.yml"
_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def _addr(host: str, port: int) -> str:
    """``host:port`` to connect to (a listener on every address is reached on loopback)."""
    host = _WILDCARD.get(host, host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def targets(cfg: config.Config) -> list[str]:
    """What it scrapes: this host's metrics program, then ``[prometheus] targets`` (other hosts')."""
    return list(dict.fromkeys([_addr(cfg.metrics.host, cfg.metrics.port), *cfg.prometheus.targets]))


def url(cfg: config.Config) -> str:
    """Where its web UI and HTTP API answer."""
    return f"http://{_addr(cfg.prometheus.host, cfg.prometheus.port)}"


def rules_path(cfg: config.Config) -> Path:
    """The rules file ``[prometheus] rules`` names (a relative path: from the repository root)."""
    return cfg.resolve(cfg.prometheus.rules)


def render(cfg: config.Config, rules: str | Path | None = None) -> str:
    """prometheus.yml for ``cfg``: one job scraping every target, evaluating ``rules`` (default:
    ``rules_path(cfg)``; a relative path is taken from the rendered file's directory)."""
    rules = rules_path(cfg) if rules is None else rules
    p = cfg.prometheus
    lines = [
        "# Prometheus for the stack, rendered from its config by shared/promconf.py: this host's",
        "# metrics program ([metrics]) and [prometheus] targets (for a fleet: every host's), with",
        "# the rules of deploy/prometheus/rules.yml. The alerts' runbook: README, Prometheus > Alerts.",
        "global:",
        f"  scrape_interval: {p.scrape_interval}",
        f"  evaluation_interval: {p.evaluation_interval}",
        "rule_files:",
        f"  - {json.dumps(str(rules))}",
        "scrape_configs:",
        f"  - job_name: {JOB}",
        "    static_configs:",
        "      - targets:",
        *(f"          - {json.dumps(t)}" for t in targets(cfg)),
    ]
    return "\n".join(lines) + "\n"


def data_dir(cfg: config.Config) -> Path:
    """Where its rendered prometheus.yml lives, and its TSDB under ``data/``."""
    return cfg.resolve(cfg.prometheus.data_dir)


def find_binary(cfg: config.Config) -> str:
    """The prometheus executable ``[prometheus] binary`` names; a ConfigError (one line) if none."""
    b = cfg.prometheus.binary
    found = shutil.which(b)
    if found is None:
        raise config.ConfigError(f"prometheus.binary: {b!r} not found{' on PATH' if '/' not in b else ''}; "
                                 "install it (apt-get install prometheus; deploy/install does) "
                                 "or set [prometheus] enabled = false")
    return found


def find_promtool(binary: str) -> str:
    """promtool beside the prometheus ``binary`` (as Debian's package puts it), else on PATH."""
    found = shutil.which("promtool", path=os.pathsep.join([os.path.dirname(binary), os.environ.get("PATH", "")]))
    if found is None:
        raise config.ConfigError("prometheus.rules: promtool, which checks them, not found beside "
                                 f"{binary} nor on PATH; install it (apt-get install prometheus)")
    return found


def check_rules(cfg: config.Config, promtool: str) -> None:
    """``promtool check rules`` on the rules file; a ConfigError (one line naming it and the
    first error) if it is missing or does not parse."""
    path = rules_path(cfg)
    if not path.is_file():
        raise config.ConfigError(f"prometheus.rules: {path} not found")
    try:
        r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise config.ConfigError(f"prometheus.rules: cannot run {promtool}: {e}") from None
    if r.returncode != 0:
        said = [ln.strip() for ln in (r.stderr + r.stdout).splitlines()
                if ln.strip() and not ln.strip().startswith(("Checking ", "FAILED:"))]
        why = said[0].removeprefix(f"{path}: ") if said else f"promtool exited {r.returncode}"
        raise config.ConfigError(f"prometheus.rules: {path} does not parse: {why}")


def check(cfg: config.Config) -> None:
    """What ``deploy/up`` checks before it starts anything, when enabled: the binary, and the
    rules file with promtool (Prometheus would otherwise start and exit, and restart, on it)."""
    if cfg.prometheus.enabled:
        check_rules(cfg, find_promtool(find_binary(cfg)))


def command(cfg: config.Config, binary: str) -> list[str]:
    """Its command line: the rendered config, the TSDB and the listen address from ``cfg``."""
    p, d = cfg.prometheus, data_dir(cfg)
    return [binary, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
            f"--storage.tsdb.retention.time={p.retention}", f"--web.listen-address={_addr(p.host, p.port)}",
            "--log.format=json"]


def prepare(cfg: config.Config) -> list[str]:
    """Write the rendered prometheus.yml under ``data_dir``; the command line to exec."""
    binary = find_binary(cfg)
    d = data_dir(cfg)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "prometheus.yml"
    text = render(cfg)
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return command(cfg, binary)
