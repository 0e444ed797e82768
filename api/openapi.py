"""The OpenAPI 3.1 document, generated from the route table and the msgspec types,
and the docs page (Swagger UI, served from the swagger-ui-py package's own files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from . import problems
from .endpoint import JSON, Spec
from .schemas import Health, Problem

_REF = "#/components/schemas/{name}"


def _content(schema: dict[str, Any], media_type: str = JSON) -> dict[str, Any]:
    return {"content": {media_type: {"schema": schema}}}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        **_content({"$ref": _REF.format(name="Problem")}, problems.MEDIA_TYPE),
    }


_STATUS_OF = {kind: status for (status, kind, _t) in problems.ENGINE_ERRORS.values()}
_STATUS_OF.update({"malformed-json": 400, "unauthorized": 401, "forbidden": 403,
                   "body-too-large": 413, "idempotency-in-progress": 409,
                   "unavailable": 503, "not-found": 404})  # fmt: skip


def _responses(spec: Spec, schema: dict[str, Any] | None) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": spec.summary}
    if schema is not None:
        ok.update(_content(schema))
    responses: dict[str, Any] = {str(spec.status): ok}
    kinds = {"unauthorized", "forbidden", "unavailable", *spec.errors}
    if any(p.where == "path" for p in spec.params):
        kinds.add("not-found")  # a path the router cannot match (a name with a newline)
    if spec.body is not None:
        kinds.update({"validation", "malformed-json"})
    if spec.mutating:
        kinds.update({"body-too-large", "idempotency-conflict", "idempotency-in-progress"})
    by_status: dict[int, list[str]] = {}
    for kind in sorted(kinds):
        by_status.setdefault(_STATUS_OF[kind], []).append(kind)
    if spec.mutating:  # a malformed Idempotency-Key header (see idempotency.check_key)
        by_status.setdefault(400, []).append("validation (Idempotency-Key)")
    for status, names in sorted(by_status.items()):
        responses[str(status)] = _problem("problem types: " + ", ".join(names))
    return responses


def _operation(spec: Spec, schemas: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    parameters = [
        {"name": p.name, "in": p.where, "required": p.required, "schema": p.schema,
         **({"description": p.description} if p.description else {}),
         **({"style": "form", "explode": True} if p.schema.get("type") == "array" else {})}
        for p in spec.params
    ]  # fmt: skip
    if spec.mutating:
        parameters.append({
            "name": "Idempotency-Key", "in": "header", "required": False,
            "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                       "pattern": "^[\\x20-\\x7e]+$"},
            "description": "A replay returns the first response; the same key with "
                           "another body gets 409.",
        })  # fmt: skip
    operation: dict[str, Any] = {
        "operationId": spec.name,
        "summary": spec.summary,
        "tags": [spec.path.split("/")[2]],
        "security": [{"apiKey": []}],
        "x-roles": sorted(r.value for r in spec.roles),
        "parameters": parameters,
        "responses": _responses(spec, schemas.get(spec.response)),
    }
    if spec.handler.__doc__:
        operation["description"] = spec.handler.__doc__
    if spec.body is not None:
        # A body whose fields are all optional may be left out: {} is assumed.
        required = not all(
            f.default is not msgspec.NODEFAULT or f.default_factory is not msgspec.NODEFAULT
            for f in msgspec.structs.fields(spec.body)
        )
        operation["requestBody"] = {"required": required, **_content(schemas[spec.body])}
    return operation


_PLAIN = {
    ("/healthz", "Liveness: the process answers"),
    ("/readyz", "Readiness: Redis and the ledger reachable, scripts loaded"),
}


def document(specs: tuple[Spec, ...], version: str) -> dict[str, Any]:
    types = [t for spec in specs for t in (spec.body, spec.response) if t is not None]
    types += [Problem, Health]
    unique = list(dict.fromkeys(types))
    refs, components = msgspec.json.schema_components(unique, ref_template=_REF)
    schemas = dict(zip(unique, refs, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for spec in specs:
        paths.setdefault(spec.path, {})[spec.method.lower()] = _operation(spec, schemas)
    for path, summary in sorted(_PLAIN):
        paths[path] = {"get": {
            "operationId": path.strip("/"), "summary": summary, "tags": ["operations"],
            "responses": {"200": {"description": "ready", **_content(schemas[Health])},
                          "503": {"description": "not ready", **_content(schemas[Health])}},
        }}  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "stockguard",
            "version": version,
            "description": "Stock reservation engine: reserve before payment, confirm after, "
            "and never oversell across channels. Errors are application/problem+json; "
            "their `type` ends in a stable name.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer",
                                           "description": "An API key: sg_<id>_<secret>"}},
        },
    }  # fmt: skip


def swagger_ui_dir() -> Path:
    import swagger_ui  # type: ignore[import-untyped]

    return Path(swagger_ui.__file__).parent / "static"


DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8"><title>stockguard API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui",
  deepLinking: true, persistAuthorization: true});
</script>
</body>
</html>
"""
