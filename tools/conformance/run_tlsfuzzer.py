#!/usr/bin/env python3
"""Run tlsfuzzer's TLS 1.3 scripts against `tcpls server` and `openssl s_server`.

For every script in JOBS this starts a fresh server in the mode the script
needs (on a free loopback port), runs the script with a timeout, checks that
the server process is still alive (a dead server is recorded as a crash and
the server is restarted), runs the script's own "sanity" probe once more to
check that the server still answers, and stops the server.  The same is done
with `openssl s_server` as a reference.  Results go to a JSON file and a
markdown table.

Getting tlsfuzzer (not vendored, no network access needed at run time):

    git clone https://github.com/tlsfuzzer/tlsfuzzer
    python3 -m venv tlsf-venv
    tlsf-venv/bin/pip install tlslite-ng==0.9.0b2 ecdsa

Then, from the repository root:

    python3 tools/conformance/run_tlsfuzzer.py \\
        --tlsfuzzer path/to/tlsfuzzer --python tlsf-venv/bin/python \\
        --out conformance-out

The scripts read tlsfuzzer's test certificates from DIR/tests/*.pem (the
server certificates); client certificates (tlsfuzzer's ones expired years
ago) are generated afresh in the output directory with `openssl`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]

# Signature schemes the tcpls server lists in its CertificateRequest (its
# default signature_schemes, in order), for the "-s" option of the
# certificate-request/-verify scripts.
sys.path.insert(0, str(REPO / "src"))
from tcpls.tls.config import DEFAULT_SIGNATURE_SCHEMES  # noqa: E402

TCPLS_CR_SIGALGS = " ".join(s.name for s in DEFAULT_SIGNATURE_SCHEMES)
# Both servers list the CA of --cafile/-CAfile in CertificateRequest
# (certificate_authorities, 47: RFC 9846 §4.2.4); the scripts are told so.
CR_CA_NAMES = "47:CR"
# (first = the group the server picks for HelloRetryRequest: both prefer x25519)
TCPLS_GROUPS = "x25519,secp256r1,secp384r1,x448,secp521r1,ffdhe2048,ffdhe3072,ffdhe4096,ffdhe6144,ffdhe8192"
# Every TLS 1.3 cipher suite (RFC 9846 appendix B.4), for both servers.
ALL_SUITES = ("TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:"
              "TLS_AES_128_CCM_SHA256:TLS_AES_128_CCM_8_SHA256")
OPENSSL_GROUPS = "x25519,secp256r1,x448,secp521r1,secp384r1,ffdhe2048,ffdhe3072,ffdhe4096,ffdhe6144,ffdhe8192"


# --------------------------------------------------------------------- modes
@dataclass(frozen=True)
class Mode:
    """How a server must be configured for a script."""
    cert: Optional[str] = "serverX509Cert.pem"   # in tlsfuzzer's tests/
    key: Optional[str] = "serverX509Key.pem"
    app: str = "www"                               # www | echo
    client_auth: bool = False                      # ask for an (optional) client certificate, as CI's --reqcert
    pha: Optional[str] = None                      # request | require (post-handshake auth)
    psk_hash: Optional[str] = None                 # sha256 | sha384: external PSK "aa"/"test", no cert
    key_update: bool = False                       # server sends KeyUpdate(update_requested) for GET /keyupdate
    cert_compression: bool = False                 # RFC 8879 with zlib
    groups: Optional[str] = None                   # tcpls --groups (e.g. with the opt-in hybrid group)
    # the probe that checks that the server still answers: (script, args)
    sanity: tuple = ("conversation", ("sanity",))


CLIENT_SANITY = ("certificate-request",
                 ("-k", "{clientkeys}/client-rsa.key", "-c", "{clientkeys}/client-rsa.crt", "sanity"))

MODES = {
    "rsa-www": Mode(),
    "rsa-echo": Mode(app="echo", sanity=("lengths", ("sanity",))),
    "ecdsa-www": Mode(cert="serverECCert.pem", key="serverECKey.pem"),
    "ed25519-www": Mode(cert="serverEd25519Cert.pem", key="serverEd25519Key.pem"),
    "ed448-www": Mode(cert="serverEd448Cert.pem", key="serverEd448Key.pem"),
    "rsapss-www": Mode(cert="serverRSAPSSCert.pem", key="serverRSAPSSKey.pem"),
    "client-cert": Mode(client_auth=True, sanity=CLIENT_SANITY),
    "pha-request": Mode(pha="request"),
    "pha-require": Mode(pha="require"),
    "key-update": Mode(key_update=True,
                       sanity=("keyupdate-from-server", ("post-handshake KeyUpdate msg from server",))),
    "cert-compression": Mode(cert_compression=True),
    "client-cert-compression": Mode(client_auth=True, cert_compression=True, sanity=CLIENT_SANITY),
    "mlkem-www": Mode(groups="X25519MLKEM768,x25519,secp256r1,secp384r1,x448,secp521r1"),
    "psk-sha256": Mode(cert=None, key=None, psk_hash="sha256", sanity=("psk_dhe_ke", ("sanity",))),
    "psk-sha384": Mode(cert=None, key=None, psk_hash="sha384", sanity=("psk_dhe_ke", ("--psk-sha384", "sanity"))),
}


# ---------------------------------------------------------------------- jobs
@dataclass
class Job:
    script: str                       # without "test-tls13-" and ".py"
    mode: str = "rsa-www"
    base: list = field(default_factory=list)     # args also used for the sanity re-run
    extra: list = field(default_factory=list)    # -n / -x / -e ... (not for sanity)
    tcpls: Optional[list] = None      # replaces base+extra for tcpls
    openssl: Optional[list] = None    # replaces base+extra for openssl
    timeout: int = 300
    declined: Optional[str] = None    # not applicable to tcpls by design (still run)
    skip: Optional[str] = None        # not run at all
    skip_openssl: Optional[str] = None
    note: str = ""
    label: str = ""                   # distinguishes several runs of one script
    cookie: bool = False              # CI runs it with --cookie (server sends HRR cookies)

    @property
    def name(self) -> str:
        return f"test-tls13-{self.script}" + (f" [{self.label}]" if self.label else "")

    def args_for(self, server: str) -> list:
        own = self.tcpls if server == "tcpls" else self.openssl
        return list(own) if own is not None else self.base + self.extra


CLIENT = ["-k", "{clientkeys}/client-rsa.key", "-c", "{clientkeys}/client-rsa.crt"]
BRAINPOOL_SIGS_XFAIL = ["-x", "Test with ecdsa_brainpoolP256r1tls13_sha256", "-X", "handshake_failure",
                        "-x", "Test with ecdsa_brainpoolP384r1tls13_sha384", "-X", "handshake_failure",
                        "-x", "Test with ecdsa_brainpoolP512r1tls13_sha512", "-X", "handshake_failure"]

COOKIE_NOTE = ("--cookie (as CI) for tcpls, whose server then runs with --hrr-cookie; "
               "not for openssl (s_server sends HRR cookies only in -stateless mode)")

JOBS: list[Job] = [
    Job("0rtt-garbage", cookie=True, note=COOKIE_NOTE),
    Job("ccs"),
    Job("certificate-compression", mode="cert-compression",
        note="tcpls with --cert-compression zlib; s_server 3.0 has no certificate compression (3.2+)"),
    Job("connection-abort", extra=["-n", "40"], note="sampled: -n 40"),
    Job("conversation"),
    Job("conversation", mode="ecdsa-www", label="ECDSA P-256 cert"),
    Job("count-tickets", base=["-t", "2"]),
    Job("crfg-curves"),
    Job("dhe-shared-secret-padding"),
    Job("ecdhe-curves"),
    Job("empty-alert"),
    Job("ffdhe-groups"),
    Job("ffdhe-sanity"),
    Job("finished"),
    Job("finished-plaintext"),
    Job("hrr", cookie=True, note=COOKIE_NOTE),
    Job("invalid-ciphers"),
    Job("keyshare-omitted"),
    Job("keyupdate", note="run without CI's -e list (that works around a tlslite-ng server bug)"),
    Job("keyupdate-from-server", mode="key-update",
        note="expects a KeyUpdate(update_requested) before the answer to `GET /keyupdate`, which tcpls "
             "--www does; s_server has no such mode"),
    Job("large-number-of-extensions", base=["--exc", "27"],
        note="--exc 27 only (CI excludes more, for tlslite-ng): an empty compress_certificate is malformed "
             "(RFC 8879: algorithms<2..2^8-2>), decode_error is right"),
    Job("legacy-version"),
    Job("lengths", mode="rsa-echo", extra=["-n", "100"], note="echo mode; sampled: -n 100 of 16384 lengths"),
    Job("mlkem", mode="mlkem-www", cookie=True, tcpls=["--kems", "x25519mlkem768"],
        skip_openssl="OpenSSL 3.0 has no ML-KEM",
        note="tcpls with --groups X25519MLKEM768,... (the hybrid is opt-in); --kems x25519mlkem768: "
             "SecP256r1MLKEM768 and SecP384r1MLKEM1024 are not implemented; the script needs kyber-py "
             "in tlsfuzzer's environment; " + COOKIE_NOTE),
    Job("multiple-ccs-messages"),
    Job("no-unknown-groups", extra=["-n", "60"], cookie=True,
        tcpls=["--groups", TCPLS_GROUPS, "-n", "60"], openssl=["--groups", OPENSSL_GROUPS, "-n", "60"],
        note="--groups = the server's groups; sampled: -n 60; " + COOKIE_NOTE),
    Job("nociphers"),
    Job("obsolete-curves", extra=["-n", "60"], cookie=True, note="sampled: -n 60; " + COOKIE_NOTE),
    Job("pkcs-signature"),
    Job("record-layer-limits"),
    Job("record-padding"),
    Job("rsa-signatures"),
    Job("serverhello-random", extra=["-n", "40"], note="sampled: -n 40"),
    Job("session-resumption"),
    Job("shuffled-extentions", cookie=True, note=COOKIE_NOTE),
    Job("signature-algorithms"),
    Job("symetric-ciphers"),
    Job("unencrypted-alert"),
    Job("unrecognised-groups", cookie=True, note=COOKIE_NOTE),
    Job("version-negotiation", extra=["-n", "40"], note="sampled: -n 40"),
    Job("version-negotiation", base=["-d"], extra=["-n", "40"], label="-d", note="sampled: -n 40"),
    Job("zero-content-type"),
    Job("zero-length-data"),
    # ---- other certificate types
    Job("ecdsa-support", mode="ecdsa-www", extra=BRAINPOOL_SIGS_XFAIL,
        note="P-256 certificate only (CI also loads P-384/P-521 certs); brainpool expected to fail"),
    Job("eddsa", mode="ed25519-www", extra=["-x", "ed448 only", "-X", "handshake_failure"], label="Ed25519 cert"),
    Job("eddsa", mode="ed448-www", extra=["-x", "ed25519 only", "-X", "handshake_failure"], label="Ed448 cert"),
    Job("rsapss-signatures", mode="rsapss-www", note="server key is an RSASSA-PSS (id-RSASSA-PSS) key"),
    Job("ecdhe-brainpool-curves", declined="brainpool groups (RFC 8734) are not implemented"),
    # ---- client certificates
    Job("certificate-request", mode="client-cert",
        tcpls=CLIENT + ["-E", f"key_share:SH supported_versions:SH {CR_CA_NAMES}", "-s", TCPLS_CR_SIGALGS],
        openssl=CLIENT + ["-E", f"key_share:SH supported_versions:SH {CR_CA_NAMES}"],
        note="-s = the server's own CertificateRequest list; compress_certificate:CR dropped; "
             "47:CR = certificate_authorities (the --cafile/-CAfile CA) in CertificateRequest"),
    Job("certificate-request", mode="client-cert", label="status_request",
        tcpls=CLIENT + ["-E", f"status_request:CH:CT key_share:SH supported_versions:SH {CR_CA_NAMES}",
                        "-s", TCPLS_CR_SIGALGS],
        openssl=CLIENT + ["-E", f"status_request:CH:CT key_share:SH supported_versions:SH {CR_CA_NAMES}"],
        note="as above, plus status_request"),
    Job("certificate-verify", mode="client-cert", label="RSA client",
        tcpls=CLIENT + ["-s", TCPLS_CR_SIGALGS], openssl=list(CLIENT)),
    Job("certificate-verify", mode="client-cert", label="RSA-PSS client",
        tcpls=["-k", "{clientkeys}/client-rsapss.key", "-c", "{clientkeys}/client-rsapss.crt", "-s", TCPLS_CR_SIGALGS],
        openssl=["-k", "{clientkeys}/client-rsapss.key", "-c", "{clientkeys}/client-rsapss.crt"]),
    Job("ecdsa-in-certificate-verify", mode="client-cert",
        tcpls=["-k", "{clientkeys}/client-p256.key", "-c", "{clientkeys}/client-p256.crt", "-s", TCPLS_CR_SIGALGS],
        openssl=["-k", "{clientkeys}/client-p256.key", "-c", "{clientkeys}/client-p256.crt"]),
    Job("eddsa-in-certificate-verify", mode="client-cert", label="Ed25519 client",
        tcpls=["-k", "{clientkeys}/client-ed25519.key", "-c", "{clientkeys}/client-ed25519.crt", "-s", TCPLS_CR_SIGALGS],
        openssl=["-k", "{clientkeys}/client-ed25519.key", "-c", "{clientkeys}/client-ed25519.crt"]),
    Job("eddsa-in-certificate-verify", mode="client-cert", label="Ed448 client",
        tcpls=["-k", "{clientkeys}/client-ed448.key", "-c", "{clientkeys}/client-ed448.crt", "-s", TCPLS_CR_SIGALGS],
        openssl=["-k", "{clientkeys}/client-ed448.key", "-c", "{clientkeys}/client-ed448.crt"]),
    Job("client-certificate-compression", mode="client-cert-compression",
        base=CLIENT + ["--skip-bombs", "--random-fuzz-size", "0", "--algorithms", "zlib",
                       "-E", f"key_share:SH supported_versions:SH {CR_CA_NAMES}"],
        note="tcpls with --cert-compression zlib; s_server 3.0 has no certificate compression (3.2+); "
             "47:CR as for certificate-request"),
    Job("post-handshake-auth", mode="pha-request", base=list(CLIENT),
        skip_openssl="s_server cannot send a CertificateRequest right after the handshake on its own"),
    Job("post-handshake-auth", mode="pha-require", label="cert required",
        base=CLIENT + ["--pha-as-reply", "--cert-required", "--min-tickets=2"],
        skip_openssl="s_server cannot send a CertificateRequest right after the handshake on its own"),
    # ---- external PSKs
    Job("psk_ke", mode="psk-sha256"),
    Job("psk_dhe_ke", mode="psk-sha256"),
    Job("psk_ke", mode="psk-sha384", base=["--psk-sha384"], label="SHA-384",
        skip_openssl="s_server's -psk always uses a SHA-256 cipher suite in TLS 1.3"),
    Job("psk_dhe_ke", mode="psk-sha384", base=["--psk-sha384"], label="SHA-384",
        skip_openssl="s_server's -psk always uses a SHA-256 cipher suite in TLS 1.3"),
    # ---- not run
    Job("non-support", skip="needs a server that does not speak TLS 1.3 at all"),
    Job("minerva", skip="timing side-channel measurement (needs packet capture as root)"),
    Job("mldsa-in-certificate-verify", skip="ML-DSA (post-quantum) signatures are not implemented",
        declined="ML-DSA (post-quantum) signatures are not implemented"),
    Job("ecdsa-brainpool-in-certificate-verify", skip="brainpool signatures are not implemented",
        declined="brainpool curves (RFC 8734) are not implemented"),
]


# ------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, limit: float = 20.0) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def make_client_certs(d: Path, openssl: str) -> None:
    """A fresh CA and client certificates of every key type, valid for a year."""
    d.mkdir(parents=True, exist_ok=True)
    if (d / "ca.pem").exists():
        return

    def run(*a: str) -> None:
        subprocess.run([openssl, *a], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "365",
        "-subj", "/CN=conformance client CA", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"),
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    ext = d / "client.ext"
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
                   "subjectAltName=DNS:client.example\nsubjectKeyIdentifier=hash\n"
                   "authorityKeyIdentifier=keyid,issuer\n")
    keys = {
        "rsa": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        "rsapss": ["-algorithm", "RSA-PSS", "-pkeyopt", "rsa_keygen_bits:2048"],
        "p256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "ed25519": ["-algorithm", "ED25519"],
        "ed448": ["-algorithm", "ED448"],
    }
    for name, gen in keys.items():
        k, csr, crt = d / f"client-{name}.key", d / f"client-{name}.csr", d / f"client-{name}.crt"
        run("genpkey", *gen, "-out", str(k))
        run("req", "-new", "-key", str(k), "-subj", f"/CN=client {name}", "-out", str(csr))
        run("x509", "-req", "-in", str(csr), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
            "-CAcreateserial", "-days", "365", "-extfile", str(ext), "-out", str(crt))


class ServerSpec:
    """Builds the command line of one server implementation for a Mode."""

    def __init__(self, kind: str, opts: argparse.Namespace, certs: Path, clientkeys: Path):
        self.kind, self.opts, self.certs, self.clientkeys = kind, opts, certs, clientkeys
        self.tcpls_flags: set[str] = set()
        if kind == "tcpls":
            h = subprocess.run(self.tcpls_base() + ["--help"], capture_output=True, text=True, env=self.env())
            self.tcpls_flags = set(re.findall(r"(--[a-z][a-z0-9-]*)", h.stdout))

    def env(self) -> dict:
        e = dict(os.environ)
        if self.kind == "tcpls":
            e["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
        return e

    def cookie_ok(self) -> bool:
        """Whether the script can be run with --cookie against this server."""
        return self.kind == "tcpls" and "--hrr-cookie" in self.tcpls_flags

    def tcpls_base(self) -> list:
        return [self.opts.tcpls_python, "-m", "tcpls", "server"]

    def command(self, mode: Mode, port: int, cookie: bool = False) -> tuple[Optional[list], str]:
        """(argv, "") or (None, why this mode is not available)."""
        c = self.certs
        if self.kind == "tcpls":
            cmd = self.tcpls_base() + ["--host", "127.0.0.1", "--port", str(port), "--" + mode.app]
            if "--ciphersuites" in self.tcpls_flags:
                # the same five suites as s_server below (CCM ones are not offered by default)
                cmd += ["--ciphersuites", ALL_SUITES]
            if cookie and self.cookie_ok():
                cmd += ["--hrr-cookie"]
            if mode.cert:
                cmd += ["--cert", str(c / mode.cert), "--key", str(c / mode.key)]
            if mode.psk_hash:
                if "--psk" not in self.tcpls_flags:
                    return None, "tcpls server has no --psk"
                cmd += ["--psk", "aa", "--psk-identity", "test", "--psk-hash", mode.psk_hash]
                if "--psk-modes" in self.tcpls_flags:
                    # psk_ke accepted too, (EC)DHE preferred: s_server's -allow_no_dhe_kex
                    cmd += ["--psk-modes", "psk_dhe_ke,psk_ke"]
            if mode.client_auth:
                flag = next((f for f in ("--request-client-cert", "--verify-client", "--client-auth")
                             if f in self.tcpls_flags), None)
                if flag is None or "--cafile" not in self.tcpls_flags:
                    return None, "tcpls server has no --request-client-cert/--cafile"
                cmd += [flag, "--cafile", str(self.clientkeys / "ca.pem")]
            if mode.pha:
                flag = next((f for f in ("--request-post-handshake-auth", "--post-handshake-auth")
                             if f in self.tcpls_flags), None)
                if flag is None or "--cafile" not in self.tcpls_flags:
                    return None, "tcpls server has no --request-post-handshake-auth/--cafile"
                if mode.pha == "require":
                    return None, ("tcpls CLI cannot require the certificate in post-handshake auth only "
                                  "(--require-client-cert also asks during the handshake)")
                cmd += [flag, "--cafile", str(self.clientkeys / "ca.pem")]
            # key_update: `--www` answers GET /keyupdate after a KeyUpdate(update_requested)
            if mode.cert_compression:
                if "--cert-compression" not in self.tcpls_flags:
                    return None, "tcpls server has no --cert-compression"
                cmd += ["--cert-compression", "zlib"]
            if mode.groups:
                cmd += ["--groups", mode.groups]
            return cmd, ""
        # openssl s_server
        cmd = [self.opts.openssl, "s_server", "-accept", f"127.0.0.1:{port}", "-quiet",
               "-www" if mode.app == "www" else "-rev",
               # every TLS 1.3 suite, as tlsfuzzer's CI server (s_server leaves out CCM by default)
               "-ciphersuites", ALL_SUITES]
        if mode.psk_hash:
            if mode.psk_hash != "sha256":
                return None, "s_server's -psk is SHA-256 only in TLS 1.3"
            # -allow_no_dhe_kex: accept psk_ke too, like tlsfuzzer's CI server
            cmd += ["-psk", "aa", "-psk_identity", "test", "-nocert", "-allow_no_dhe_kex"]
        else:
            cmd += ["-cert", str(c / mode.cert), "-key", str(c / mode.key)]
        if mode.client_auth:
            cmd += ["-verify", "1", "-verify_return_error", "-CAfile", str(self.clientkeys / "ca.pem")]
        if mode.pha:
            return None, "s_server cannot request post-handshake authentication by itself"
        if mode.key_update:
            return None, "s_server cannot send a KeyUpdate by itself in -www mode"
        return cmd, ""


# ------------------------------------------------------------- log parsing
# a probe starts with "name ..." or, in scripts with --repeat, '"name" repeat N...'
PROBE_RE = re.compile(r'^(?:"(.+)" repeat \d+\.\.\.|(\S.*) \.\.\.)$')
SUMMARY_RE = re.compile(r"^(TOTAL|SKIP|PASS|XFAIL|FAIL|XPASS): (\d+)\s*$", re.M)


def parse_log(text: str) -> dict:
    counts = {k: int(v) for k, v in SUMMARY_RE.findall(text)}
    failed: list[str] = []
    m = re.search(r"^FAILED:\n((?:\t.*\n?)*)", text, re.M)
    if m:
        for line in m.group(1).splitlines():
            line = line.strip()
            if line:
                failed.append(line[1:-1] if line[:1] in "'\"" else line)
    failed = list(dict.fromkeys(failed))  # "sanity" runs first and last
    # per-probe blocks: "<name> ..." up to the next one
    blocks: dict[str, list[str]] = {}
    cur: Optional[str] = None
    for line in text.splitlines():
        pm = PROBE_RE.match(line)
        if pm:
            cur = pm.group(1) or pm.group(2)
            blocks.setdefault(cur, [])
            continue
        if cur is not None:
            blocks[cur].append(line)
    details = {}
    for name in failed:
        lines = blocks.get(name, [])
        node = next((l for l in lines if l.startswith("Error encountered while processing node")), "")
        node_m = re.match(r"Error encountered while processing node (.*?) \(child:", node)
        exc = ""
        for l in lines:
            if re.match(r"^[A-Za-z_.]*(Error|Exception|Timeout)\b.*", l) and not l.startswith("Error "):
                exc = l
        if not exc:
            exc = next((l for l in lines if l.startswith("Expected error message")), "")
        node_s = node_m.group(1) if node_m else node[:160]
        node_s = re.sub(r"<(?:[\w.]+\.)?(\w+) object at 0x[0-9a-f]+>", r"\1", node_s)
        details[name] = {"node": node_s, "error": exc[:400]}
    return {"counts": counts, "failed": failed, "details": details}


# ------------------------------------------------------------------ running
class Runner:
    def __init__(self, opts: argparse.Namespace):
        self.opts = opts
        self.out = Path(opts.out).resolve()
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.tlsf = Path(opts.tlsfuzzer).resolve()
        self.certs = Path(opts.certs).resolve() if opts.certs else self.tlsf / "tests"
        self.clientkeys = self.out / "client-certs"
        make_client_certs(self.clientkeys, opts.openssl)
        self.results: dict = {}
        if opts.merge and (self.out / "results.json").exists():
            old = json.loads((self.out / "results.json").read_text())
            self.results = {j["name"]: j["results"] for j in old["jobs"]}
        self.lock = threading.Lock()
        self.environment = self.describe_environment()

    def describe_environment(self) -> dict:
        def out(cmd: list, cwd: Optional[Path] = None) -> str:
            try:
                return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=30).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                return "?"
        return {
            "tcpls": out(["git", "describe", "--always", "--dirty"], REPO),
            "tlsfuzzer": out(["git", "describe", "--always", "--dirty"], self.tlsf) or "(not a git checkout)",
            "tlslite-ng": out([self.opts.python, "-c", "import tlslite; print(tlslite.__version__)"]),
            "openssl": out([self.opts.openssl, "version"]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }

    def script_path(self, job) -> Path:
        name = job if isinstance(job, str) else job.script
        return self.tlsf / "scripts" / f"test-tls13-{name}.py"

    def expand(self, args: list) -> list:
        return [a.replace("{clientkeys}", str(self.clientkeys)) for a in args]

    def run_script(self, job, args: list, port: int, timeout: int, log: Path) -> tuple[Optional[int], float]:
        cmd = [self.opts.python, str(self.script_path(job)), "-h", "localhost", "-p", str(port)] + self.expand(args)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.tlsf)
        t0 = time.monotonic()
        with open(log, "w") as f:
            f.write("# " + " ".join(cmd) + "\n")
            f.flush()
            p = subprocess.Popen(cmd, cwd=self.tlsf, stdout=f, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)
            try:
                rc: Optional[int] = p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                rc = None
        return rc, time.monotonic() - t0

    def start_server(self, spec: ServerSpec, mode: Mode, errlog: Path, cookie: bool = False):
        port = free_port()
        cmd, why = spec.command(mode, port, cookie)
        if cmd is None:
            return None, port, why
        f = open(errlog, "a")
        f.write("# " + " ".join(cmd) + "\n")
        f.flush()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=spec.env(),
                             start_new_session=True)
        p._log = f  # type: ignore[attr-defined]
        if not wait_listening(port, p):
            self.stop_server(p)
            return None, port, "server did not start (see " + errlog.name + ")"
        return p, port, ""

    @staticmethod
    def stop_server(p: subprocess.Popen) -> Optional[int]:
        rc = p.poll()
        if rc is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        p._log.close()  # type: ignore[attr-defined]
        return rc

    def run_job(self, job: Job, kind: str, spec: ServerSpec) -> dict:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", job.name).strip("_") + "." + kind
        res: dict = {"server": kind, "status": "ran", "crash": False}
        skip = job.skip or (job.skip_openssl if kind == "openssl" else None)
        if skip:
            res.update(status="skipped", reason=skip)
            return res
        if not self.script_path(job).exists():
            res.update(status="skipped", reason="script not in this tlsfuzzer checkout")
            return res
        if job.script == "mlkem" and subprocess.run(
            [self.opts.python, "-c", "import kyber_py"], capture_output=True
        ).returncode != 0:
            res.update(status="skipped", reason="the script needs the kyber-py module in tlsfuzzer's environment")
            return res
        mode = MODES[job.mode]
        srvlog = self.logs / f"{slug}.server.log"
        srvlog.write_text("")
        cookie = job.cookie and spec.cookie_ok()
        proc, port, why = self.start_server(spec, mode, srvlog, cookie)
        if proc is None:
            res.update(status="skipped" if "has no" in why or "cannot" in why or "only" in why else "error",
                       reason=why)
            return res
        args = job.args_for(kind) + (["--cookie"] if cookie else [])
        res["args"] = self.expand(args)
        log = self.logs / f"{slug}.log"
        timeout = job.timeout if self.opts.timeout is None else self.opts.timeout
        rc, took = self.run_script(job, args, port, timeout, log)
        res.update(rc=rc, seconds=round(took, 1), timed_out=rc is None, log=str(log.relative_to(self.out)))
        res.update(parse_log(log.read_text(errors="replace")))
        if proc.poll() is not None:
            res["crash"] = True
            res["server_rc"] = proc.returncode
            self.stop_server(proc)
            proc, port, why = self.start_server(spec, mode, srvlog, cookie)
        # sanity: the server still completes a normal handshake (a fixed probe per mode)
        if proc is not None:
            sscript, sargs = mode.sanity
            src, _ = self.run_script(sscript, list(sargs), port, 60, self.logs / f"{slug}.sanity.log")
            sanity_text = (self.logs / f"{slug}.sanity.log").read_text(errors="replace")
            res["sanity_ok"] = src == 0 and re.search(r"^PASS: [1-9]", sanity_text, re.M) is not None
            if proc.poll() is not None:
                res["crash"] = True
            self.stop_server(proc)
        else:
            res["sanity_ok"] = False
        return res

    def worker(self, kind: str, jobs: list[Job]) -> None:
        spec = ServerSpec(kind, self.opts, self.certs, self.clientkeys)
        for job in jobs:
            r = self.run_job(job, kind, spec)
            c = r.get("counts", {})
            print(f"[{kind:7}] {job.name:55} {r['status']:7} pass={c.get('PASS', '-')} "
                  f"fail={c.get('FAIL', '-')} xpass={c.get('XPASS', '-')} "
                  f"{'TIMEOUT ' if r.get('timed_out') else ''}{'CRASH ' if r.get('crash') else ''}"
                  f"{'' if r.get('sanity_ok', True) else 'SANITY-FAILED '}{r.get('reason', '')}", flush=True)
            with self.lock:
                self.results.setdefault(job.name, {})[kind] = r
                self.save()

    def save(self) -> None:
        jobs = JOBS if self.opts.merge else self.selected
        data = {"environment": self.environment,
                "jobs": [{"name": j.name, "script": j.script, "mode": j.mode, "note": j.note,
                          "declined": j.declined, "results": self.results.get(j.name, {})} for j in jobs]}
        (self.out / "results.json").write_text(json.dumps(data, indent=1))
        (self.out / "results.md").write_text(render_markdown(data))

    def run(self) -> None:
        self.selected = [j for j in JOBS if not self.opts.only or any(o in j.name for o in self.opts.only)]
        kinds = [k for k in self.opts.servers.split(",") if k]
        threads = [threading.Thread(target=self.worker, args=(k, self.selected)) for k in kinds]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.save()


# ---------------------------------------------------------------- markdown
def cell(r: Optional[dict]) -> str:
    if not r:
        return "–"
    if r["status"] != "ran":
        return f"n/a ({r.get('reason', '')})"
    c = r.get("counts", {})
    if not c:
        s = "no summary"
    else:
        s = f"{c.get('PASS', 0)}/{c.get('FAIL', 0)}"
        if c.get("XFAIL"):
            s += f" (xfail {c['XFAIL']})"
        if c.get("XPASS"):
            s += f" (xpass {c['XPASS']})"
    if r.get("timed_out"):
        s += " TIMEOUT"
    if r.get("crash"):
        s += " **CRASH**"
    if not r.get("sanity_ok", True):
        s += " sanity-failed"
    return s


def fully_passes(r: Optional[dict]) -> bool:
    if not r or r["status"] != "ran" or r.get("timed_out") or r.get("crash") or not r.get("sanity_ok"):
        return False
    c = r.get("counts", {})
    return bool(c) and c.get("FAIL", 0) == 0 and c.get("XPASS", 0) == 0 and r.get("rc") == 0


def render_markdown(data: dict) -> str:
    rows = ["| script | args | tcpls pass/fail | openssl pass/fail | fully passes? (tcpls / openssl) | note |",
            "|---|---|---|---|---|---|"]
    for j in data["jobs"]:
        rs = j["results"]
        t, o = rs.get("tcpls"), rs.get("openssl")
        args = " ".join((t or o or {}).get("args", []))
        args = re.sub(r"\S*/client-certs/", "", args)
        if len(args) > 80:
            args = args[:77] + "..."
        fp = " / ".join(("yes" if fully_passes(r) else ("–" if not r or r["status"] != "ran" else "no"))
                        for r in (t, o))
        note = j["note"]
        if j.get("declined"):
            note = ("not applicable (declined): " + j["declined"] + (". " + note if note else "")).strip()
        rows.append(f"| {j['name']} | `{args}` | {cell(t)} | {cell(o)} | {fp} | {note} |".replace("``", ""))
    env = data.get("environment", {})
    out = ["Environment: " + ", ".join(f"{k} `{v}`" for k, v in env.items()), "",
           "Counts are probes passed/failed as tlsfuzzer reports them (xfail = expected failures).", ""]
    out += rows
    out += ["", "## Failing probes", ""]
    for j in data["jobs"]:
        for kind, r in sorted(j["results"].items()):
            if r.get("status") == "ran" and r.get("failed"):
                out.append(f"### {j['name']} — {kind}")
                out.append("")
                for name in r["failed"]:
                    d = r.get("details", {}).get(name, {})
                    out.append(f"- `{name}`: {d.get('node', '')} → {d.get('error', '')}")
                out.append("")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tlsfuzzer", required=True, help="tlsfuzzer checkout (with scripts/, tlsfuzzer/, tests/)")
    ap.add_argument("--python", required=True, help="python with tlslite-ng==0.9.0b2 and ecdsa installed")
    ap.add_argument("--certs", help="directory of tlsfuzzer's test certificates (default: TLSFUZZER/tests)")
    ap.add_argument("--tcpls-python", default=sys.executable, help="python that runs `-m tcpls` (default: this one)")
    ap.add_argument("--openssl", default=shutil.which("openssl") or "openssl")
    ap.add_argument("--servers", default="tcpls,openssl", help="comma separated: tcpls,openssl")
    ap.add_argument("--only", action="append", help="run only jobs whose name contains this (repeatable)")
    ap.add_argument("--timeout", type=int, help="per-script timeout in seconds (default: per job, 300)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the results of jobs not run now from OUT/results.json (with --only)")
    ap.add_argument("--out", default="conformance-out", help="directory for logs, results.json, results.md")
    opts = ap.parse_args()
    Runner(opts).run()
    print(f"results: {Path(opts.out) / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
