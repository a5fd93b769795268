"""Two real processes share one metadata service: they see each other's pages, and a reader
never gets a slot that is still being written (or reused under it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from hf3fs_testutil import ServiceProcess
from hf3fs_worker import POOL, open_backend, page_content

WORKER = str(Path(__file__).with_name("hf3fs_worker.py"))


def _spawn(mode: str, args: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, WORKER, mode, json.dumps(args)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )


def _result(proc: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return dict(json.loads(out.strip().splitlines()[-1]))


def test_two_processes_see_each_others_pages(tmp_path: Path, metadata_service: ServiceProcess) -> None:
    common = {"prefix": str(tmp_path / "kv"), "file_size": 8 << 20, "url": metadata_service.url, "timeout": 30}
    shared = [f"{'s' * 60}{i:04d}" for i in range(3)]  # both write these at the same time
    a_keys = shared + [f"{'a' * 60}{i:04d}" for i in range(6)]
    b_keys = shared + [f"{'b' * 60}{i:04d}" for i in range(6)]
    a = _spawn("exchange", {**common, "name": "a", "other": "b", "mine": a_keys, "theirs": b_keys})
    b = _spawn("exchange", {**common, "name": "b", "other": "a", "mine": b_keys, "theirs": a_keys})
    ra, rb = _result(a), _result(b)
    for r in (ra, rb):
        assert r["stored"] == [True] * 9
        assert r["read"] == [True] * 9, r["stats"]
        assert r["match"] == [True] * 9
        assert r["stats"]["mode"] == "plain-file (not 3FS)" and r["stats"]["on_3fs"] is False
        assert r["stats"]["metadata"]["metadata"] == "remote"
    # Each shared page is stored once: one side wrote it, or both did and one confirm won.
    assert ra["stats"]["metadata"]["ready_pages"] >= 15


def test_a_page_being_written_is_invisible_to_another_process(tmp_path: Path, metadata_service: ServiceProcess) -> None:
    args = {"prefix": str(tmp_path / "kv"), "file_size": 8 << 20, "url": metadata_service.url}
    key = "c" * 64
    writer = _spawn("slow_writer", {**args, "key": key})
    assert writer.stdout is not None and writer.stdin is not None
    line = writer.stdout.readline()
    assert json.loads(line)["state"] == "half-written", writer.stderr.read() if writer.stderr else ""
    reader, pool = open_backend(args)
    try:
        dest = pool.alloc(pool.page_size)
        assert dest is not None
        # The half-written page exists in the file, but not for readers.
        assert reader.exists(key) is False
        assert reader.batch_get_v1([key], dest) == [False]
        assert reader.get_stats()["read_misses"] == 1
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert _result(writer)["confirmed"] == [True]
        assert reader.exists(key) is True
        assert reader.batch_get_v1([key], dest) == [True]
        got = bytes(pool.read_page(pool.indices_to_pages(dest)[0]).view(torch.uint8).numpy())
        assert got == page_content(key, pool.page_bytes)
    finally:
        reader.close()


def test_reader_never_gets_a_reused_or_unfinished_slot_under_churn(
    tmp_path: Path, metadata_service: ServiceProcess
) -> None:
    """The writer keeps deleting its oldest pages and writing new ones into the freed slots
    (and, the file being smaller than the live set, evicting) while the reader reads.

    Every page the reader accepts must hold exactly its key's bytes; a read that raced with a
    slot's reuse must come back False (counted as read_stale), never as a wrong page.
    """
    page_bytes = 2 * POOL["page_size"] * POOL["layer_num"] * POOL["head_num"] * 256 * 2
    common = {
        "prefix": str(tmp_path / "kv"), "file_size": 20 * page_bytes, "url": metadata_service.url,
        "progress": str(tmp_path / "progress"), "seconds": 3.0, "head_dim": 256,
    }
    writer = _spawn("churn_writer", {**common, "chain": 4, "live": 24})
    reader = _spawn("churn_reader", {**common, "batch": 16, "window": 24})
    rw, rr = _result(writer), _result(reader)
    assert "error" not in rw, rw
    assert rw["pages"] > 24, "the writer must have reused slots"
    assert rr["attempts"] > 0 and rr["hits"] > 0, rr
    assert rr["wrong"] == 0, rr
    assert rr["stats"]["read_hits"] == rr["hits"]
