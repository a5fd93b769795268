"""The node's HTTP API (FastAPI): requests, SGLang's storage admin API, health, metrics, status.

Admin endpoints follow SGLang (``PUT``/``DELETE``/``GET /hicache/storage-backend``, and the
routes of its earlier 0.5.x releases). The key check is a FastAPI dependency of each admin
route, not a match on the request path: however a route is reached (under a ``root_path``,
through a proxy prefix, with a percent-encoded path), its check runs. It runs before the body
is read: with no admin key configured the routes answer 400 (they refuse to run
unprotected), a missing or wrong ``Authorization: Bearer`` key answers 401, keys are
compared in constant time. Success is 200 ``{success, message}``; every refused or failed
operation, malformed JSON included, is 400 ``{"success": false, "message": ...}`` saying what
to do. ``/hicache/status`` shows only config fields known to be safe (``shown_config``).

``/generate`` has limits (``RequestLimits``): tokens per request, block ids per request and
body bytes; a request beyond them is a 400 naming the limit and the flag that raises it.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from hicache_core.controller import ControllerError
from hicache_core.node.node import Node
from hicache_core.node.tokens import (
    MOONCAKE_BLOCK_TOKENS,
    CacheRequest,
    request_from_block_ids,
    request_from_token_ids,
)
from hicache_core.plugins.dynamic import check_dynamic_request
from hicache_core.replay.trace import MAX_BLOCK_TOKENS
from hicache_core.spec.errors import HiCacheError
from hicache_core.version import __version__

log = logging.getLogger(__name__)

ADMIN_KEY_MISSING = (
    "This endpoint requires admin API key, but this server was started "
    "without one (admin-api-key). Restart with --admin-api-key to enable."
)


class AdminDenied(Exception):
    """Raised by the admin dependency; answered as SGLang answers it (400 or 401)."""

    def __init__(self, status_code: int, error: str) -> None:
        super().__init__(error)
        self.status_code = status_code
        self.error = error


@dataclass(frozen=True)
class RequestLimits:
    """What one ``/generate`` request may ask for (flags of ``hicache serve``)."""

    max_request_tokens: int = 1 << 21  # 2 Mi tokens: 16x the longest request of the Mooncake traces
    max_body_bytes: int = 64 << 20

    def max_blocks(self, block_tokens: int = MOONCAKE_BLOCK_TOKENS) -> int:
        return max(1, self.max_request_tokens // block_tokens)


class AttachBody(BaseModel):
    """SGLang's ``AttachHiCacheStorageReqInput`` fields, plus hicache's ``replace``."""

    hicache_storage_backend: str
    hicache_storage_backend_extra_config_json: str | dict[str, Any] | None = None
    hicache_storage_prefetch_policy: str | None = None
    hicache_write_policy: str | None = None
    #: hicache extension: switch from the attached backend in one step (SGLang: detach first).
    replace: bool = False


class GenerateBody(BaseModel):
    """A request: ``input_ids``, or Mooncake ``hash_ids`` (+ ``input_length``)."""

    input_ids: list[int] | None = None
    hash_ids: list[int] | None = None
    input_length: int | None = None
    #: Tokens per block id: 512 in the Mooncake traces (the default), 16 in Alibaba's Qwen traces.
    block_tokens: int = MOONCAKE_BLOCK_TOKENS
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


def _validation_message(exc: ValidationError | RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


async def _json_body(request: Request, limit: int) -> Any:
    """The request's JSON body; ValueError with what to send when it is too big or not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ValueError(f"request body of {int(declared):,} bytes is over the limit of {limit:,} bytes")
    raw = await request.body()
    if len(raw) > limit:
        raise ValueError(f"request body of {len(raw):,} bytes is over the limit of {limit:,} bytes")
    if not raw.strip():
        raise ValueError("the request has no body; send a JSON object")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"the body is not valid JSON ({exc}); send a JSON object") from None


