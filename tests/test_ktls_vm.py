"""kTLS end to end, in a VM whose kernel has it (Debian's 6.1 under qemu).

One boot runs every scenario of ``tests/vm/ktls_guest.py`` (three suites:
our client and server with TX+RX offload against each other and against
``openssl s_server``/``s_client``, a multi-megabyte ``sendfile`` checked by
hash, KeyUpdate in the middle, asyncio ``loop.sendfile``). About 50 s under
TCG, plus a one-time kernel download.

This test fails, never skips, when the VM cannot run: kTLS offload is only
tested here. Developers may opt out with ``TCPLS_SKIP_KTLS_VM=1``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "tools" / "ktls-vm" / "run_vm.sh"
GUEST = ROOT / "tests" / "vm" / "ktls_guest.py"


@pytest.mark.skipif(os.environ.get("TCPLS_SKIP_KTLS_VM") == "1", reason="TCPLS_SKIP_KTLS_VM=1")
def test_ktls_in_vm() -> None:
    proc = subprocess.run(
        ["bash", str(RUNNER), "--python", sys.executable, str(GUEST)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=900,
    )
    console = proc.stdout.decode("utf-8", "replace")
    cases = re.findall(r"^KTLS_CASE (\S+) (PASS|FAIL)(.*)$", console, re.M)
    summary = "\n".join(" ".join(c) for c in cases)
    assert "KTLS_RESULT: PASS" in console and proc.returncode == 0, (
        f"kTLS VM run failed (exit {proc.returncode}):\n{summary}\n--- console tail ---\n{console[-6000:]}"
    )
    names = {name for name, _, _ in cases}
    for suite in ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"):
        for scenario in ("tcpls-tcpls", "tcpls-client-vs-openssl-s_server", "openssl-s_client-vs-tcpls-server",
                         "keyupdate", "asyncio"):
            assert f"{scenario}/{suite}" in names, f"{scenario}/{suite} did not run"
    assert "cli-serve-file/TLS_AES_128_GCM_SHA256" in names
    print(summary)
