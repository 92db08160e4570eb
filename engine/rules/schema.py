"""The JSON Schema of bundle files, for editors (yaml-language-server, VS Code).

``source`` and ``destination`` are described per connector: the ``connector`` names the
installed ones (the ``moerules.connectors`` entry points), and ``settings`` follows the
named connector's settings model, so an editor completes and checks settings too.
"""

from __future__ import annotations

from typing import Any

from moerules.engine.compile.transforms import TRANSFORMS
from moerules.engine.connector import Sink, Source, connector_names, load_connector
from moerules.engine.rules.model import Bundle
from moerules.engine.rules.settings import settings_model_of, settings_schema

__all__ = ["bundle_schema"]


def bundle_schema() -> dict[str, Any]:
    schema = Bundle.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "moerules bundle"
    defs = schema.setdefault("$defs", {})
    defs["TransformName"] = {
        "enum": sorted(TRANSFORMS),
        "description": "; ".join(f"{t.name}: {t.doc}" for t in TRANSFORMS.values()),
    }
    connectors = {
        name: cls for name in connector_names() if (cls := load_connector(name)) is not None
    }
    for role, kind, title in (
        ("source", Source, "SourceRef"),
        ("destination", Sink, "DestinationRef"),
    ):
        names = sorted(n for n, cls in connectors.items() if issubclass(cls, kind))
        branches = []
        for name in names:
            model = settings_model_of(connectors[name])
            model_schema = settings_schema(model)
            defs.update(model_schema.pop("$defs", {}))
            defs[model.__name__] = model_schema
            branches.append(
                {
                    "if": {"properties": {"connector": {"const": name}}, "required": ["connector"]},
                    "then": {"properties": {"settings": {"$ref": f"#/$defs/{model.__name__}"}}},
                }
            )
        defs[title] = {
            "type": "object",
            "description": f"the {role} connector and its settings",
            "additionalProperties": False,
            "required": ["connector"],
            "properties": {
                "connector": {"enum": names, "description": f"an installed {role} connector"},
                "settings": {"type": "object", "description": "the connector's settings"},
            },
            "allOf": branches,
        }
        schema["properties"][role] = {"$ref": f"#/$defs/{title}"}
    defs.pop("ConnectorRef", None)
    return schema
