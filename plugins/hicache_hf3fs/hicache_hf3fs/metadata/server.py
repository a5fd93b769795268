"""The shared page-index service: one ``PageIndex`` per rank file, over HTTP (FastAPI).

Every rank and node that uses the same rank files talks to one service, so a page written by
one node is found by the others, and slots are handed out once. Run it with::

    python -m hicache_hf3fs.metadata_server --host 127.0.0.1 --port 18000 [--state-file f.json]

With ``--state-file`` the index is loaded at start and saved at shutdown (SIGINT/SIGTERM), so
a restart keeps the pages. Each namespace has its own lock; FastAPI runs the handlers in a
thread pool.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from hicache_hf3fs.metadata.index import PageIndex, SlotRef

log = logging.getLogger(__name__)



class InitBody(BaseModel):
    namespace: str
    num_pages: int = Field(gt=0)
    page_bytes: int = Field(gt=0)
    write_lease_seconds: float = Field(default=120.0, gt=0)


class NamespaceBody(BaseModel):
    namespace: str


class KeysBody(BaseModel):
    namespace: str
    keys: list[str]


class AllocateBody(BaseModel):
    namespace: str
    keys: list[str]
    parents: list[str | None] | None = None


class ConfirmBody(BaseModel):
    namespace: str
    written: list[tuple[str, int, int]] = []
    aborted: list[tuple[str, int, int]] = []


class RefsBody(BaseModel):
    namespace: str
    refs: list[tuple[str, int, int]]


class _Namespace:
    def __init__(self, index: PageIndex) -> None:
        self.index = index
        self.lock = threading.Lock()


class MetadataState:
    """All namespaces of one service, with optional load/save to a JSON state file."""

    def __init__(self, state_file: str | None = None) -> None:
        self.state_file = state_file
        self._namespaces: dict[str, _Namespace] = {}
        self._lock = threading.Lock()
        if state_file and os.path.exists(state_file):
            with open(state_file) as fh:
                saved = json.load(fh)
            for name, state in saved.get("namespaces", {}).items():
                self._namespaces[name] = _Namespace(
                    PageIndex.from_state(state, float(state.get("write_lease_seconds", 120.0)))
                )
            log.info("loaded %d namespaces from %s", len(self._namespaces), state_file)

    def get(self, namespace: str) -> _Namespace | None:
        with self._lock:
            return self._namespaces.get(namespace)

    def require(self, namespace: str) -> _Namespace:
        ns = self.get(namespace)
        if ns is None:
            raise HTTPException(404, f"namespace {namespace!r} is not initialized; call initialize first")
        return ns

    def initialize(self, namespace: str, body: InitBody) -> bool:
        with self._lock:
            ns = self._namespaces.get(namespace)
            if ns is None:
                index = PageIndex(body.num_pages, body.page_bytes, body.write_lease_seconds)
                self._namespaces[namespace] = _Namespace(index)
                return True
        with ns.lock:
            geometry = (ns.index.num_pages, ns.index.page_bytes)
            if geometry == (body.num_pages, body.page_bytes):
                return False
            if not ns.index.stats()["ready_pages"] and not ns.index.stats()["writing_pages"]:
                ns.index = PageIndex(body.num_pages, body.page_bytes, body.write_lease_seconds)
                return True
        raise HTTPException(
            409,
            f"namespace {namespace!r} holds pages of {geometry[1]} bytes x {geometry[0]} slots, the caller "
            f"asked for {body.page_bytes} x {body.num_pages}; every user of a rank file must use the same "
            "model and file_size (give each model its own file_path_prefix)",
        )

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._namespaces)

    def save(self) -> None:
        if not self.state_file:
            return
        out: dict[str, Any] = {}
        for name in self.names():
            ns = self.get(name)
            if ns is None:
                continue
            with ns.lock:
                state = ns.index.to_state()
                state["write_lease_seconds"] = ns.index.write_lease_seconds
            out[name] = state
        tmp = f"{self.state_file}.tmp.{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump({"namespaces": out}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_file)
        log.info("saved %d namespaces to %s", len(out), self.state_file)


def _refs(raw: Sequence[tuple[str, int, int]]) -> list[SlotRef]:
    return [SlotRef(k, s, g) for k, s, g in raw]


def create_app(state: MetadataState | None = None) -> FastAPI:
    """The FastAPI application serving ``state`` (a fresh in-memory one by default)."""
    st = state if state is not None else MetadataState()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        st.save()

    app = FastAPI(title="hicache hf3fs page-index service", lifespan=lifespan)
    app.state.metadata = st

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "namespaces": len(st.names()), "pid": os.getpid()}

    @app.get("/v1/namespaces")
    def namespaces() -> dict[str, Any]:
        out = {}
        for name in st.names():
            ns = st.get(name)
            if ns is not None:
                with ns.lock:
                    out[name] = ns.index.stats()
        return {"namespaces": out}

    @app.post("/v1/initialize")
    def initialize(body: InitBody) -> dict[str, Any]:
        return {"created": st.initialize(body.namespace, body)}

    @app.post("/v1/allocate")
    def allocate(body: AllocateBody) -> dict[str, Any]:
        parents = body.parents if body.parents is not None else [None] * len(body.keys)
        if len(parents) != len(body.keys):
            raise HTTPException(422, f"{len(body.keys)} keys but {len(parents)} parents")
        ns = st.require(body.namespace)
        with ns.lock:
            allocations = ns.index.allocate(body.keys, parents)
        return {"allocations": [a.to_list() for a in allocations]}

    @app.post("/v1/confirm")
    def confirm(body: ConfirmBody) -> dict[str, Any]:
        ns = st.require(body.namespace)
        with ns.lock:
            done = ns.index.confirm(_refs(body.written), _refs(body.aborted))
        return {"confirmed": done}

    @app.post("/v1/lookup")
    def lookup(body: KeysBody) -> dict[str, Any]:
        ns = st.get(body.namespace)
        if ns is None:
            return {"refs": [None] * len(body.keys)}
        with ns.lock:
            refs = ns.index.lookup(body.keys)
        return {"refs": [r.to_list() if r is not None else None for r in refs]}

    @app.post("/v1/validate")
    def validate(body: RefsBody) -> dict[str, Any]:
        ns = st.get(body.namespace)
        if ns is None:
            return {"valid": [False] * len(body.refs)}
        with ns.lock:
            return {"valid": ns.index.validate(_refs(body.refs))}

    @app.post("/v1/exists")
    def exists(body: KeysBody) -> dict[str, Any]:
        ns = st.get(body.namespace)
        if ns is None:
            return {"exists": [False] * len(body.keys)}
        with ns.lock:
            return {"exists": ns.index.exists(body.keys)}

    @app.post("/v1/delete")
    def delete(body: KeysBody) -> dict[str, Any]:
        ns = st.get(body.namespace)
        if ns is None:
            return {"deleted": 0}
        with ns.lock:
            return {"deleted": ns.index.delete(body.keys)}

    @app.post("/v1/clear")
    def clear(body: NamespaceBody) -> dict[str, Any]:
        ns = st.get(body.namespace)
        if ns is not None:
            with ns.lock:
                ns.index.clear()
        return {"cleared": ns is not None}

    @app.get("/v1/stats")
    def stats(namespace: str) -> dict[str, Any]:
        ns = st.require(namespace)
        with ns.lock:
            return ns.index.stats()

    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m hicache_hf3fs.metadata_server",
        description="Shared page-index service for the hicache hf3fs backend",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=18000, help="port to bind (default 18000)")
    parser.add_argument("--state-file", default=None, help="JSON file to load at start and save at shutdown")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level")
    args = parser.parse_args(argv)
    import uvicorn

    logging.basicConfig(level=args.log_level.upper())
    uvicorn.run(create_app(MetadataState(args.state_file)), host=args.host, port=args.port, log_level=args.log_level)
