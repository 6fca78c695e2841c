"""``tcpls plot``: goodput log parsing, binning, and the image it writes."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

import pytest

from tcpls.cli.plot import GoodputLogError, goodput_series, read_log

LOG = "time,conn_id,bytes\n0.05,0,125000\n0.15,0,62500\n0.16,1,125000\n0.30,1,250000\n"


def test_read_log_rows():
    assert read_log(io.StringIO(LOG)) == [(0.05, 0, 125000), (0.15, 0, 62500), (0.16, 1, 125000), (0.30, 1, 250000)]


def test_binning_per_connection_and_total():
    series = goodput_series(read_log(io.StringIO(LOG)), 0.1)
    by_id = {s.conn_id: s for s in series}
    assert set(by_id) == {0, 1, None}
    assert by_id[0].times == pytest.approx([0.0, 0.1, 0.2, 0.3])
    # 125000 bytes in 0.1 s = 10 Mbit/s
    assert by_id[0].mbps == pytest.approx([10.0, 5.0, 0.0, 0.0])
    assert by_id[1].mbps == pytest.approx([0.0, 10.0, 0.0, 20.0])
    assert by_id[None].mbps == pytest.approx([10.0, 15.0, 0.0, 20.0])


def test_single_connection_has_no_total():
    series = goodput_series([(0.0, 3, 1000), (1.9, 3, 1000)], 1.0)
    assert [s.conn_id for s in series] == [3]
    assert series[0].mbps == pytest.approx([0.008, 0.008])


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("t,c,b\n", "header"),
        ("time,conn_id,bytes\n0.1,0\n", "line 2: expected 3 fields"),
        ("time,conn_id,bytes\n0.1,0,1\nx,0,1\n", "line 3: not a number"),
        ("time,conn_id,bytes\n-1,0,1\n", "negative"),
        ("time,conn_id,bytes\nnan,0,1\n", "non-finite"),
    ],
)
def test_malformed_logs_are_rejected_with_the_line(text, message):
    with pytest.raises(GoodputLogError, match=message):
        read_log(io.StringIO(text))


def _png_size_and_pixels(path):
    """Width, height and raw scanlines of an 8-bit RGB(A) PNG, decoded by hand."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None
    return header, zlib.decompress(idat)


def test_cli_draws_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib (the 'plot' extra) is not installed")
    log = tmp_path / "goodput.csv"
    log.write_text(LOG)
    out = tmp_path / "out.png"
    proc = subprocess.run(
        [sys.executable, "-m", "tcpls", "plot", str(log), "-o", str(out), "--title", "two paths"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "4 reads, 562500 bytes, 2 connection(s)" in proc.stderr
    (width, height, depth, color, *_), raw = _png_size_and_pixels(out)
    assert (width, height, depth) == (800, 450, 8)
    # Not a blank canvas: the lines put more than one colour on the image.
    assert len(set(raw)) > 10


def test_cli_reports_a_bad_log(tmp_path):
    log = tmp_path / "bad.csv"
    log.write_text("time,conn_id,bytes\n1,2\n")
    proc = subprocess.run(
        [sys.executable, "-m", "tcpls", "plot", str(log), "-o", str(tmp_path / "o.png")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "line 2: expected 3 fields" in proc.stderr
    assert not (tmp_path / "o.png").exists()


def test_cli_missing_log(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tcpls", "plot", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "o.png")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "nope.csv: No such file or directory" in proc.stderr
