"""moerules' engine: load, validate and compile rule bundles; run them; explain and test them.

>>> from moerules import engine
>>> compiled = engine.load_bundle("mparticle-to-moengage")
>>> report = engine.dry_run(compiled, engine.iter_lines("input.jsonl"), sys.stdout.buffer)
"""

from moerules.engine.api import (
    collect_rule_files,
    dry_run,
    iter_lines,
    load_bundle,
    resolve_bundle,
    validate_paths,
)
from moerules.engine.authoring.explain import explain_record
from moerules.engine.compile.compiler import CompiledBundle, compile_bundle
from moerules.engine.connector import (
    BatchPolicy,
    Delivered,
    Fatal,
    Item,
    JsonArrayEncoder,
    Partial,
    RateLimit,
    Reject,
    Response,
    Retry,
    Sink,
    SinkEncoder,
    Source,
    Split,
    Verdict,
    WireRequest,
)
from moerules.engine.errors import (
    DeliveryError,
    InputError,
    MoerulesError,
    PermanentError,
    Position,
    Problem,
    RecordError,
    RetryableError,
    RuleError,
    SetupError,
    StateError,
    ThrottledError,
    TransformError,
)
from moerules.engine.runtime.report import RunReport

__all__ = [
    "BatchPolicy",
    "CompiledBundle",
    "Delivered",
    "DeliveryError",
    "Fatal",
    "InputError",
    "Item",
    "JsonArrayEncoder",
    "MoerulesError",
    "Partial",
    "PermanentError",
    "Position",
    "Problem",
    "RateLimit",
    "RecordError",
    "Reject",
    "Response",
    "Retry",
    "RetryableError",
    "RuleError",
    "RunReport",
    "SetupError",
    "Sink",
    "SinkEncoder",
    "Source",
    "Split",
    "StateError",
    "ThrottledError",
    "TransformError",
    "Verdict",
    "WireRequest",
    "collect_rule_files",
    "compile_bundle",
    "dry_run",
    "explain_record",
    "iter_lines",
    "load_bundle",
    "resolve_bundle",
    "validate_paths",
]
