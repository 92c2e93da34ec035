"""The OpenAPI document, shaped so that a client generator can use it as it is.

- The form of POST /animate is built from the contract's `AnimationOptions`, so every option keeps
  its enumeration, pattern, bounds and default, and a new option appears without editing a schema.
- Every 4xx and 5xx answer of every route is the one error body, `{"error": {...}}`: FastAPI's own
  validation-error schema, which this API never sends, is replaced and dropped.
- Downloads are binary responses with a schema (`type: string, format: binary`), offered as their
  media type and as `application/octet-stream`, which generators map to bytes.
"""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from contract.job import MODEL_NAME_PATTERN
from contract.options import AnimationOptions

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
BINARY = {"type": "string", "format": "binary"}


def binary_response(media_type: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {media_type: {"schema": BINARY}, "application/octet-stream": {"schema": BINARY}},
    }


def animate_form(max_field_bytes: int) -> dict[str, Any]:
    """The multipart request body of POST /animate."""
    options = AnimationOptions.model_json_schema()
    properties: dict[str, Any] = {
        "source": {**BINARY, "description": "PNG, JPEG or WebP"},
        "driving": {**BINARY, "description": "MP4, MOV, WebM or MKV"},
        "model": {
            "type": "string",
            "pattern": MODEL_NAME_PATTERN,
            "description": "a loaded model (GET /models); default DEFAULT_MODEL",
        },
    }
    for name, schema in options["properties"].items():
        properties[name] = {key: value for key, value in schema.items() if key != "title"}
    properties["webhook_url"] = {
        "type": "string",
        "format": "uri",
        "maxLength": 2048,
        "description": "http(s) URL POSTed the job, signed, when it ends",
    }
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "title": "AnimateForm",
                    "required": ["source", "driving"],
                    "properties": properties,
                },
                "encoding": {"source": {"contentType": "image/png, image/jpeg, image/webp"}},
            }
        },
        "description": f"Files stream to disk; each plain field is at most {max_field_bytes} bytes.",
    }


def _errors_are_error_bodies(document: dict[str, Any]) -> None:
    for path in document.get("paths", {}).values():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            responses.setdefault("500", {"description": "internal_error: the server failed to answer"})
            for status, response in responses.items():
                if status[0] in "45":
                    response["content"] = {"application/json": {"schema": ERROR_REF}}
    schemas = document.get("components", {}).get("schemas", {})
    for name in FASTAPI_VALIDATION_SCHEMAS:
        schemas.pop(name, None)


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            _errors_are_error_bodies(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi
