"""Client of the shared page-index service (``hicache_hf3fs.metadata.server``), over httpx."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from hicache_core.spec.errors import BackendConfigError
from hicache_hf3fs.metadata.base import MetadataUnavailable, PageMetadata
from hicache_hf3fs.metadata.index import Allocation, SlotRef


class RemotePageMetadata(PageMetadata):
    kind = "remote"

    def __init__(self, url: str, namespace: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.namespace = namespace
        # One pooled, thread-safe client; the backend calls it from several threads.
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def _post(self, op: str, body: dict[str, Any] | None = None) -> Any:
        try:
            resp = self._http.post(f"/v1/{op}", json={"namespace": self.namespace, **(body or {})})
        except httpx.HTTPError as exc:
            raise MetadataUnavailable(f"hf3fs metadata service {self.url}: {op} failed: {exc}") from exc
        if resp.status_code == 409:
            raise BackendConfigError(f"hf3fs metadata service {self.url}: {resp.json().get('detail')}")
        if resp.status_code != 200:
            raise MetadataUnavailable(
                f"hf3fs metadata service {self.url}: {op} answered {resp.status_code}: {resp.text[:200]}"
            )
        return resp.json()

    def initialize(self, num_pages: int, page_bytes: int, write_lease_seconds: float) -> None:
        try:
            self._post("initialize", {
                "num_pages": num_pages, "page_bytes": page_bytes, "write_lease_seconds": write_lease_seconds,
            })
        except MetadataUnavailable as exc:
            raise BackendConfigError(
                f"{exc}; start it with `python -m hicache_hf3fs.metadata_server --host H --port P` "
                "or check metadata_server_url"
            ) from exc

    def allocate(self, keys: Sequence[str], parents: Sequence[str | None]) -> list[Allocation]:
        out = self._post("allocate", {"keys": list(keys), "parents": list(parents)})
        return [Allocation.from_list(a) for a in out["allocations"]]

    def confirm(self, written: Sequence[SlotRef], aborted: Sequence[SlotRef]) -> list[bool]:
        out = self._post("confirm", {
            "written": [r.to_list() for r in written], "aborted": [r.to_list() for r in aborted],
        })
        return [bool(x) for x in out["confirmed"]]

    def lookup(self, keys: Sequence[str]) -> list[SlotRef | None]:
        out = self._post("lookup", {"keys": list(keys)})
        return [SlotRef.from_list(r) if r is not None else None for r in out["refs"]]

    def validate(self, refs: Sequence[SlotRef]) -> list[bool]:
        out = self._post("validate", {"refs": [r.to_list() for r in refs]})
        return [bool(x) for x in out["valid"]]

    def exists(self, keys: Sequence[str]) -> list[bool]:
        out = self._post("exists", {"keys": list(keys)})
        return [bool(x) for x in out["exists"]]

    def delete(self, keys: Sequence[str]) -> int:
        return int(self._post("delete", {"keys": list(keys)})["deleted"])

    def clear(self) -> None:
        self._post("clear")

    def stats(self) -> dict[str, Any]:
        try:
            resp = self._http.get("/v1/stats", params={"namespace": self.namespace})
            body = resp.json() if resp.status_code == 200 else {"error": resp.status_code}
        except httpx.HTTPError as exc:
            body = {"error": str(exc)}
        return {"metadata": "remote", "url": self.url, "namespace": self.namespace, **body}

    def health(self) -> None:
        try:
            resp = self._http.get("/health")
        except httpx.HTTPError as exc:
            raise MetadataUnavailable(f"hf3fs metadata service {self.url} is unreachable: {exc}") from exc
        if resp.status_code != 200:
            raise MetadataUnavailable(f"hf3fs metadata service {self.url} answered {resp.status_code}")

    def close(self) -> None:
        self._http.close()
