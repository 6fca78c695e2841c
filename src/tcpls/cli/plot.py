"""``tcpls plot GOODPUT_LOG -o out.png``: goodput over time, one line per path.

The log is what ``tcpls client --tcpls --goodput-log FILE`` writes: a CSV
with the header ``time,conn_id,bytes`` and one row per read (seconds since
the client started, the TCPLS connection the bytes arrived on, how many).
Bytes are summed into bins of ``--bin`` seconds and drawn as Mbit/s per
connection, plus the total when there is more than one connection.

matplotlib is an optional extra (``pip install 'tcpls[plot]'``); the parsing
and binning below do not need it.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass
from typing import Iterable, TextIO


class GoodputLogError(ValueError):
    """The goodput log is not in the ``time,conn_id,bytes`` format."""


@dataclass
class Series:
    """Goodput of one connection (or of all, ``conn_id`` None) per time bin."""

    conn_id: int | None
    times: list[float]  # start of each bin, seconds
    mbps: list[float]


def read_log(f: TextIO) -> list[tuple[float, int, int]]:
    """The rows of a goodput log, checked: ``(time, conn_id, bytes)``."""
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
        raise GoodputLogError("empty goodput log (expected the header 'time,conn_id,bytes')")
    if [h.strip() for h in header] != ["time", "conn_id", "bytes"]:
        raise GoodputLogError(f"line 1: expected the header 'time,conn_id,bytes', got {','.join(header)!r}")
    rows: list[tuple[float, int, int]] = []
    for lineno, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != 3:
            raise GoodputLogError(f"line {lineno}: expected 3 fields, got {len(row)}")
        try:
            t, cid, n = float(row[0]), int(row[1]), int(row[2])
        except ValueError:
            raise GoodputLogError(f"line {lineno}: not a number in {','.join(row)!r}") from None
        if not math.isfinite(t) or t < 0 or cid < 0 or n < 0:
            raise GoodputLogError(f"line {lineno}: negative or non-finite value in {','.join(row)!r}")
        rows.append((t, cid, n))
    return rows


def goodput_series(rows: Iterable[tuple[float, int, int]], bin_seconds: float) -> list[Series]:
    """Per-connection goodput in bins of ``bin_seconds``, then the total.

    Every series covers the same bins, from 0 to the last read; a bin with no
    read is 0 Mbit/s. The total is only added when there are several
    connections.
    """
    if not bin_seconds > 0:
        raise ValueError("bin width must be positive")
    rows = list(rows)
    if not rows:
        return []
    def bin_of(t: float) -> int:
        # t / width, not t // width: 0.3 // 0.1 is 2.0 in binary floating point.
        return math.floor(t / bin_seconds + 1e-9)

    nbins = bin_of(max(t for t, _, _ in rows)) + 1
    per: dict[int, list[int]] = {}
    for t, cid, n in rows:
        per.setdefault(cid, [0] * nbins)[bin_of(t)] += n
    times = [i * bin_seconds for i in range(nbins)]

    def mbps(counts: list[int]) -> list[float]:
        return [c * 8 / bin_seconds / 1e6 for c in counts]

    out = [Series(cid, times, mbps(counts)) for cid, counts in sorted(per.items())]
    if len(per) > 1:
        total = [sum(col) for col in zip(*per.values())]
        out.append(Series(None, times, mbps(total)))
    return out


def draw(series: list[Series], out_path: str, title: str | None = None) -> None:
    """Write the plot to ``out_path`` (format from its extension)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for s in series:
        label = "total" if s.conn_id is None else f"connection {s.conn_id}"
        style = {"linestyle": "--", "color": "black"} if s.conn_id is None else {}
        ax.step(s.times, s.mbps, where="post", label=label, **style)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("goodput (Mbit/s)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    if series:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("plot", help="draw goodput over time per path from a --goodput-log file (needs matplotlib)")
    p.add_argument("log", metavar="GOODPUT_LOG", help="CSV written by 'tcpls client --tcpls --goodput-log'")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="image to write (PNG, SVG, PDF by extension)")
    p.add_argument("--bin", type=float, default=0.1, metavar="SECONDS", help="width of a time bin (default 0.1 s)")
    p.add_argument("--title", help="plot title")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    if not args.bin > 0:
        print("tcpls plot: --bin must be positive", file=sys.stderr)
        return 2
    try:
        with open(args.log, newline="") as f:
            rows = read_log(f)
    except OSError as exc:
        print(f"tcpls plot: {args.log}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except GoodputLogError as exc:
        print(f"tcpls plot: {args.log}: {exc}", file=sys.stderr)
        return 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("tcpls plot: matplotlib is not installed (pip install 'tcpls[plot]')", file=sys.stderr)
        return 2
    series = goodput_series(rows, args.bin)
    try:
        draw(series, args.output, args.title)
    except (OSError, ValueError) as exc:
        print(f"tcpls plot: cannot write {args.output}: {exc}", file=sys.stderr)
        return 2
    total = sum(n for _, _, n in rows)
    print(f"tcpls plot: {len(rows)} reads, {total} bytes, {len({c for _, c, _ in rows})} connection(s) -> {args.output}",
          file=sys.stderr)
    return 0
