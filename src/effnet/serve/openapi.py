"""The OpenAPI 3.1 description of the HTTP routes (/openapi.json) and a self-contained /docs page
(no scripts or styles fetched from the internet)."""
from __future__ import annotations

import html as _html
from typing import Any

from .. import __version__
from ..contract import INPUT_NAME, OUTPUT_NAME, num_classes

_ERROR = {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(schema: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def document(models: list[str]) -> dict[str, Any]:
    model_param = {"name": "model", "in": "path", "required": True, "schema": {"type": "string", "enum": models}}
    version_param = {"name": "version", "in": "path", "required": True, "schema": {"type": "string", "enum": ["1"]}}
    paths: dict[str, Any] = {
        "/v2/health/live": {"get": {"summary": "Server liveness", "responses": {"200": _json("Live")}}},
        "/v2/health/ready": {"get": {"summary": "Server readiness (503 while starting or draining)",
                                     "responses": {"200": _json("Ready"), "503": _ERROR}}},
        "/v2": {"get": {"summary": "Server metadata and the extensions served",
                        "responses": {"200": _json("ServerMetadata"), "401": _ERROR}}},
        "/v2/models/stats": {"get": {"summary": "Statistics of every model (Triton's statistics extension)",
                                     "responses": {"200": {"description": "OK"}, "401": _ERROR}}},
        "/metrics": {"get": {"summary": "Prometheus metrics with Triton's names",
                             "responses": {"200": {"description": "OK", "content": {"text/plain": {}}}}}},
    }
    infer_body = {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                     "description": "JSON header + binary tensors (Inference-Header-Content-Length), "
                                                    "or with Inference-Header-Content-Length: 0 one encoded image"}}}
    for base, params in (("/v2/models/{model}", [model_param]),
                         ("/v2/models/{model}/versions/{version}", [model_param, version_param])):
        errors = {"400": _ERROR, "401": _ERROR, "404": _ERROR}
        paths[base] = {"get": {"summary": "Model metadata", "parameters": params,
                               "responses": {"200": _json("ModelMetadata"), **errors}}}
        paths[base + "/ready"] = {"get": {"summary": "Model readiness", "parameters": params,
                                          "responses": {"200": _json("ModelReady"), "503": _ERROR, **errors}}}
        paths[base + "/config"] = {"get": {"summary": "Triton model configuration", "parameters": params,
                                           "responses": {"200": {"description": "OK"}, **errors}}}
        paths[base + "/stats"] = {"get": {"summary": "Model statistics", "parameters": params,
                                          "responses": {"200": {"description": "OK"}, **errors}}}
        paths[base + "/infer"] = {"post": {
            "summary": f"Inference: input '{INPUT_NAME}' FP32 [N,3,S,S] (normalised) or BYTES [N] (encoded images); "
                       f"output '{OUTPUT_NAME}' FP32 [N,{num_classes()}]",
            "parameters": params + [{"name": "Inference-Header-Content-Length", "in": "header", "required": False,
                                     "schema": {"type": "integer", "minimum": 0}}],
            "requestBody": infer_body,
            "responses": {"200": _json("InferResponse"), "413": _ERROR, "503": _ERROR, "504": _ERROR, **errors}}}
        paths[base + "/explain"] = {"post": {
            "summary": "Grad-CAM overlay of one posted image (the page's explain switch)",
            "parameters": params + [{"name": "target", "in": "query", "required": False,
                                     "schema": {"type": "string"}},
                                    {"name": "timeout", "in": "query", "required": False,
                                     "schema": {"type": "string", "pattern": "^[0-9]+$"}}],
            "requestBody": {"required": True, "content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}},
            "responses": {"200": _json("Explanation"), "413": _ERROR, "503": _ERROR, "504": _ERROR, **errors}}}
    tensor_meta = {"type": "object", "required": ["name", "datatype", "shape"],
                   "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                                  "shape": {"type": "array", "items": {"type": "integer"}}}}
    params_schema = {"type": "object", "additionalProperties": {"type": ["boolean", "number", "string"]}}
    schemas = {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "Live": {"type": "object", "properties": {"live": {"type": "boolean"}}},
        "Ready": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
        "ModelReady": {"type": "object", "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}}},
        "ServerMetadata": {"type": "object", "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}}}},
        "ModelMetadata": {"type": "object", "properties": {
            "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"}, "inputs": {"type": "array", "items": tensor_meta},
            "outputs": {"type": "array", "items": tensor_meta}}},
        "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"}, "parameters": params_schema,
            "inputs": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "datatype", "shape"],
                "properties": {**tensor_meta["properties"], "parameters": params_schema,
                               "data": {"type": "array"}}}},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "parameters": params_schema}}}}},
        "InferResponse": {"type": "object", "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "outputs": {"type": "array", "items": {"type": "object", "properties": {
                **tensor_meta["properties"], "data": {"type": "array"}, "parameters": params_schema}}}}},
        "Explanation": {"type": "object", "properties": {
            "model": {"type": "string"}, "index": {"type": "integer"}, "label": {"type": "string"},
            "probability": {"type": "number"}, "overlay": {"type": "string"}, "time_ms": {"type": "number"}}},
    }
    return {"openapi": "3.1.0",
            "info": {"title": "effnet serve", "version": __version__,
                     "description": "KServe v2 / Open Inference Protocol with Triton's binary-data, classification, "
                                    "schedule-policy, model-configuration and statistics extensions."},
            "paths": paths, "components": {"schemas": schemas,
                                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}}


def html(doc: dict[str, Any]) -> str:
    rows = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = ", ".join(op.get("responses", {}))
            rows.append(f"<tr><td><code>{method.upper()}</code></td><td><code>{_html.escape(path)}</code></td>"
                        f"<td>{_html.escape(op.get('summary', ''))}</td><td>{codes}</td></tr>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>effnet serve: API</title><style>"
            "body{font:14px system-ui,sans-serif;margin:2em}td{padding:4px 10px;border-bottom:1px solid #ddd}"
            "</style></head><body><h1>effnet serve: HTTP API</h1>"
            f"<p>{_html.escape(doc['info']['description'])} Machine-readable: <a href='/openapi.json'>"
            "/openapi.json</a>. Every non-200 answer is JSON <code>{\"error\": \"...\"}</code>.</p>"
            "<table><tr><th>Method</th><th>Path</th><th>What</th><th>Answers</th></tr>"
            + "".join(rows) + "</table></body></html>")