def create_app(node: Node, admin_api_key: str | None = None, close_node: bool = True,
               limits: RequestLimits | None = None) -> FastAPI:
    """The FastAPI app serving ``node``; the node is closed at shutdown when ``close_node``."""
    limits = limits or RequestLimits()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if close_node:
            node.close()

    app = FastAPI(title="hicache node", version=__version__, lifespan=lifespan)
    app.state.node = node

    def require_admin(request: Request) -> None:
        """The admin check, a dependency of every admin route (see the module docstring)."""
        if not admin_api_key:
            raise AdminDenied(400, ADMIN_KEY_MISSING)
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else ""
        if not hmac.compare_digest(given.encode(), admin_api_key.encode()):
            raise AdminDenied(401, "Unauthorized")

    admin = [Depends(require_admin)]

    @app.exception_handler(AdminDenied)
    async def _denied(_: Request, exc: AdminDenied) -> JSONResponse:
        return JSONResponse({"error": exc.error}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The docs promise 400 {success, message}, never FastAPI's 422 shape.
        return _result(False, f"bad request: {_validation_message(exc)}")

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
    async def generate(request: Request) -> JSONResponse:
        try:
            raw = await _json_body(request, limits.max_body_bytes)
            body = GenerateBody.model_validate(raw)
            req = _to_request(body, node.config.page_size, limits)
        except ValidationError as exc:
            return JSONResponse({"error": {"message": f"bad request: {_validation_message(exc)}"}}, status_code=400)
        except ValueError as exc:
            return JSONResponse({"error": {"message": str(exc)}}, status_code=400)
        result = await run_in_threadpool(node.process, req)
        return JSONResponse(result.to_dict())

    async def attach(request: Request) -> JSONResponse:
        try:
            raw = await _json_body(request, limits.max_body_bytes)
            body = AttachBody.model_validate(raw)
            extra = parse_extra_config(body.hicache_storage_backend_extra_config_json)
            if body.hicache_storage_backend == "dynamic":
                check_dynamic_request(extra)  # before anything is imported
        except ValidationError as exc:
            return _result(False, f"bad request: {_validation_message(exc)}")
        except (ValueError, HiCacheError) as exc:
            return _result(False, str(exc))
        replace = body.replace or request.query_params.get("replace", "").lower() in ("1", "true", "yes")

        def _attach() -> str:
            return node.attach(
                body.hicache_storage_backend, extra, body.hicache_storage_prefetch_policy,
                body.hicache_write_policy, replace=replace,
            )

        try:
            msg = await run_in_threadpool(_attach)
        except (ControllerError, HiCacheError, ValueError) as exc:
            return _result(False, str(exc))
        return _result(True, msg)

    def detach() -> JSONResponse:
        try:
            return _result(True, node.detach())
        except (ControllerError, HiCacheError) as exc:
            return _result(False, str(exc))

    def backend_view() -> JSONResponse:
        return JSONResponse(node.backend_view())

    # Each admin route carries the dependency itself; SGLang's older routes are kept, unlisted.
    app.add_api_route("/hicache/storage-backend", attach, methods=["PUT"], dependencies=admin)
    app.add_api_route("/attach_hicache_storage_backend", attach, methods=["POST"], dependencies=admin,
                      include_in_schema=False)
    app.add_api_route("/hicache/storage-backend", detach, methods=["DELETE"], dependencies=admin)
    app.add_api_route("/detach_hicache_storage_backend", detach, methods=["POST"], dependencies=admin,
                      include_in_schema=False)
    app.add_api_route("/hicache/storage-backend", backend_view, methods=["GET"], dependencies=admin)
    app.add_api_route("/hicache_storage_backend", backend_view, methods=["GET"], dependencies=admin,
                      include_in_schema=False)
    app.state.admin_routes = sorted({getattr(r, "path", "") for r in app.routes if getattr(r, "dependencies", None) == admin})
    return app


def _to_request(body: GenerateBody, page_size: int, limits: RequestLimits | None = None) -> CacheRequest:
    limits = limits or RequestLimits()
    cap = limits.max_request_tokens
    rid = body.rid or ""
    if body.input_ids is not None and body.hash_ids is not None:
        raise ValueError("give either input_ids or hash_ids (+ input_length), not both")
    if body.input_ids is not None:
        if len(body.input_ids) > cap:
            raise ValueError(f"{len(body.input_ids):,} input_ids are over the limit of {cap:,} tokens per request "
                             "(hicache serve --max-request-tokens)")
        return request_from_token_ids(body.input_ids, page_size, rid)
    if body.hash_ids is not None:
        block = body.block_tokens
        if not 1 <= block <= MAX_BLOCK_TOKENS:
            raise ValueError(f"block_tokens must be in 1..{MAX_BLOCK_TOKENS} (Mooncake traces: 512), got {block}")
        if len(body.hash_ids) > limits.max_blocks(block):
            raise ValueError(f"{len(body.hash_ids):,} hash_ids ({len(body.hash_ids) * block:,} tokens) are over the "
                             f"limit of {cap:,} tokens per request (hicache serve --max-request-tokens)")
        if body.input_length is not None:
            if body.input_length < 0:
                raise ValueError(f"input_length must not be negative, got {body.input_length}")
            if body.input_length > cap:
                raise ValueError(f"input_length {body.input_length:,} is over the limit of {cap:,} tokens per "
                                 "request (hicache serve --max-request-tokens)")
        return request_from_block_ids(body.hash_ids, body.input_length, page_size, rid, block_tokens=block)
    raise ValueError('the request needs "input_ids": [token ids] or "hash_ids": [block ids] with "input_length"')
