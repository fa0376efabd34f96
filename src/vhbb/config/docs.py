"""Render the config schema as the Markdown config reference (``docs/config.md``).

``python -m vhbb.config.docs`` rewrites the file; a test fails when it is out of date.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from vhbb.config.loading import SCHEMA_PATH, load_schema

# a development tool of the repository (the package itself does not need docs/)
REPO_ROOT = Path(__file__).resolve().parents[3]
OUTPUT = REPO_ROOT / "docs" / "config.md"


def _type(node: dict[str, Any]) -> str:
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    if "$ref" in node:
        return node["$ref"].rsplit("/", 1)[-1]
    t = node.get("type", "")
    if t == "array" and "items" in node:
        return f"list of {_type(node['items']) or 'values'}"
    if t == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"mapping name → {_type(node['additionalProperties']) or 'object'}"
    return t if isinstance(t, str) else " \\| ".join(t)


def _rows(node: dict[str, Any], prefix: str, defs: dict[str, Any]) -> list[str]:
    rows = []
    for name, sub in node.get("properties", {}).items():
        key = f"{prefix}.{name}" if prefix else name
        if "$ref" in sub:
            sub = {
                **defs[sub["$ref"].rsplit("/", 1)[-1]],
                **{k: v for k, v in sub.items() if k != "$ref"},
            }
        default = json.dumps(sub["default"]) if "default" in sub else ""
        desc = " ".join(str(sub.get("description", "")).split())
        rows.append(f"| `{key}` | {_type(sub)} | {default and f'`{default}`'} | {desc} |")
        rows += _rows(sub, key, defs)
        extra = sub.get("additionalProperties")
        if isinstance(extra, dict):
            if "$ref" in extra:
                extra = defs[extra["$ref"].rsplit("/", 1)[-1]]
            rows += _rows(extra, f"{key}.<name>", defs)
    return rows


def render(schema: dict[str, Any] | None = None) -> str:
    schema = load_schema(SCHEMA_PATH) if schema is None else schema
    defs = schema.get("$defs", {})
    lines = [
        "# Config reference",
        "",
        "Generated from `src/vhbb/config/schemas/config.schema.yaml` by "
        "`python -m vhbb.config.docs`",
        "(a test checks it is up to date). Unknown keys are errors everywhere.",
        "",
        "| key | type | default | description |",
        "| --- | --- | --- | --- |",
        *_rows(schema, "", defs),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(render())
    sys.stderr.write(f"wrote {OUTPUT}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
