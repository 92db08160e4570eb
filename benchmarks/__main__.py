"""``python -m moerules.benchmarks`` (or ``moerules bench``): every figure and ratio in one run.

1. mapping only: the reference bundle compiled, against the same mapping written by hand;
2. end to end: the dry run over generated mParticle batches, against a bare orjson loop, with
   peak RSS at a tenth of the input and at all of it;
3. every shipped bundle's compiled event mapping;
4. start-up: ``moerules validate rules``.

``--quick`` scales every size down tenfold for a smoke run (the targets are not judged then).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

TARGET_MAPPING = 0.9
TARGET_DRYRUN = 0.5
TARGET_RSS_GROWTH = 1.2


def _versions() -> str:
    names = ("moerules", "orjson", "msgspec", "jmespath", "jinja2")
    found = ", ".join(f"{n} {version(n)}" for n in names)
    return f"python {platform.python_version()} ({platform.python_implementation()}), {found}"


def _mark(ok: bool, judged: bool) -> str:
    if not judged:
        return "(quick run: not judged)"
    return "ok" if ok else "MISSED"


def _startup(runs: int) -> tuple[float, list[str]]:
    """Median wall time of ``moerules validate rules`` in a subprocess."""
    from moerules.engine.rules.overlay import rules_dir

    script = Path(sys.executable).with_name("moerules")
    found = str(script) if script.exists() else shutil.which("moerules")
    cmd = (
        [found, "validate", "rules"]
        if found
        else [sys.executable, "-m", "moerules.engine.cli", "validate", "rules"]
    )
    cwd = rules_dir().parent
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times), cmd


def _shipped(batches: int, runs: int, seed: int) -> list[tuple[str, int, float]]:
    from moerules.benchmarks.generate import batches as generate
    from moerules.benchmarks.mapping import events_per_second
    from moerules.engine.api import load_bundle
    from moerules.engine.errors import RecordError
    from moerules.engine.rules.overlay import shipped_bundles

    pairs = [(b, e) for b in generate(batches, seed) for e in b["events"]]
    out = []
    for name in shipped_bundles():
        event = load_bundle(name, env={}).event

        def mapped(
            batch: dict[str, Any], ev: dict[str, Any], event: Callable[..., Any] = event
        ) -> Any:
            try:  # as the pipeline calls it: a record error dead-letters that event
                return event(batch, ev)
            except RecordError:
                return None

        out.append((name, len(pairs), events_per_second(mapped, pairs, runs)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moerules.benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="sizes / 10, fewer runs")
    parser.add_argument("--seed", type=int, default=42, help="data generator seed (42)")
    args = parser.parse_args(argv)
    scale, judged = (10, False) if args.quick else (1, True)
    events, batches, shipped_batches = 50_000 // scale, 200_000 // scale, 15_000 // scale
    runs = 3 if args.quick else 7

    from moerules.benchmarks import dryrun, mapping
    from moerules.benchmarks.generate import write_jsonl

    print(f"moerules benchmarks  {time.strftime('%Y-%m-%d %H:%M:%S')}")
    print(f"  {_versions()}")
    print(
        f"  {platform.platform()}, {os.cpu_count()} CPUs; seed {args.seed}"
        f"{'; --quick' if args.quick else ''}"
    )
    failed = False

    print("\n1. mapping only: mParticle commerce event -> MoEngage event action")
    m = mapping.run(events, runs, args.seed)
    ok = m["ratio"] >= TARGET_MAPPING
    failed |= judged and not ok
    print(
        f"  {m['events']:,} events ({m['mapped']:,} mapped); outputs identical; "
        f"median of {m['runs']} runs"
    )
    print(f"  compiled bundle   {m['compiled']:>12,.0f} events/s")
    print(f"  hand-written      {m['handwritten']:>12,.0f} events/s")
    print(
        f"  ratio             {m['ratio']:>12.3f}   target >= {TARGET_MAPPING}  {_mark(ok, judged)}"
    )

    print(f"\n2. end to end: dry run ({dryrun.BUNDLE}, 2 projects) vs orjson loads+dumps")
    with tempfile.TemporaryDirectory(prefix="moerules-bench-") as tmp:
        path = Path(tmp) / "batches.jsonl"
        started = time.perf_counter()
        size = write_jsonl(path, batches, args.seed)
        generated = time.perf_counter() - started
        d = dryrun.run(path, batches, 3 if judged else 1)
    ok = d["ratio"] >= TARGET_DRYRUN
    failed |= judged and not ok
    print(
        f"  {batches:,} batches, {d['events']:,} events ({d['events'] / batches:.1f} a batch), "
        f"{size / 2**20:.0f} MiB ({size / batches / 1024:.1f} KiB a batch), generated in "
        f"{generated:.0f} s"
    )
    print(
        f"  -> {d['requests']:,} requests; report balanced: {d['balanced']}; median of "
        f"{d['runs']} runs, each in its own process"
    )
    print(
        f"  dry run           {d['dryrun']:>12,.0f} batches/s  "
        f"({d['dryrun'] * d['events'] / d['lines']:,.0f} events/s)"
    )
    print(f"  orjson loop       {d['orjson']:>12,.0f} batches/s")
    print(
        f"  ratio             {d['ratio']:>12.3f}   target >= {TARGET_DRYRUN}  {_mark(ok, judged)}"
    )
    ok = d["rss_growth"] <= TARGET_RSS_GROWTH
    failed |= judged and not ok
    print(
        f"  peak RSS          {d['rss_small']:>8.1f} MiB at {batches // 10:,} batches, "
        f"{d['rss_big']:.1f} MiB at {batches:,} (orjson loop {d['rss_orjson']:.1f} MiB)"
    )
    print(
        f"  RSS growth        {d['rss_growth']:>12.3f}   target <= {TARGET_RSS_GROWTH} for 10x "
        f"the input  {_mark(ok, judged)}"
    )

    print("\n3. shipped bundles: compiled event mapping, mixed event types")
    for name, count, rate in _shipped(shipped_batches, runs, args.seed):
        print(f"  {name:<28} {rate:>12,.0f} events/s  ({count:,} events, median of {runs})")

    print("\n4. start-up")
    startup_runs = 3 if args.quick else 5
    wall, cmd = _startup(startup_runs)
    print(
        f"  moerules validate rules   {wall:>8.3f} s wall (median of {startup_runs}; "
        f"{Path(cmd[0]).name} ... in a subprocess)"
    )

    if judged:
        print("\nall targets met" if not failed else "\nSOME TARGETS MISSED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
