"""Mapping speed: the compiled reference bundle against the same mapping written by hand.

Both produce ``(project code or None, MoEngage event action)`` per (batch, event); their outputs
are compared (serialised, so key order counts too) before anything is timed. The compiled side
is what the engine runs per event: the bundle's ``event`` function, then the action dict built
as ``connectors/moengage.py`` builds it, and the routed project's code looked up as
``engine/pipeline.py`` does. Runs alternate between the two so that drift in the machine's speed
hits both alike; the figure is the median run. The garbage collector is off while timing, as
in ``timeit``.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from moerules.benchmarks.generate import commerce_pairs
from moerules.benchmarks.handwritten import map_event
from moerules.engine.api import load_bundle
from moerules.engine.compile.compiler import CompiledBundle

__all__ = ["REFERENCE", "compiled_mapper", "events_per_second", "run", "verify"]

REFERENCE = Path(__file__).parent / "reference" / "bundle.yaml"
Pair = tuple[dict[str, Any], dict[str, Any]]
Output = tuple[str | None, dict[str, Any]] | None


def load_reference() -> CompiledBundle:
    return load_bundle(REFERENCE, env={})


def compiled_mapper(compiled: CompiledBundle) -> Callable[[dict[str, Any], dict[str, Any]], Output]:
    """The compiled mapping as a function with the hand-written one's output (for checking)."""
    event, codes = compiled.event, [code for _, code in compiled.projects]
    drops = compiled.drop_reasons

    def mapped(batch: dict[str, Any], ev: dict[str, Any]) -> Output:
        m = event(batch, ev)
        if m.rule < 0 or drops[m.rule] is not None:
            return None
        action = {"action": m.name, "attributes": m.attributes, **(m.fields or {})}
        return (codes[m.route] if m.route >= 0 else None), action

    return mapped


def verify(compiled: CompiledBundle, pairs: Iterable[Pair]) -> int:
    """Check both mappings give the same output for every pair; return how many mapped."""
    mapped = compiled_mapper(compiled)
    count = 0
    for i, (batch, ev) in enumerate(pairs):
        ours, theirs = mapped(batch, ev), map_event(batch, ev)
        if orjson.dumps(ours) != orjson.dumps(theirs):
            raise AssertionError(f"event {i}: compiled {ours!r} != hand-written {theirs!r}")
        count += ours is not None
    return count


def _time_compiled(compiled: CompiledBundle, pairs: list[Pair]) -> float:
    event, codes = compiled.event, [code for _, code in compiled.projects]
    action = project = None
    started = time.perf_counter()
    for batch, ev in pairs:
        m = event(batch, ev)
        if m.rule >= 0:  # the reference bundle's one rule maps, and has fields
            action = {"action": m.name, "attributes": m.attributes, **m.fields}  # type: ignore[dict-item]  # (its one rule has fields)
            project = codes[m.route] if m.route >= 0 else None
    elapsed = time.perf_counter() - started
    del action, project
    return elapsed


def _time_handwritten(pairs: list[Pair]) -> float:
    out = None
    started = time.perf_counter()
    for batch, ev in pairs:
        out = map_event(batch, ev)
    elapsed = time.perf_counter() - started
    del out
    return elapsed


def events_per_second(
    fn: Callable[[dict[str, Any], dict[str, Any]], Any], pairs: list[Pair], runs: int
) -> float:
    """Median events/s of any (batch, event) mapping function (shipped bundles)."""
    times = []
    gc.collect()
    gc.disable()
    try:
        out = fn(*pairs[0])
        for _ in range(runs):
            started = time.perf_counter()
            for batch, ev in pairs:
                out = fn(batch, ev)
            times.append(time.perf_counter() - started)
            del out
    finally:
        gc.enable()
    return len(pairs) / statistics.median(times)


def run(events: int = 50_000, runs: int = 7, seed: int = 42) -> dict[str, Any]:
    """Verify, then time both mappings; events/s (median of ``runs``) and their ratio."""
    compiled = load_reference()
    pairs = commerce_pairs(events, seed)
    mapped = verify(compiled, pairs)
    compiled_times: list[float] = []
    hand_times: list[float] = []
    gc.collect()
    gc.disable()
    try:
        _time_compiled(compiled, pairs[:1000])  # warm up both
        _time_handwritten(pairs[:1000])
        for _ in range(runs):
            compiled_times.append(_time_compiled(compiled, pairs))
            hand_times.append(_time_handwritten(pairs))
    finally:
        gc.enable()
    compiled_rate = events / statistics.median(compiled_times)
    hand_rate = events / statistics.median(hand_times)
    return {
        "events": events,
        "mapped": mapped,
        "runs": runs,
        "compiled": compiled_rate,
        "handwritten": hand_rate,
        "ratio": compiled_rate / hand_rate,
    }
