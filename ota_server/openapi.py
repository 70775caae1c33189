"""The OpenAPI document served at /openapi.json.

It is written by hand (ota_server/openapi.json), not generated from the route table, so the
test that compares it with the real routes checks something: every route documented and every
documented route real.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def document() -> dict[str, Any]:
    text = (resources.files("ota_server") / "openapi.json").read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc
