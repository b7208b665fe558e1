"""``GET /openapi.json``: an OpenAPI 3.1 document of the public API, from the
msgspec Structs the handlers decode, merged with the admin API's part, which
the admin service (behind NATS) answers on ``contract.ADMIN_OPENAPI``."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from nats.aio.client import Client as NATS

from gandalf_common import contract
from gandalf_common.errors import ErrorBody

from .body_policy import FORBIDDEN_FIELDS
from .relay import Receive, Send
from .schemas import ChatRequest, EmbeddingsRequest

log = logging.getLogger("gandalf.ingress")

REF = "#/components/schemas/{name}"
ADMIN_TIMEOUT_S = 2.0
_OBJECT: dict[str, Any] = {"type": "object"}
_ERROR = {"$ref": "#/components/responses/Error"}
#: Native APIs answer errors in their own provider's shape.
_NATIVE_ERROR = {"description": "error, in the native API's own shape",
                 "content": {"application/json": {"schema": _OBJECT}}}


def _json(schema: dict[str, Any], description: str = "ok") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(cls: type[Any]) -> dict[str, Any]:
    return {"$ref": REF.format(name=cls.__name__)}


def _post(op_id: str, body: dict[str, Any], *, native: bool = False,
          params: list[dict[str, Any]] | None = None, stream: bool = True) -> dict[str, Any]:
    ok = _json(_OBJECT)
    if stream:
        ok["content"]["text/event-stream"] = {"schema": {"type": "string"}}
    op: dict[str, Any] = {
        "operationId": op_id, "security": [{"bearer": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {"200": ok, "4XX": _NATIVE_ERROR if native else _ERROR}}
    if params:
        op["parameters"] = params
    return {"post": op}


def _get(op_id: str, response: dict[str, Any], *, secured: bool = True,
         errors: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": op_id, "responses": {"200": response,
                                                              **(errors or {"4XX": _ERROR})}}
    if secured:
        op["security"] = [{"bearer": []}]
    return {"get": op}


def _path_param(name: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True,
             "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"}}]


#: A Responses API request: what the gateway itself checks (the rest is the
#: upstream's, or the translator's, to accept or refuse with a 400).
_RESPONSES_REQUEST: dict[str, Any] = {
    "type": "object", "required": ["model", "input"],
    "properties": {"model": {"type": "string"},
                   "input": {"oneOf": [{"type": "string"},
                                       {"type": "array", "items": _OBJECT}]},
                   "stream": {"type": "boolean"},
                   "previous_response_id": {"type": "string"}}}
_RESPONSE_ID = [{"name": "response_id", "in": "path", "required": True,
                 "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"}}]


def _op(op_id: str) -> dict[str, Any]:
    """An action on a stored response (no request body)."""
    return {"operationId": op_id, "security": [{"bearer": []}],
            "parameters": _RESPONSE_ID,
            "responses": {"200": _json(_OBJECT), "4XX": _ERROR}}


def public_paths() -> dict[str, Any]:
    text = {"description": "ok", "content": {"text/plain": {"schema": {"type": "string"}}}}
    return {
        "/v1/chat/completions": _post("chat_completions", _ref(ChatRequest)),
        "/v1/embeddings": _post("embeddings", _ref(EmbeddingsRequest), stream=False),
        "/v1/models": _get("list_models", _json(_OBJECT)),
        "/v1/messages": _post("anthropic_messages", _OBJECT, native=True),
        "/v1/messages/count_tokens": _post("anthropic_count_tokens", _OBJECT, native=True,
                                           stream=False),
        "/v1beta/models": _get("gemini_models", _json(_OBJECT),
                               errors={"4XX": _NATIVE_ERROR}),
        "/v1beta/models/{target}": _post("gemini_generate", _OBJECT, native=True,
                                         params=[{"name": "target", "in": "path",
                                                  "required": True,
                                                  "schema": {"type": "string"}}]),
        "/openai/deployments/{deployment}/chat/completions": _post(
            "azure_chat", _OBJECT, native=True, params=_path_param("deployment")),
        "/openai/deployments/{deployment}/embeddings": _post(
            "azure_embeddings", _OBJECT, native=True, params=_path_param("deployment"),
            stream=False),
        "/v1/responses": _post("responses_create", _RESPONSES_REQUEST),
        "/v1/responses/{response_id}": {
            "get": {**_get("responses_retrieve", _json(_OBJECT))["get"],
                    "parameters": _RESPONSE_ID},
            "delete": _op("responses_delete")},
        "/v1/responses/{response_id}/input_items": {"get": {
            **_get("responses_input_items", _json(_OBJECT))["get"],
            "parameters": _RESPONSE_ID}},
        "/v1/responses/{response_id}/cancel": {"post": _op("responses_cancel")},
        "/api/tags": _get("ollama_tags", _json(_OBJECT), errors={"4XX": _NATIVE_ERROR}),
        "/api/{action}": _post("ollama_action", _OBJECT, native=True,
                               params=_path_param("action")),
        "/healthz": _get("healthz", text, secured=False),
        "/readyz": _get("readyz", text, secured=False,
                        errors={"503": {"description": "not ready",
                                        "content": {"text/plain": {
                                            "schema": {"type": "string"}}}}}),
        "/openapi.json": _get("openapi", _json(_OBJECT), secured=False),
    }


def public_schemas() -> dict[str, Any]:
    _, schemas = msgspec.json.schema_components(
        [ChatRequest, EmbeddingsRequest, ErrorBody], ref_template=REF)
    for name in ("ChatRequest", "EmbeddingsRequest"):
        # Refused fields (400) are not part of the API.
        props = schemas[name]["properties"]
        for field in FORBIDDEN_FIELDS:
            props.pop(field, None)
    return schemas


def build_document(admin: dict[str, Any] | None) -> dict[str, Any]:
    paths = public_paths()
    schemas = public_schemas()
    if admin:
        paths.update(admin.get("paths", {}))
        schemas.update(admin.get("schemas", {}))
    return {
        "openapi": "3.1.0",
        "info": {"title": "Gandalf LLM gateway", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {"Error": _json(_ref(ErrorBody), "error")},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "a gnd_ API key or a JWT"}},
        },
    }


class OpenApiEndpoint:
    """Serves the document; the admin part is fetched once it answers."""

    def __init__(self) -> None:
        self.nc: NATS | None = None
        self._document: bytes | None = None

    async def _admin_part(self) -> dict[str, Any] | None:
        if self.nc is None:
            return None
        try:
            reply = await self.nc.request(contract.ADMIN_OPENAPI, b"", timeout=ADMIN_TIMEOUT_S)
            return msgspec.json.decode(reply.data)  # type: ignore[no-any-return]
        except Exception as exc:  # noqa: BLE001 - served without the admin part
            log.info("admin API not in /openapi.json (%s)", type(exc).__name__)
            return None

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        document = self._document
        if document is None:
            admin = await self._admin_part()
            document = msgspec.json.encode(build_document(admin))
            if admin is not None:
                self._document = document  # complete: keep it
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": document})
