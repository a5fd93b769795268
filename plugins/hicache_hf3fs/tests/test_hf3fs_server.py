"""The shared metadata service's HTTP API, on a real service process."""

from __future__ import annotations

import uuid

import httpx
from hf3fs_testutil import ServiceProcess


def test_api_round_trip(metadata_service: ServiceProcess) -> None:
    ns = f"/tmp/{uuid.uuid4().hex}.0.bin"
    with httpx.Client(base_url=metadata_service.url, timeout=5) as http:
        assert http.get("/health").json()["status"] == "ok"
        # Not initialized: reads answer "absent", writes are refused with a reason.
        assert http.post("/v1/exists", json={"namespace": ns, "keys": ["a"]}).json() == {"exists": [False]}
        refused = http.post("/v1/allocate", json={"namespace": ns, "keys": ["a"]})
        assert refused.status_code == 404 and "initialize" in refused.json()["detail"]
        init = {"namespace": ns, "num_pages": 2, "page_bytes": 4096}
        assert http.post("/v1/initialize", json=init).json() == {"created": True}
        assert http.post("/v1/initialize", json=init).json() == {"created": False}
        alloc = http.post("/v1/allocate", json={"namespace": ns, "keys": ["a", "b"], "parents": [None, "a"]})
        (s_a, slot_a, gen_a), (s_b, slot_b, gen_b) = alloc.json()["allocations"]
        assert s_a == s_b == "new" and slot_a != slot_b
        done = http.post("/v1/confirm", json={"namespace": ns, "written": [["a", slot_a, gen_a]],
                                              "aborted": [["b", slot_b, gen_b]]})
        assert done.json() == {"confirmed": [True]}
        assert http.post("/v1/exists", json={"namespace": ns, "keys": ["a", "b"]}).json()["exists"] == [True, False]
        refs = http.post("/v1/lookup", json={"namespace": ns, "keys": ["a", "b"]}).json()["refs"]
        assert refs == [["a", slot_a, gen_a], None]
        assert http.post("/v1/validate", json={"namespace": ns, "refs": [refs[0]]}).json() == {"valid": [True]}
        stats = http.get("/v1/stats", params={"namespace": ns}).json()
        assert stats["ready_pages"] == 1 and stats["free_pages"] == 1
        assert ns in http.get("/v1/namespaces").json()["namespaces"]
        conflict = http.post("/v1/initialize", json={**init, "page_bytes": 8192})
        assert conflict.status_code == 409 and "file_path_prefix" in conflict.json()["detail"]
        bad = http.post("/v1/allocate", json={"namespace": ns, "keys": ["x", "y"], "parents": [None]})
        assert bad.status_code == 422
        assert http.post("/v1/delete", json={"namespace": ns, "keys": ["a", "zz"]}).json() == {"deleted": 1}
        assert http.post("/v1/clear", json={"namespace": ns}).json() == {"cleared": True}
