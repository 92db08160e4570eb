"""The JSON Schema of bundle files, for editors (yaml-language-server, VS Code)."""

from __future__ import annotations

from typing import Any

from moerules.engine.compile.transforms import TRANSFORMS
from moerules.engine.rules.model import Bundle

__all__ = ["bundle_schema"]


def bundle_schema() -> dict[str, Any]:
    schema = Bundle.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "moerules bundle"
    schema.setdefault("$defs", {})["TransformName"] = {
        "enum": sorted(TRANSFORMS),
        "description": "; ".join(f"{t.name}: {t.doc}" for t in TRANSFORMS.values()),
    }
    return schema
