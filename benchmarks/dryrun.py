"""End to end: the dry run over a JSON Lines file against a bare orjson loop, in subprocesses.

Each measurement runs in a fresh interpreter (``python -m moerules.benchmarks.dryrun --child ...``),
which times its own loop (imports and compiling the bundle excluded) and reports lines, seconds,
events and its peak RSS: ``VmHWM`` from ``/proc/self/status`` where there is one (a child's
``ru_maxrss`` starts at its parent's peak, inherited through fork), else ``ru_maxrss`` of the
child from ``os.wait4``. The dry run is the shipped mParticle bundle with two portfolio projects
(so routing runs), the Data API key set (so secrets are scrubbed from every request line),
requests written to ``/dev/null``.

    python -m moerules.benchmarks.dryrun --child dryrun FILE LINES
    python -m moerules.benchmarks.dryrun --child orjson FILE LINES
"""

from __future__ import annotations

import itertools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

__all__ = ["BUNDLE", "SETS", "child", "measure", "run"]

BUNDLE = "mparticle-to-moengage"
SETS = [
    "routing.projects=[{name: Brand A, code: BRANDA01}, {name: Brand B, code: BRANDB01}]",
    "identity.precedence=[customer_id, email]",
]
ENV = {"MOENGAGE_WORKSPACE_ID": "BENCHWS01", "MOENGAGE_DATA_API_KEY": "bench-secret-key"}


def _peak_rss_mib() -> float | None:
    """This process's own peak resident set (VmHWM), in MiB; None where /proc has none."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def child(mode: str, path: str, limit: int) -> dict[str, Any]:
    """Run one measurement in this process; the figures as a dict."""
    figures = _measure(mode, path, limit)
    figures["peak_rss_mib"] = _peak_rss_mib()
    return figures


def _measure(mode: str, path: str, limit: int) -> dict[str, Any]:
    with open(os.devnull, "wb") as sink:
        if mode == "orjson":
            loads, dumps, write = orjson.loads, orjson.dumps, sink.write
            lines = 0
            started = time.perf_counter()
            with open(path, "rb") as fh:
                for line in itertools.islice(fh, limit):
                    write(dumps(loads(line)))
                    lines += 1
            return {"lines": lines, "seconds": time.perf_counter() - started}
        from moerules.engine.api import dry_run, iter_lines, load_bundle

        compiled = load_bundle(BUNDLE, SETS, env=ENV)
        started = time.perf_counter()
        report = dry_run(compiled, itertools.islice(iter_lines(path), limit), sink)
        seconds = time.perf_counter() - started
        return {
            "lines": report.lines_in,
            "seconds": seconds,
            "events": report.events_in,
            "requests": report.requests,
            "delivered": report.delivered,
            "balanced": report.balanced(),
        }


def measure(mode: str, path: Path, limit: int) -> dict[str, Any]:
    """Run ``child`` in a subprocess; its figures plus its peak RSS in MiB."""
    child = "moerules.benchmarks.dryrun"
    cmd = [sys.executable, "-m", child, "--child", mode, str(path), str(limit)]
    env = dict(os.environ)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}")
    figures: dict[str, Any] = orjson.loads(out)
    scale = 1 if sys.platform != "darwin" else 1024  # ru_maxrss: KiB on Linux, bytes on macOS
    figures["rss_mib"] = figures["peak_rss_mib"] or usage.ru_maxrss / 1024 / scale
    return figures


def run(path: Path, lines: int, runs: int = 3) -> dict[str, Any]:
    """Dry run vs the orjson loop over ``lines`` lines (median of ``runs`` each, alternating),
    and the dry run's peak RSS over a tenth of the lines and over all of them."""
    dry: list[dict[str, Any]] = []
    bare: list[dict[str, Any]] = []
    for _ in range(runs):
        dry.append(measure("dryrun", path, lines))
        bare.append(measure("orjson", path, lines))
    small = measure("dryrun", path, lines // 10)
    dry_rate = lines / statistics.median(d["seconds"] for d in dry)
    bare_rate = lines / statistics.median(b["seconds"] for b in bare)
    rss_big = max(d["rss_mib"] for d in dry)
    return {
        "lines": lines,
        "events": dry[0]["events"],
        "requests": dry[0]["requests"],
        "balanced": all(d["balanced"] for d in dry),
        "runs": runs,
        "dryrun": dry_rate,
        "orjson": bare_rate,
        "ratio": dry_rate / bare_rate,
        "rss_small": small["rss_mib"],
        "rss_big": rss_big,
        "rss_orjson": max(b["rss_mib"] for b in bare),
        "rss_growth": rss_big / small["rss_mib"],
    }


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        sys.stdout.buffer.write(orjson.dumps(child(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
    else:
        sys.exit(__doc__)
