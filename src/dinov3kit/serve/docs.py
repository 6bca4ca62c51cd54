"""The API documentation at /docs: the OpenAPI schema as one plain HTML page (FastAPI's default pages
load their scripts from a CDN, and this server works offline)."""

from __future__ import annotations

from html import escape

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; max-width: 980px; margin: 24px auto; padding: 0 16px; color: #1d2026; }
h2 { margin-top: 28px; border-bottom: 1px solid #ccd; } code { background: #f0f2f5; padding: 1px 4px; border-radius: 3px; }
.route { margin: 14px 0; } .method { font-weight: 700; display: inline-block; width: 4em; }
table { border-collapse: collapse; margin: 6px 0; } td, th { border: 1px solid #dde; padding: 3px 8px; text-align: left; vertical-align: top; }
.dim { color: #667; }
"""


def _schema(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _type(spec: dict, schema: dict) -> str:
    if "anyOf" in schema:
        return " | ".join(_type(spec, option) for option in schema["anyOf"])
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[1]
    if schema.get("type") == "array":
        return f"list of {_type(spec, schema.get('items', {}))}"
    if schema.get("contentMediaType") == "application/octet-stream":
        return "file"
    limits = [f"{word} {schema[key]:g}" for key, word in (("minimum", "≥"), ("exclusiveMaximum", "<"), ("maximum", "≤")) if key in schema]
    return " ".join([schema.get("type", "any"), *limits])


def _fields(spec: dict, schema: dict, required: set[str]) -> str:
    rows = []
    for name, field in schema.get("properties", {}).items():
        default = f" (default {field['default']!r})" if "default" in field else ""
        need = "required" if name in required else "optional" + default
        rows.append(f"<tr><td><code>{escape(name)}</code></td><td>{escape(_type(spec, field))}</td>"
                    f"<td>{escape(need)}</td><td>{escape(field.get('description', ''))}</td></tr>")
    return f"<table>{''.join(rows)}</table>" if rows else ""


def render_docs(spec: dict) -> str:
    """HTML describing every route of the OpenAPI `spec`: parameters, form fields and answers."""
    title = escape(spec["info"]["title"])
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{title} API</title><style>{STYLE}</style></head>",
        f"<body><h1>{title} API</h1><p>{escape(spec['info'].get('summary', ''))}</p>",
        (
            '<p>Every error is JSON <code>{"error": message, "status": code}</code>. The machine-readable schema: '
            "<a href=/openapi.json>/openapi.json</a>. The page: <a href=/>/</a>.</p>"
        ),
    ]
    by_tag: dict[str, list] = {}
    for path, methods in spec["paths"].items():
        for method, route in methods.items():
            by_tag.setdefault((route.get("tags") or ["other"])[0], []).append((path, method, route))
    for tag, routes in by_tag.items():
        parts.append(f"<h2>{escape(tag)}</h2>")
        for path, method, route in routes:
            parts.append(f"<div class=route><span class=method>{method.upper()}</span> <code>{escape(path)}</code> "
                         f"— {escape(route.get('summary', ''))}")
            parameters = {"properties": {p["name"]: {**p.get("schema", {}), "description": p.get("description", "")}
                                         for p in route.get("parameters", [])}}
            required = {p["name"] for p in route.get("parameters", []) if p.get("required")}
            if parameters["properties"]:
                parts.append("<div class=dim>parameters (path and query)</div>" + _fields(spec, parameters, required))
            for kind, content in route.get("requestBody", {}).get("content", {}).items():
                body = _schema(spec, content["schema"])
                parts.append(f"<div class=dim>body ({escape(kind)})</div>" + _fields(spec, body, set(body.get("required", []))))
            answer = route.get("responses", {}).get("200", {}).get("content", {})
            for kind, content in answer.items():
                schema = content.get("schema")
                body = _schema(spec, schema) if schema and "$ref" in schema else None
                fields = _fields(spec, body, set(body.get("required", []))) if body else ""
                parts.append(f"<div class=dim>answer: {escape(kind)} {escape(_type(spec, schema) if schema else '')}</div>{fields}")
            errors = [code for code in route.get("responses", {}) if code.startswith(("4", "5"))]
            if errors:
                parts.append(f"<div class=dim>errors: {', '.join(errors)}</div>")
            parts.append("</div>")
    for name in sorted(spec.get("components", {}).get("schemas", {})):
        if not name.startswith(("Body_", "HTTPValidation", "ValidationError")):
            schema = spec["components"]["schemas"][name]
            parts.append(f"<h2 id={escape(name)}>{escape(name)}</h2>" + _fields(spec, schema, set(schema.get("required", []))))
    parts.append("</body></html>")
    return "\n".join(parts)
