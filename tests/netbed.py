"""A two-host, multi-path testbed in Linux network namespaces (needs root, ``ip``, ``tc``).

Two namespaces, "client" and "server", joined by N paths: path i
(1-based) is ``10.0.i.1`` (client, device ``c<i>``) <-> ``10.0.i.2``
(server, device ``s<i>``), every egress shaped with a tbf rate limit.
Without ``delays`` a path is a veth pair. This kernel has no netem, so
with ``delays=[ms, ...]`` (one-way delay per path) a path is a pair of
TUN devices joined by the userspace delay line ``tests/delayline.py``
(one process for all paths, killed by :meth:`Testbed.down`).
Path failures:

* ``link_down(i)``: ``ip link set c<i> down`` (the peer loses carrier too);
* ``blackhole(i)``: silent loss, an nftables table dropping everything in
  and out of ``c<i>`` (or, without ``nft``, a ``tc`` ingress drop filter
  on both ends).

Names carry a per-instance tag, so parallel runs do not collide;
:meth:`Testbed.down` deletes both namespaces (the veths go with them).
Also a small CLI: ``python3 tests/netbed.py up [RATE] [PATHS]`` prints the
namespace names; ``python3 tests/netbed.py down TAG``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from typing import Optional, Sequence


def unavailable() -> Optional[str]:
    """Why namespace tests cannot run here (None: they can)."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, tc); CI runs these as root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs the '{tool}' command (iproute2)"
    probe = f"tcplsprobe{uuid.uuid4().hex[:6]}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def delay_unavailable() -> Optional[str]:
    """Why delayed paths (TUN devices + tests/delayline.py) cannot run here."""
    why = unavailable()
    if why:
        return why
    if not os.path.exists("/dev/net/tun"):
        return "delayed paths need /dev/net/tun (TUN devices)"
    return None


