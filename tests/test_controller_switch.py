"""Switching backends while request threads prefetch and back up (quiesce mode).

Several request threads run prefetch/backup loops against the controller while another
thread switches between two real file stores (and detaches and re-attaches). Nothing may
raise, nothing may hang, every page that comes back holds exactly its bytes, every backup
gets exactly one ``on_done``, and the host pool gets every page back.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

from _controller_backends import check_pages, fill_pages, hashes, make_controller, make_pool

from hicache_core.controller import ControllerError


def test_switch_under_load(tmp_path: Path) -> None:
    pool = make_pool(pages=2048)
    ctl = make_controller(pool, quiesce_timeout_s=2.0)
    stores = [
        ("dirstore", {"root": str(tmp_path / "a"), "prefetch_threshold": 0,
                      "fault_injection": {"delay_ms": [0, 3], "seed": 1}}),
        ("dirstore2", {"root": str(tmp_path / "b"), "prefetch_threshold": 0}),
    ]
    ctl.attach(*stores[0], prefetch_policy="wait_complete")
    total_pages = pool.available_size()
    stop = threading.Event()
    errors: list[BaseException] = []
    stats = {"prefetched_pages": 0, "backups": 0, "misses": 0}
    lock = threading.Lock()
    done_counts: dict[int, int] = {}

    def request_thread(seed: int) -> None:
        rng = random.Random(seed)
        chains = [hashes(rng.randint(4, 40)) for _ in range(4)]
        job = 0
        outstanding = threading.BoundedSemaphore(4)  # back-pressure, as an engine has
        try:
            while not stop.is_set():
                hs = rng.choice(chains)
                if rng.random() < 0.5:
                    assert outstanding.acquire(timeout=10), "backups never completed"
                    idx = fill_pages(pool, hs)
                    job_id = seed * 1_000_000 + job
                    job += 1

                    def on_done(results: list[bool], idx: object = idx, job_id: int = job_id, n: int = len(hs)) -> None:
                        assert len(results) == n
                        with lock:
                            done_counts[job_id] = done_counts.get(job_id, 0) + 1
                        pool.free(idx)  # type: ignore[arg-type]
                        outstanding.release()

                    with lock:
                        stats["backups"] += 1
                        done_counts.setdefault(job_id, 0)
                    ctl.backup(hs, idx, on_done)
                else:
                    op = ctl.prefetch(hs)
                    if op is None:
                        with lock:
                            stats["misses"] += 1
                        continue
                    res = op.wait()
                    assert res.page_hashes == hs[: res.pages]
                    check_pages(pool, res.page_hashes, res.host_indices)
                    pool.free(res.host_indices)
                    with lock:
                        stats["prefetched_pages"] += res.pages
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=request_thread, args=(s,), daemon=True) for s in range(4)]
    for t in threads:
        t.start()
    switches = 0
    # At least 4 s and 10 switches (a loaded machine switches slower), at most 20 s.
    start = time.monotonic()
    rng = random.Random(7)
    while not errors and time.monotonic() - start < 20.0 and (time.monotonic() - start < 4.0 or switches < 10):
        time.sleep(rng.uniform(0.05, 0.2))
        name, extra = stores[(switches + 1) % 2]
        if switches % 5 == 4:
            ctl.detach()
            time.sleep(0.02)
            ctl.attach(name, extra)
        else:
            try:
                ctl.attach(name, extra, replace=True)
            except ControllerError as exc:  # never expected: report it
                errors.append(exc)
        switches += 1
    stop.set()
    for t in threads:
        t.join(timeout=20)
        assert not t.is_alive(), "a request thread hung"
    ctl.close()
    assert not errors, errors[:3]
    assert switches >= 10
    assert stats["prefetched_pages"] > 0 and stats["backups"] > 0
    # Every backup got exactly one on_done, and every host page went back to the pool.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(v == 0 for v in done_counts.values()):
        time.sleep(0.01)
    assert set(done_counts.values()) == {1}
    assert pool.available_size() == total_pages
    counters = ctl.metrics.snapshot()
    assert counters["attaches"] >= switches - switches // 5
