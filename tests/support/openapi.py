"""Checks that an answer of the service is one its OpenAPI document describes (status, error code,
headers), for the route that gave it."""

from __future__ import annotations

import re
from typing import Any, Mapping

from kws.serving.openapi_errors import ERRORS


def template_of(doc: dict[str, Any], path: str) -> str | None:
    """The document's path template (``/stream/{session}``) for a request path (``/api/stream/abc``)."""
    path = path.split("?", 1)[0]
    if path.startswith("/api/"):
        path = path[len("/api"):]
    for template in doc["paths"]:
        if re.fullmatch(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)), path):
            return template
    return None


def undocumented(doc: dict[str, Any], method: str, path: str, status: int, code: str | None,
                 headers: Mapping[str, str]) -> str | None:
    """What the document lacks to describe this answer, or None when it describes it."""
    template = template_of(doc, path)
    where = f"{method} {path} -> {status} {code}"
    if code == "not_found" and template is None:
        return None if "NotFound" in doc["components"]["responses"] else f"{where}: no NotFound response"
    if template is None:
        return f"{where}: the path is not in the document"
    ops = doc["paths"][template]
    if code == "method_not_allowed":
        spec = doc["components"]["responses"].get("MethodNotAllowed", {})
        if method.lower() in ops:
            return f"{where}: the document lists {method} at {template}"
        return None if "Allow" in spec.get("headers", {}) and "Allow" in headers else f"{where}: Allow not documented"
    op = ops.get(method.lower())
    if op is None:
        return f"{where}: no {method} operation at {template}"
    spec = op["responses"].get(str(status))
    if spec is None:
        return f"{where}: status {status} not documented (documented: {sorted(op['responses'])})"
    if status < 400:
        return None
    if code not in spec.get("content", {}).get("application/json", {}).get("examples", {}):
        return f"{where}: code {code!r} not documented under {status}"
    enum = doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
    if code not in enum:
        return f"{where}: {code!r} not in the Error schema's codes"
    sent, told = "Retry-After" in headers, "Retry-After" in spec.get("headers", {})
    if sent and not told:
        return f"{where}: sent with Retry-After, which is not documented"
    if ERRORS[code].retry_after != sent:
        return f"{where}: Retry-After {'sent' if sent else 'missing'}, the catalogue says otherwise"
    return None


def assert_documented(doc: dict[str, Any], method: str, path: str, status: int, body: Any,
                      headers: Mapping[str, str]) -> None:
    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
    problem = undocumented(doc, method, path, status, code, headers)
    assert problem is None, problem
