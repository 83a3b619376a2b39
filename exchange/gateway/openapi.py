"""The OpenAPI 3.1 document, generated from the registered routes (the gateway's own
and every subsystem's) and the pydantic models of their bodies.

``voltbourse docs`` writes it to ``docs/openapi.json``; ``GET /api/openapi.json``
serves it; a drift test keeps the two equal."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from exchange import __version__
from exchange.gateway.http import Route, ref

ERROR_SCHEMA = {
    "type": "object", "required": ["error", "message", "request_id"],
    "properties": {"error": {"type": "string", "description": "machine-readable code (docs/errors.md)"},
                   "message": {"type": "string", "description": "human-readable text"},
                   "request_id": {"type": "string",
                                  "description": "the request's id, also in the X-Request-Id header: the caller's "
                                                 "own X-Request-Id when it sent a sane one, else a new one; the "
                                                 "server's log line of the refusal names it"},
                   "details": {"type": "array", "items": {"type": "object"},
                               "description": "validation errors (INVALID_REQUEST)"}}}
ERROR_TEXT = {400: "Invalid JSON or parameter", 401: "Not authenticated (UNAUTHENTICATED, BAD_SIGNATURE)",
              403: "Not the operator token (FORBIDDEN)", 404: "Unknown member, product or resource",
              409: "Conflict: the request cannot be applied in the current state (its reason code)",
              413: "Body too large", 422: "Body or query failed validation (INVALID_REQUEST)",
              429: "Too many requests", 503: "Operator API disabled, or market/subsystem unavailable"}
_PARAM = re.compile(r"{(\w+)}")


def _operation(r: Route) -> dict:
    op: dict[str, Any] = {"summary": r.summary, "tags": list(r.tags),
                          "operationId": r.handler.__name__ if r.handler else
                          r.path.strip("/").replace("/", "_").replace(".", "_").replace("{", "").replace("}", "")}
    if r.description:
        op["description"] = r.description
    params = [{"name": n, "in": "path", "required": True, "schema": r.path_params.get(n, {"type": "string"})}
              for n in _PARAM.findall(r.path)]
    params += [{"name": n, "in": "query", "required": n in r.required_query, "schema": s, "description": d}
               for n, s, d in r.query]
    if params:
        op["parameters"] = params
    if r.body is not None:
        op["requestBody"] = {"required": not r.body_optional,
                             "content": {"application/json": {"schema": ref(r.body.__name__)}}}
    ok: dict[str, Any] = {"description": "Switching Protocols" if r.status == 101 else "OK"}
    if r.response:
        ok["content"] = {r.content_type: {"schema": r.response}}
    responses: dict[str, Any] = {str(r.status): ok}
    statuses = set(r.errors)
    if "operator" in r.tags:
        op["security"] = [{"operatorToken": []}]
        statuses |= {401, 403, 503}
    if r.body is not None:
        statuses |= {400, 422}
    for s in sorted(statuses):
        responses[str(s)] = {"description": ERROR_TEXT[s], "content": {"application/json": {"schema": ref("Error")}}}
    op["responses"] = responses
    return op


def build_openapi(routes: Sequence[Route], *, schemas: dict[str, dict] | None = None,
                  models: Iterable[tuple[type[BaseModel], str]] = ()) -> dict:
    """The document for ``routes``; request bodies' models become components, plus
    ``models`` ((model, "validation"|"serialization")) and hand-written ``schemas``."""
    wanted: dict[type[BaseModel], str] = {}
    for r in routes:
        if r.body is not None:
            wanted.setdefault(r.body, "validation")
    for m, mode in models:
        wanted.setdefault(m, mode)
    _, defs = models_json_schema(list(wanted.items()), ref_template="#/components/schemas/{model}")  # type: ignore[arg-type]
    components = {**defs.get("$defs", {}), **(schemas or {}), "Error": ERROR_SCHEMA}
    paths: dict[str, dict] = {}
    for r in routes:
        paths.setdefault(r.path, {})[r.method.lower()] = _operation(r)
    tags = sorted({t for r in routes for t in r.tags})
    return {
        "openapi": "3.1.0",
        "info": {"title": "Voltbourse HTTP API", "version": __version__,
                 "description": "Public market views, the operator API and every subsystem's routes of a "
                                "Voltbourse market. Units: energy in Wh, power in W, prices in ticks of 0.01 "
                                "EUR/MWh, money in units of 1e-8 EUR, times UTC. Errors: "
                                "{\"error\": CODE, \"message\": text} (docs/errors.md). See docs/rest.md."},
        "servers": [{"url": "http://127.0.0.1:8080"}],
        "tags": [{"name": t, "description": _TAG_TEXT.get(t, t)} for t in tags],
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(sorted(components.items())),
                       "securitySchemes": {"operatorToken": {"type": "http", "scheme": "bearer",
                                                             "description": "the OPERATOR_TOKEN setting"}}},
    }


_TAG_TEXT = {"public": "no authentication", "operator": "Authorization: Bearer <operator token>",
             "member": "signed by the member's key (see the route)"}
