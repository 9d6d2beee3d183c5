"""Simulated hosts on one machine (issue 11), for tests and the bench.

Each host is a network namespace joined to a switch namespace by veth links,
one per network it is on, with its own addresses, and a mount namespace of its
own: private ``/tmp``, ``/dev/shm`` and ``/run`` (so its own segment and
supervisor socket) and its own disk at ``/srv`` (a directory of the cluster's).
sshd runs in each, so the Ansible playbook deploys to them as to real hosts.
The networks are those of a trading floor: ``mgmt`` (ssh, from the controller
namespace), ``md`` (market data) and ``oe`` (order entry; the market host is on
it too, for the exchange: the orders host's route to the venue). Their addresses
exist only inside namespaces made here; nothing is routed out. A partition is
a link set down (the kernel here has no netem). ``Cluster`` tears everything
down in ``close``, whatever happened.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import xmlrpc.client
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

from shared import journal
from shared.config import ROOT
from shared.execjournal import read_base, read_lines
from shared.ops.chaos.invariants import (
    ack_problems,
    delivery_problems,
    exec_problems,
    fill_problems,
    journal_problems,
    strategy_problems,
)
from shared.ops.harness import read_jsonl

NETS = {"mgmt": "10.231.0", "md": "10.231.1", "oe": "10.231.2"}  # /24 each, only inside our namespaces
# The market host is on oe for the exchange (contract §9): the ordermanager reaches the venue there.
ROLE_NETS = {"market": ("md", "oe"), "trader": ("md", "oe"), "orders": ("oe",)}
RUN = "/tmp/tradestack"  # deploy/up's runtime dir, private to each host
DISK = "/srv"  # each host's own disk, where the playbook installs the project


def sh(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise with its output."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stdout}{r.stderr}")
    return r


def netns_pids(netns: str) -> list[int]:
    """Every process in a network namespace."""
    r = sh("ip", "netns", "pids", netns, check=False)
    return [int(p) for p in r.stdout.split()] if r.returncode == 0 else []


def kill_netns(netns: str, timeout: float = 10.0) -> None:
    """SIGKILL every process in the namespace until none is left."""
    deadline = time.monotonic() + timeout
    while pids := netns_pids(netns):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes left in {netns}: {pids}")
        time.sleep(0.05)


def wheelhouse(dest: Path) -> Path:
    """Wheels of every dependency (setup.cfg's, and setuptools to build the project) in ``dest``,
    made here, where the package index is reachable: the hosts and the controller have no route
    out. The playbook finds the stamp and uses them."""
    c = configparser.ConfigParser()
    c.read(ROOT / "setup.cfg")
    reqs = [r.strip() for r in c["options"]["install_requires"].splitlines() if r.strip()]
    sh(sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", str(dest),
       "setuptools>=64", "wheel", *reqs, timeout=600)
    (dest / ".stamp").touch()
    return dest


def source_copy(dest: Path) -> Path:
    """A copy of the checkout as it is now (without its venv, git, logs and caches), for the
    playbook to bundle (``tradestack_src``): an edit made to the checkout while a test runs is
    then no change on the hosts."""
    shutil.copytree(ROOT, dest, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "logs", "__pycache__", "*.egg-info", ".mypy_cache", ".ruff_cache", ".pytest_cache",
        ".hypothesis", "build", "pki", "wheels", "tradestack.tar.gz"))
    (dest / "logs").mkdir()
    return dest


class Host:
    """One simulated host: its namespaces, links, disk, sshd and supervisord."""

    def __init__(self, cluster: Cluster, name: str, index: int, roles: tuple[str, ...]) -> None:
        self.cluster, self.name, self.index, self.roles = cluster, name, index, roles
        self.netns = f"{cluster.prefix}-{name}"
        self.nets = ("mgmt", *sorted({n for r in roles for n in ROLE_NETS[r]}))
        self.disk = cluster.dir / "hosts" / name  # its /srv
        self.holder: subprocess.Popen[str] | None = None

    def addr(self, net: str) -> str:
        """This host's address on a network."""
        return f"{NETS[net]}.{self.index}"

    def port(self, net: str) -> str:
        """The switch's end of this host's link on ``net``."""
        return f"{net}{self.index}"

    # --- the host's life ----------------------------------------------------------

    def create(self) -> None:
        """The namespace and its links (down until boot)."""
        sw = self.cluster.switch
        sh("ip", "netns", "add", self.netns)
        sh("ip", "-n", self.netns, "link", "set", "lo", "up")
        for net in self.nets:
            sh("ip", "link", "add", "name", net, "netns", self.netns, "type", "veth",
               "peer", "name", self.port(net), "netns", sw)
            sh("ip", "-n", sw, "link", "set", self.port(net), "master", f"br-{net}")
            sh("ip", "-n", self.netns, "addr", "add", f"{self.addr(net)}/24", "dev", net)
            sh("ip", "-n", self.netns, "link", "set", net, "up")
        (self.disk / "ssh").mkdir(parents=True, exist_ok=True)

    def boot(self, timeout: float = 30.0) -> None:
        """Power on: links up, a fresh mount namespace (empty /tmp, /dev/shm, /run), sshd."""
        for net in self.nets:
            self.link(net, True)
        script = (f"hostname {self.name} && mount --bind {self.disk} {DISK} && "
                  "mount -t tmpfs -o mode=1777 tmpfs /tmp && mount -t tmpfs -o mode=1777 tmpfs /dev/shm && "
                  "mount -t tmpfs -o mode=755 tmpfs /run && mkdir -p /run/sshd && echo ready && exec sleep infinity")
        self.holder = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--uts", "--propagation", "private",
             "--", "sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != "ready":
            err = self.holder.stderr.read() if self.holder.stderr else ""
            raise RuntimeError(f"{self.name}: the mount namespace failed: {err}")
        self._sshd()
        self.cluster.wait_for(lambda: self.cluster.ctl("bash", "-c", f"exec 3<>/dev/tcp/{self.addr('mgmt')}/22",
                                                       check=False).returncode == 0,
                              timeout, f"{self.name}: sshd listening")

    def _sshd(self) -> None:
        d = f"{DISK}/ssh"
        key = self.disk / "ssh" / "host_ed25519"
        if not key.exists():
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
        shutil.copy(self.cluster.dir / "ssh" / "id_ed25519.pub", self.disk / "ssh" / "authorized_keys")
        (self.disk / "ssh" / "sshd_config").write_text(
            f"ListenAddress {self.addr('mgmt')}\nHostKey {d}/host_ed25519\nPidFile /run/sshd.pid\n"
            f"AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "Subsystem sftp internal-sftp\n")
        self.run("/usr/sbin/sshd", "-f", f"{d}/sshd_config")

    def lose(self) -> None:
        """The host is lost: every process killed (its /tmp and /dev/shm go), every link down."""
        for net in self.nets:
            self.link(net, False)
        kill_netns(self.netns)
        if self.holder is not None:
            self.holder.wait(timeout=10)
            self.holder = None

    def link(self, net: str, up: bool) -> None:
        """Set this host's link on ``net`` up or down (at the switch: the host sees no carrier)."""
        sh("ip", "-n", self.cluster.switch, "link", "set", self.port(net), "up" if up else "down")

    # --- inside it --------------------------------------------------------------------

    def _enter(self, mounts: bool) -> list[str]:
        assert self.holder is not None, f"{self.name} is down"
        return ["nsenter", "-t", str(self.holder.pid), "-n", *(["-m"] if mounts else []), "-u", "--"]

    def run(self, *cmd: str, check: bool = True, timeout: float = 60, mounts: bool = True
            ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the host: its network and hostname, and its mounts unless ``mounts`` is
        False (then it sees this machine's files, the checkout among them, wherever it lies: under the
        host's private /tmp, a checkout in /tmp would be out of sight)."""
        return sh(*self._enter(mounts), *cmd, check=check, timeout=timeout)

    def popen(self, *cmd: str, mounts: bool = True, **kw: Any) -> subprocess.Popen[Any]:
        """Start a process inside the host (``mounts`` as for ``run``)."""
        return subprocess.Popen([*self._enter(mounts), *cmd], **kw)

    @property
    def root(self) -> Path:
        """The host's file system as it sees it (its private /tmp and /dev/shm), from outside."""
        assert self.holder is not None, f"{self.name} is down"
        return Path(f"/proc/{self.holder.pid}/root")

    @property
    def project(self) -> Path:
        """The project as installed on the host's disk, seen from outside."""
        return self.disk / "tradestack"

    @property
    def rpc(self) -> Any:
        """supervisord's XML-RPC namespace on this host, over its socket in the host's /tmp."""
        url = f"unix://{self.root}{RUN}/supervisor.sock"
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=SupervisorTransport(None, None, url)).supervisor

    def status(self) -> dict[str, str]:
        """Program -> state; {} when supervisord does not answer."""
        try:
            return {i["name"]: i["statename"] for i in self.rpc.getAllProcessInfo()}
        except (OSError, xmlrpc.client.Error, AssertionError):
            return {}

    def pids(self) -> dict[str, int]:
        """Program -> pid (0 when not running); {} when supervisord does not answer."""
        try:
            return {i["name"]: i["pid"] for i in self.rpc.getAllProcessInfo()}
        except (OSError, xmlrpc.client.Error, AssertionError):
            return {}

    def log(self, program: str) -> list[dict[str, Any]]:
        """The JSON records of a program's log on this host."""
        return read_jsonl(self.project / "logs" / f"{program}.log")

    def events(self, program: str, event: str) -> list[dict[str, Any]]:
        return [r for r in self.log(program) if r.get("event") == event]

    def journal(self) -> list[dict[str, Any]]:
        """Every journaled order on this host, oldest first (every segment)."""
        return list(journal.read(self.project / "logs" / "orders.jsonl"))

    def book_age_ms(self, segment: str = "tradestack_book") -> float:
        """The writer heartbeat's age in this host's segment (inf: none)."""
        try:
            with open(f"{self.root}/dev/shm/{segment}", "rb") as f:
                head = f.read(64)
        except (OSError, AssertionError):
            return float("inf")
        if len(head) < 56 or head[:8] != b"TSTKBOOK":
            return float("inf")
        beat = int.from_bytes(head[48:56], "little")
        return (time.time_ns() - beat) / 1e6 if beat else float("inf")


class Cluster:
    """Hosts, their switch and the controller's namespace; ``close`` removes them all."""

    def __init__(self, workdir: str | os.PathLike[str], layout: dict[str, tuple[str, ...]]) -> None:
        self.dir = Path(workdir)
        self.prefix = f"ts{uuid.uuid4().hex[:6]}"
        self.switch, self.controller = f"{self.prefix}-sw", f"{self.prefix}-ctl"
        counters = {"market": 10, "trader": 20, "orders": 30}
        self.hosts: dict[str, Host] = {}
        for name, roles in layout.items():
            counters[roles[0]] += 1
            self.hosts[name] = Host(self, name, counters[roles[0]], roles)
        self.namespaces: list[str] = []
        self.cp = Path(tempfile.mkdtemp(prefix="tscp", dir="/tmp"))  # ssh control sockets: a short path

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def start(self) -> Cluster:
        """Build the networks and boot every host with sshd."""
        try:
            (self.dir / "ssh").mkdir(parents=True, exist_ok=True)
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / "ssh" / "id_ed25519"))
            for ns in (self.switch, self.controller):
                sh("ip", "netns", "add", ns)
                self.namespaces.append(ns)
            sh("ip", "-n", self.controller, "link", "set", "lo", "up")
            for net in NETS:
                sh("ip", "-n", self.switch, "link", "add", f"br-{net}", "type", "bridge")
                sh("ip", "-n", self.switch, "link", "set", f"br-{net}", "up")
            sh("ip", "link", "add", "name", "mgmt", "netns", self.controller, "type", "veth",
               "peer", "name", "mgmt1", "netns", self.switch)
            sh("ip", "-n", self.switch, "link", "set", "mgmt1", "master", "br-mgmt", "up")
            sh("ip", "-n", self.controller, "addr", "add", f"{NETS['mgmt']}.1/24", "dev", "mgmt")
            sh("ip", "-n", self.controller, "link", "set", "mgmt", "up")
            for h in self.hosts.values():
                self.namespaces.append(h.netns)
                h.create()
                h.boot()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Kill every process of every host and the controller; delete every namespace."""
        errors = []
        for ns in reversed(self.namespaces):
            try:
                kill_netns(ns)
            except RuntimeError as e:
                errors.append(str(e))
        for h in self.hosts.values():
            if h.holder is not None:
                h.holder.wait(timeout=10)
                h.holder = None
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()
        shutil.rmtree(self.cp, ignore_errors=True)
        if errors:
            raise RuntimeError("; ".join(errors))

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def ctl(self, *cmd: str, check: bool = True, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command on the controller (the namespace on the mgmt network)."""
        r = subprocess.run(["ip", "netns", "exec", self.controller, *cmd], capture_output=True, text=True,
                           timeout=timeout, env=env)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}:\n{r.stdout[-4000:]}{r.stderr[-4000:]}")
        return r

    @staticmethod
    def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition", interval: float = 0.1) -> Any:
        """Poll ``predicate()`` until it is truthy; its value, or TimeoutError naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            v = predicate()
            if v:
                return v
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not after {timeout} s")
            time.sleep(interval)

    # --- Ansible, from the controller over ssh ---------------------------------------

    def inventory(self, **extra: Any) -> Path:
        """Write the inventory of these hosts, one group per role; its path."""
        lines = []
        for role in ("market", "trader", "orders"):
            lines.append(f"[{role}]")
            for h in self.hosts.values():
                if role in h.roles:
                    addrs = " ".join(f"{n}_address={h.addr(n)}" for n in ("md", "oe") if n in h.nets)
                    lines.append(f"{h.name} ansible_host={h.addr('mgmt')} {addrs}")
            lines.append("")
        opts = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes"
        settings = {
            "ansible_user": "root", "ansible_ssh_private_key_file": str(self.dir / "ssh" / "id_ed25519"),
            "ansible_ssh_common_args": f"'{opts}'", "ansible_python_interpreter": "/usr/bin/python3",
            "tradestack_dir": f"{DISK}/tradestack", "tradestack_python": "/usr/bin/python3",
            "tradestack_pki": str(self.dir / "pki"), "tradestack_bundle": str(self.dir / "tradestack.tar.gz"),
        }
        lines += ["[all:vars]", *(f"{k}={v}" for k, v in settings.items()), ""]
        path = self.dir / "inventory.ini"
        path.write_text("\n".join(lines))
        # Typed values (numbers, a dict) beside it: an INI [all:vars] section holds only strings.
        (self.dir / "group_vars").mkdir(exist_ok=True)
        (self.dir / "group_vars" / "all.yml").write_text(json.dumps(extra, default=str, indent=1) + "\n")
        return path

    def host_vars(self, name: str, **values: Any) -> Path:
        """Variables of one host beside the inventory (none: its file removed); the file's path."""
        path = self.dir / "host_vars" / f"{name}.yml"
        path.parent.mkdir(exist_ok=True)
        if values:
            path.write_text(json.dumps(values, default=str, indent=1) + "\n")
        else:
            path.unlink(missing_ok=True)
        return path

    def playbook(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        """ansible-playbook deploy/ansible/site.yml on the controller with the inventory written last."""
        ansible = Path(sys.executable).parent / "ansible-playbook"
        home = self.dir / "ansible"
        home.mkdir(exist_ok=True)
        env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "deploy" / "ansible" / "ansible.cfg"),
                   ANSIBLE_HOME=str(home), ANSIBLE_LOCAL_TEMP=str(home / "tmp"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_SSH_CONTROL_PATH_DIR=str(self.cp), LC_ALL="C.UTF-8")
        return self.ctl(str(ansible), "-i", str(self.dir / "inventory.ini"),
                        str(ROOT / "deploy" / "ansible" / "site.yml"), *args, timeout=timeout, env=env, check=check)


