"""``[prometheus]``: its config errors (one line naming the key), the binary check deploy/up
makes, the rendered prometheus.yml and command line, and the supervisord program."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared import config, promconf
from shared.config import ConfigError
from shared.ops import ctl

ROOT = config.ROOT


def test_defaults_off() -> None:
    cfg = config.load(ROOT / "deploy" / "stack.toml")
    p = cfg.prometheus
    assert (p.enabled, p.host, p.port, p.binary, p.retention, p.data_dir) == \
        (False, "127.0.0.1", 9090, "prometheus", "15d", "logs/prometheus")
    assert not cfg.runs("prometheus")
    assert config.parse({"prometheus": {"enabled": True}}).runs("prometheus")


BAD = [
    ("unknown_key", {"retention_days": 3}, "prometheus.retention_days: unknown key"),
    ("port_range", {"port": 0}, "prometheus.port"),
    ("enabled_not_bool", {"enabled": "yes"}, "prometheus.enabled"),
    ("retention_unit", {"retention": "15 days"}, "prometheus.retention"),
    ("retention_zero", {"retention": "0d"}, "prometheus.retention"),
    ("interval_number", {"scrape_interval": 5}, "prometheus.scrape_interval"),
    ("interval_order", {"evaluation_interval": "5s1m"}, "prometheus.evaluation_interval"),
    ("target_no_port", {"targets": ["10.0.0.2"]}, "prometheus.targets"),
    ("targets_not_list", {"targets": "10.0.0.2:9108"}, "prometheus.targets"),
    ("empty_binary", {"binary": ""}, "prometheus.binary"),
    ("metrics_port", {"port": 9108}, "prometheus.port: 9108 is also metrics.port"),
]


@pytest.mark.parametrize(("table", "names"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_prometheus_config_names_the_key(table: dict[str, object], names: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.parse({"prometheus": table})
    assert names in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("value", ["15d", "1y2w", "90m", "500ms", "1h30m", "10s"])
def test_prometheus_durations(value: str) -> None:
    assert config.parse({"prometheus": {"retention": value}}).prometheus.retention == value


def test_missing_binary_is_one_line_naming_it() -> None:
    cfg = config.parse({"prometheus": {"enabled": True, "binary": "no-such-prometheus"}})
    with pytest.raises(ConfigError) as e:
        promconf.check(cfg)
    msg = str(e.value)
    assert msg.startswith("prometheus.binary: 'no-such-prometheus' not found on PATH") and "\n" not in msg
    promconf.check(config.parse({"prometheus": {"binary": "no-such-prometheus"}}))  # off: not looked for


def test_the_program_without_its_binary_exits_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "stack.toml").write_text('[prometheus]\nenabled = true\nbinary = "/nonexistent/prometheus"\n'
                                         f'data_dir = "{tmp_path / "prom"}"\n')
    r = subprocess.run([sys.executable, str(ROOT / "daemons" / "prometheus.py")], cwd=tmp_path,
                       env={**os.environ, "STACK_CONFIG": "stack.toml"}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == ("prometheus: cannot start: prometheus.binary: '/nonexistent/prometheus' not found; "
                                "install it (apt-get install prometheus; deploy/install does) "
                                "or set [prometheus] enabled = false")


def test_render_and_command(tmp_path: Path) -> None:
    cfg = config.parse({"metrics": {"host": "::", "port": 9200},
                        "prometheus": {"port": 9300, "data_dir": str(tmp_path), "retention": "2d",
                                       "scrape_interval": "1s", "targets": ["[::1]:9200", "h2:9108"]}})
    text = promconf.render(cfg)
    assert "  scrape_interval: 1s\n  evaluation_interval: 5s\n" in text
    assert '          - "[::1]:9200"\n          - "h2:9108"\n' in text  # this host's once, then the others
    assert promconf.command(cfg, "/usr/bin/prometheus") == [
        "/usr/bin/prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}", "--storage.tsdb.retention.time=2d",
        "--web.listen-address=127.0.0.1:9300", "--log.format=json"]


def test_prepare_writes_the_rendered_file(tmp_path: Path) -> None:
    cfg = config.parse({"prometheus": {"enabled": True, "binary": sys.executable, "data_dir": str(tmp_path / "p")}})
    argv = promconf.prepare(cfg)
    assert argv[0] == sys.executable
    assert (tmp_path / "p" / "prometheus.yml").read_text() == promconf.render(cfg)


def test_program_is_the_metrics_section_renamed() -> None:
    text = (ROOT / "deploy" / "supervisord.conf").read_text()
    section = ctl.copy_program(text, "prometheus", "Prometheus beside the stack.")
    cp = configparser.RawConfigParser()
    cp.read_string(text.split("[include]")[0] + section)
    prog, metrics = cp["program:prometheus"], cp["program:metrics"]
    assert prog["command"] == "%(here)s/../.venv/bin/python -u %(here)s/../daemons/prometheus.py"
    assert {k: v for k, v in prog.items() if k != "command"} == {k: v for k, v in metrics.items() if k != "command"}


def _prepare(tmp_path: Path, prometheus: str) -> subprocess.CompletedProcess[str]:
    """``python -m shared.ops.ctl prepare`` (deploy/up's first step, under ``set -e``) on a config
    whose ``[prometheus]`` is enabled with these extra lines."""
    conf = tmp_path / "stack.toml"
    conf.write_text(f'[prometheus]\nenabled = true\ndata_dir = "{tmp_path / "prom"}"\n{prometheus}')
    return subprocess.run([sys.executable, "-m", "shared.ops.ctl", "prepare"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "STACK_CONFIG": str(conf)})


def test_deploy_up_stops_on_a_missing_binary_with_one_line(tmp_path: Path) -> None:
    r = _prepare(tmp_path, 'binary = "/nonexistent/prometheus"\n')
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("bad config: prometheus.binary: '/nonexistent/prometheus' not found; install it "
                        "(apt-get install prometheus; deploy/install does) or set [prometheus] enabled = false\n")
    assert not (tmp_path / "prom").exists()


def test_deploy_up_stops_on_rules_that_do_not_parse_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: A\n        expr: up ==\n")
    r = _prepare(tmp_path, f'rules = "{bad}"\n')
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(f"bad config: prometheus.rules: {bad} does not parse: ") and r.stderr.count("\n") == 1
    assert "could not parse expression" in r.stderr
    r = _prepare(tmp_path, f'rules = "{tmp_path / "none.yml"}"\n')
    assert (r.returncode, r.stderr) == (2, f"bad config: prometheus.rules: {tmp_path / 'none.yml'} not found\n")


def test_shipped_rules_pass_the_check() -> None:
    cfg = config.parse({"prometheus": {"enabled": True}})
    promconf.check(cfg)
    assert promconf.rules_path(cfg) == promconf.RULES


def test_enabled_it_is_one_more_program_of_this_host() -> None:
    from shared.ops import ctl

    text = (ROOT / "deploy" / "supervisord.conf").read_text()
    on = config.parse({"prometheus": {"enabled": True}})
    assert "[program:prometheus]" in ctl.strategy_programs(text, on)
    assert "[program:prometheus]" not in ctl.strategy_programs(text, config.Config())
    rendered = ctl.render(on, text, "/x/deploy")
    assert rendered.count("[program:prometheus]") == 1 and "[include]" not in rendered
    assert "command=/x/deploy/../.venv/bin/python -u /x/deploy/../daemons/prometheus.py" in rendered
    trader = config.parse({"prometheus": {"enabled": True}, "host": {"roles": ["trader"]}})
    assert "[program:prometheus]" in ctl.render(trader, text, "/x/deploy")  # any host may run one