def _run(*cmd: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")


class Testbed:
    __test__ = False  # not a pytest class

    def __init__(self, rate: str = "30mbit", paths: int = 2, tag: Optional[str] = None,
                 delays: Optional[Sequence[float]] = None, tbf_latency: str = "50ms") -> None:
        if delays is not None and len(delays) != paths:
            raise ValueError("one delay per path")
        self.rate = rate
        self.paths = paths
        self.delays = list(delays) if delays is not None else None
        self.tbf_latency = tbf_latency
        self._delayline: Optional[subprocess.Popen] = None
        self.tag = tag or uuid.uuid4().hex[:8]
        self.client_ns = f"tcpls-c-{self.tag}"
        self.server_ns = f"tcpls-s-{self.tag}"
        self._bh_tc: set[int] = set()

    # addresses -----------------------------------------------------------
    def client_addr(self, i: int) -> str:
        return f"10.0.{i}.1"

    def server_addr(self, i: int) -> str:
        return f"10.0.{i}.2"

    # life cycle ----------------------------------------------------------
    def up(self) -> "Testbed":
        try:
            for ns in (self.client_ns, self.server_ns):
                _run("ip", "netns", "add", ns)
                _run("ip", "-n", ns, "link", "set", "lo", "up")
            for i in range(1, self.paths + 1):
                c, s = f"c{i}", f"s{i}"
                if self.delays is not None:
                    _run("ip", "-n", self.client_ns, "tuntap", "add", "dev", c, "mode", "tun")
                    _run("ip", "-n", self.server_ns, "tuntap", "add", "dev", s, "mode", "tun")
                else:
                    _run("ip", "link", "add", f"tcplsc{i}{self.tag[:6]}", "netns", self.client_ns, "type", "veth",
                         "peer", "name", f"tcplss{i}{self.tag[:6]}", "netns", self.server_ns)
                    _run("ip", "-n", self.client_ns, "link", "set", f"tcplsc{i}{self.tag[:6]}", "name", c)
                    _run("ip", "-n", self.server_ns, "link", "set", f"tcplss{i}{self.tag[:6]}", "name", s)
                _run("ip", "-n", self.client_ns, "addr", "add", f"{self.client_addr(i)}/24", "dev", c)
                _run("ip", "-n", self.server_ns, "addr", "add", f"{self.server_addr(i)}/24", "dev", s)
                for ns, dev in ((self.client_ns, c), (self.server_ns, s)):
                    _run("ip", "-n", ns, "link", "set", dev, "up")
                    _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root",
                         "tbf", "rate", self.rate, "burst", "32kb", "latency", self.tbf_latency)
            if self.delays is not None:
                self._start_delayline()
        except BaseException:
            self.down()
            raise
        return self

    def _start_delayline(self) -> None:
        assert self.delays is not None
        specs = [f"c{i},s{i},{d}" for i, d in enumerate(self.delays, 1)]
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "delayline.py")
        self._delayline = subprocess.Popen([sys.executable, "-u", script, self.client_ns, self.server_ns, *specs],
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self._delayline.stdout is not None
        line = self._delayline.stdout.readline()
        if line.strip() != "ready":
            err = self._delayline.stderr.read() if self._delayline.stderr else ""
            raise RuntimeError(f"delay line did not start: {line}{err}")

    def enable_mptcp(self, subflows: int = 2) -> None:
        """Kernel MPTCP between the namespaces: the server announces its
        other addresses (``signal`` endpoints), the client accepts them and
        opens one subflow per announced address."""
        for ns in (self.client_ns, self.server_ns):
            _run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.mptcp.enabled=1")
            _run("ip", "-n", ns, "mptcp", "limits", "set", "subflows", str(subflows), "add_addr_accepted", str(subflows))
        for i in range(2, self.paths + 1):
            _run("ip", "-n", self.server_ns, "mptcp", "endpoint", "add", self.server_addr(i), "dev", f"s{i}", "signal")

    def rx_bytes(self, side: str, i: int) -> int:
        """Bytes received so far on path i's device on ``side``."""
        ns, dev = (self.client_ns, f"c{i}") if side == "client" else (self.server_ns, f"s{i}")
        r = subprocess.run(["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/statistics/rx_bytes"],
                           capture_output=True, text=True)
        return int(r.stdout.strip() or 0)

    def down(self) -> None:
        if self._delayline is not None:
            self._delayline.kill()
            self._delayline.wait()
            self._delayline = None
        for ns in (self.client_ns, self.server_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def __enter__(self) -> "Testbed":
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # running things ------------------------------------------------------
    def cmd(self, side: str, argv: Sequence[str]) -> list[str]:
        ns = self.client_ns if side == "client" else self.server_ns
        return ["ip", "netns", "exec", ns, *argv]

    # breaking paths ------------------------------------------------------
    def link_down(self, i: int) -> None:
        _run("ip", "-n", self.client_ns, "link", "set", f"c{i}", "down")

    def blackhole(self, i: int) -> str:
        """Drop everything on path i, silently. Returns the method used."""
        if shutil.which("nft"):
            # one transaction: both directions stop at the same instant
            table = (f"table inet bh{i} {{\n"
                     f"  chain out {{ type filter hook output priority 0; oifname \"c{i}\" drop; }}\n"
                     f"  chain in {{ type filter hook input priority 0; iifname \"c{i}\" drop; }}\n}}\n")
            r = subprocess.run(["ip", "netns", "exec", self.client_ns, "nft", "-f", "-"], input=table,
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"nft: {r.stderr.strip()}")
            return "nftables"
        for ns, dev in ((self.client_ns, f"c{i}"), (self.server_ns, f"s{i}")):
            ex = ["ip", "netns", "exec", ns, "tc"]
            _run(*ex, "qdisc", "add", "dev", dev, "ingress")
            _run(*ex, "filter", "add", "dev", dev, "parent", "ffff:", "protocol", "all", "u32",
                 "match", "u32", "0", "0", "action", "drop")
        return "tc ingress drop"


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "up":
        bed = Testbed(sys.argv[2] if len(sys.argv) > 2 else "30mbit", int(sys.argv[3]) if len(sys.argv) > 3 else 2).up()
        print(bed.tag, bed.client_ns, bed.server_ns)
    elif len(sys.argv) == 3 and sys.argv[1] == "down":
        Testbed(tag=sys.argv[2]).down()
    else:
        print(__doc__)
        sys.exit(2)
