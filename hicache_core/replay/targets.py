"""Where a replay sends its requests: a node over HTTP, or a node in this process."""

from __future__ import annotations

import time
from typing import Any, Protocol

import httpx

from hicache_core.replay.trace import TraceRequest


class Target(Protocol):
    def send(self, req: TraceRequest) -> dict[str, Any]:
        """Serve one request; returns the node's answer (``RequestResult.to_dict()``)."""

    def status(self) -> dict[str, Any]:
        """The node's status (``Node.status()``)."""

    def close(self) -> None: ...


class HttpTarget:
    """A node behind ``POST /generate`` and ``GET /hicache/status``."""

    def __init__(self, url: str, timeout_s: float = 120.0, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.url, timeout=timeout_s, headers=headers)

    def send(self, req: TraceRequest) -> dict[str, Any]:
        resp = self._client.post("/generate", json={
            "rid": f"trace-{req.index}", "hash_ids": list(req.hash_ids), "input_length": req.input_length,
            "block_tokens": req.block_tokens,
        })
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:300]}")
        out: dict[str, Any] = resp.json()
        return out

    def status(self) -> dict[str, Any]:
        resp = self._client.get("/hicache/status")
        resp.raise_for_status()
        out: dict[str, Any] = resp.json()
        return out

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                if self._client.get("/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise RuntimeError(f"node at {self.url} did not answer /health within {timeout_s:.0f} s ({last})")

    def close(self) -> None:
        self._client.close()


class LocalTarget:
    """A ``Node`` in this process (``hicache replay`` without ``--url``, and tests)."""

    def __init__(self, node: Any, owns: bool = True) -> None:
        from hicache_core.node.tokens import request_from_block_ids

        self.node = node
        self._owns = owns
        self._make = request_from_block_ids

    def send(self, req: TraceRequest) -> dict[str, Any]:
        creq = self._make(req.hash_ids, req.input_length, self.node.config.page_size, rid=f"trace-{req.index}",
                          block_tokens=req.block_tokens)
        out: dict[str, Any] = self.node.process(creq).to_dict()
        return out

    def status(self) -> dict[str, Any]:
        self.node.wait_backups(5.0)
        out: dict[str, Any] = self.node.status()
        return out

    def close(self) -> None:
        if self._owns:
            self.node.close()
