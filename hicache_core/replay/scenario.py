"""The seed's scenario: while a replay runs against a node, detach L3, attach it again, switch
to a second backend. Used by ``hicache demo`` and ``tests/test_scenario_switch.py``.

Phases are cut at fractions of the request list; each admin step is an HTTP call (the SGLang
admin API) made between two dispatches while earlier requests are still in flight.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from hicache_core.replay.runner import Action, ReplayResult, replay
from hicache_core.replay.targets import HttpTarget
from hicache_core.replay.trace import TraceRequest


@dataclass(frozen=True)
class BackendChoice:
    """A backend to attach: SGLang's PUT body fields."""

    name: str
    extra_config: dict[str, Any]
    label: str

    def body(self, replace: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"hicache_storage_backend": self.name,
                               "hicache_storage_backend_extra_config_json": json.dumps(self.extra_config)}
        if replace:
            out["replace"] = True
        return out


class AdminClient:
    """The admin API over HTTP; raises with the node's message when an operation fails."""

    def __init__(self, url: str, api_key: str) -> None:
        self._client = httpx.Client(base_url=url.rstrip("/"), timeout=120.0,
                                    headers={"Authorization": f"Bearer {api_key}"})

    def _check(self, resp: httpx.Response) -> str:
        data = resp.json()
        if resp.status_code != 200 or not data.get("success", True):
            raise RuntimeError(f"HTTP {resp.status_code}: {data.get('message') or data}")
        return str(data.get("message", ""))

    def attach(self, backend: BackendChoice, replace: bool = False) -> str:
        return self._check(self._client.put("/hicache/storage-backend", json=backend.body(replace)))

    def detach(self) -> str:
        return self._check(self._client.delete("/hicache/storage-backend"))

    def view(self) -> dict[str, Any]:
        resp = self._client.get("/hicache/storage-backend")
        resp.raise_for_status()
        out: dict[str, Any] = resp.json()
        return out

    def close(self) -> None:
        self._client.close()


def switch_scenario(
    url: str, api_key: str, requests: list[TraceRequest], first: BackendChoice, second: BackendChoice,
    cuts: tuple[float, float, float] = (0.4, 0.6, 0.8), concurrency: int = 4, progress: bool = True,
) -> ReplayResult:
    """Replay ``requests`` with ``first`` attached; detach, re-attach, then switch to ``second``."""
    admin = AdminClient(url, api_key)
    n = len(requests)
    at = [max(1, min(n - 1, int(n * c))) for c in cuts]

    def detach() -> str:
        admin.detach()
        return "detached"

    def reattach() -> str:
        admin.attach(first)
        return f"re-attached {first.label}"

    def switch() -> str:
        admin.attach(second, replace=True)
        return f"switched to {second.label}"

    actions: dict[int, Action] = {at[0]: detach, at[1]: reattach, at[2]: switch}
    target = HttpTarget(url)
    try:
        view = admin.view()
        start = f"attached {first.label}" if view.get("hicache_storage_backend") else "no L3"
        return replay(target, requests, concurrency=concurrency, actions=actions, phase=start,
                      progress=progress, description="replay + detach/attach/switch")
    finally:
        target.close()
        admin.close()