def recap(stdout: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP of an ansible-playbook run: host -> {"ok": n, "changed": n, "failed": n, ...}."""
    out: dict[str, dict[str, int]] = {}
    lines = stdout.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("PLAY RECAP")), len(lines))
    for ln in lines[start + 1:]:
        host, sep, counts = ln.partition(" : ")
        if sep:
            out[host.strip()] = {k: int(v) for k, _, v in (c.partition("=") for c in counts.split()) if v.isdigit()}
    return out


def fleet_problems(orders: Host, traders: list[Host], qty: int) -> list[str]:
    """The fault suite's invariants per host: the orders host's journal (no order_id twice,
    order_no contiguous) and exec journal (no exec_id twice, each order's execs in order, each
    trader's filled position within ±qty), every ack a trader logged journaled exactly once, every
    exec a trader received received once, and no trader order while its link was down or its book
    stale."""
    problems = []
    path = orders.project / "logs" / "orders.jsonl"
    for t in traders:
        acks = [(t.name, r["order_id"], r["order_no"]) for r in t.events("strategy", "order_acked")]
        records = t.log("strategy")
        execs, base = list(read_lines(path)), read_base(path)  # after the acks and receipts, before the journal
        journal = orders.journal()  # after the acks: each ack follows its journal line
        problems += [f"{t.name}: {p}" for p in journal_problems(journal)]
        problems += [f"{t.name}: {p}" for p in ack_problems(journal, acks)]
        problems += [f"{t.name}: {p}" for p in exec_problems(execs, journal, base)]
        problems += [f"{t.name}: {p}" for p in fill_problems(execs, {t.name: qty}, [], journal=journal)]
        problems += [f"{t.name}: {p}" for p in delivery_problems(execs, {t.name: records})[0]]
        problems += [f"{t.name}: {p}" for p in strategy_problems(records)]
    return sorted(set(problems))
