"""The node's HTTP API (FastAPI): requests, SGLang's storage admin API, health, metrics, status.

Admin endpoints follow SGLang (``PUT``/``DELETE``/``GET /hicache/storage-backend``, and the
routes of its earlier 0.5.x releases; the key is checked before the body is read): with no
admin key configured they answer 400 (they refuse to run unprotected), a missing or wrong
``Authorization: Bearer`` key answers 401, keys are compared in constant time; success is
200 ``{success, message}``, a refused or failed operation 400 with the reason in ``message``.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from hicache_core.controller import ControllerError
from hicache_core.node.node import Node
from hicache_core.node.tokens import CacheRequest, request_from_block_ids, request_from_token_ids
from hicache_core.spec.errors import HiCacheError
from hicache_core.version import __version__

log = logging.getLogger(__name__)

ADMIN_KEY_MISSING = (
    "This endpoint requires admin API key, but this server was started "
    "without one (admin-api-key). Restart with --admin-api-key to enable."
)


#: The admin endpoints: SGLang's routes, and the routes of its earlier 0.5.x releases.
ADMIN_PATHS = frozenset({
    "/hicache/storage-backend",
    "/attach_hicache_storage_backend",
    "/detach_hicache_storage_backend",
    "/hicache_storage_backend",
})


class AttachBody(BaseModel):
    """SGLang's ``AttachHiCacheStorageReqInput`` fields, plus hicache's ``replace``."""

    hicache_storage_backend: str
    hicache_storage_backend_extra_config_json: str | None = None
    hicache_storage_prefetch_policy: str | None = None
    hicache_write_policy: str | None = None
    #: hicache extension: switch from the attached backend in one step (SGLang: detach first).
    replace: bool = False


class GenerateBody(BaseModel):
    """A request: ``input_ids``, or Mooncake ``hash_ids`` (+ ``input_length``)."""

    input_ids: list[int] | None = None
    hash_ids: list[int] | None = None
    input_length: int | None = None
    rid: str | None = None


def parse_extra_config(raw: str | dict[str, Any] | None) -> dict[str, Any]:
    """The extra-config JSON object (a string as SGLang sends it, or already an object)."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"hicache_storage_backend_extra_config_json is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("hicache_storage_backend_extra_config_json must be a JSON object, e.g. '{\"path\": \"/tmp/x\"}'")
    return value


def _result(success: bool, message: str) -> JSONResponse:
    return JSONResponse({"success": success, "message": message}, status_code=200 if success else 400)


def create_app(node: Node, admin_api_key: str | None = None, close_node: bool = True) -> FastAPI:
    """The FastAPI app serving ``node``; the node is closed at shutdown when ``close_node``."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if close_node:
            node.close()

    app = FastAPI(title="hicache node", version=__version__, lifespan=lifespan)
    app.state.node = node

    def admin_denied(request: Request) -> JSONResponse | None:
        if not admin_api_key:
            return JSONResponse({"error": ADMIN_KEY_MISSING}, status_code=400)
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else ""
        if not hmac.compare_digest(given.encode(), admin_api_key.encode()):
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        return None

    @app.middleware("http")
    async def admin_auth_first(request: Request, call_next: Any) -> Any:
        # SGLang checks the key before it reads the body: an unauthorised caller learns nothing
        # about the body's schema (a 401, never a 422).
        if request.url.path in ADMIN_PATHS:
            denied = admin_denied(request)
            if denied is not None:
                return denied
        return await call_next(request)

    @app.get("/health")
    def health() -> dict[str, Any]:
        # Lock-free: health must answer while an attach or detach is in progress.
        return {"status": "ok", "storage_attached": [r.controller.attached for r in node.ranks]}

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(node.metrics_registry).decode(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/hicache/status")
    def status() -> dict[str, Any]:
        return node.status()

    @app.post("/generate")
    def generate(body: GenerateBody) -> JSONResponse:
        try:
            req = _to_request(body, node.config.page_size)
        except ValueError as exc:
            return JSONResponse({"error": {"message": str(exc)}}, status_code=400)
        return JSONResponse(node.process(req).to_dict())

    @app.put("/hicache/storage-backend")
    @app.post("/attach_hicache_storage_backend", include_in_schema=False)  # SGLang's older route
    def attach(body: AttachBody, request: Request) -> JSONResponse:
        try:
            extra = parse_extra_config(body.hicache_storage_backend_extra_config_json)
        except ValueError as exc:
            return _result(False, str(exc))
        replace = body.replace or request.query_params.get("replace", "").lower() in ("1", "true", "yes")
        try:
            msg = node.attach(
                body.hicache_storage_backend, extra, body.hicache_storage_prefetch_policy,
                body.hicache_write_policy, replace=replace,
            )
        except (ControllerError, HiCacheError, ValueError) as exc:
            return _result(False, str(exc))
        return _result(True, msg)

    @app.delete("/hicache/storage-backend")
    @app.post("/detach_hicache_storage_backend", include_in_schema=False)  # SGLang's older route
    def detach() -> JSONResponse:
        try:
            return _result(True, node.detach())
        except (ControllerError, HiCacheError) as exc:
            return _result(False, str(exc))

    @app.get("/hicache/storage-backend")
    @app.get("/hicache_storage_backend", include_in_schema=False)  # SGLang's older route
    def backend_view() -> JSONResponse:
        return JSONResponse(node.backend_view())

    return app


def _to_request(body: GenerateBody, page_size: int) -> CacheRequest:
    rid = body.rid or ""
    if body.input_ids is not None and body.hash_ids is not None:
        raise ValueError("give either input_ids or hash_ids (+ input_length), not both")
    if body.input_ids is not None:
        return request_from_token_ids(body.input_ids, page_size, rid)
    if body.hash_ids is not None:
        return request_from_block_ids(body.hash_ids, body.input_length, page_size, rid)
    raise ValueError('the request needs "input_ids": [token ids] or "hash_ids": [block ids] with "input_length"')
