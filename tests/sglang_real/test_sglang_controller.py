"""SGLang's own ``HiCacheController`` on CPU, with a hicache backend attached at runtime.

Everything here is SGLang's: a single-process gloo group, SGLang's parallel context published
with ``override_permanently``, ``MHATokenToKVPool`` / ``MLATokenToKVPool`` on ``device="cpu"``
with a ``PagedTokenToKVPoolAllocator``, the host pool built from the device pool's buffer info
(``pin_memory=False``), ``io_backend="direct"``, and ``HiCacheController`` itself (its device
module resolves to ``torch.cpu`` without an accelerator). The hicache backend comes in through
``attach_storage_backend("dynamic", ...)`` and ``hicache_core.compat.sglang_bridge``.

Driven here: attach, backup (``write_storage`` -> SGLang's backup thread -> ``ack_backup_queue``),
prefetch (``prefetch`` -> SGLang's hit query thread -> ``prefetch_hit_queue``; then the
scheduler's half, done by the test: ``alloc_prefetch_host_buffers``, ``prefetch_buffer``,
``ack_prefetch_queue``), and detach.

Where it stops, and why: the L1<->L2 copies (``HiCacheController.write`` / ``load``, i.e. the
host pool's ``backup_from_device_all_layer`` / ``load_to_device_per_layer``) move KV between the
device pool and the host pool with ``sgl_kernel``'s transfer kernels, which need a CUDA (or
ROCm/XPU/NPU) device; these tests put KV into the host pool directly (as a device->host backup
would have left it) and check it in the host pool after the prefetch, which is where SGLang's
storage path ends.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from sglang_real.sglang_env import require_sglang

require_sglang()

import torch.distributed as dist  # noqa: E402
from sglang.srt.managers.cache_controller import HiCacheController  # noqa: E402
from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator  # noqa: E402
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, MLATokenToKVPool  # noqa: E402
from sglang.srt.mem_cache.pool_host.base import host_memory_budget_scope  # noqa: E402
from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost  # noqa: E402
from sglang.srt.mem_cache.pool_host.mla import MLATokenToKVPoolHost  # noqa: E402
from sglang.srt.mem_cache.utils import get_storage_hash_str  # noqa: E402
from sglang.srt.runtime_context import get_parallel  # noqa: E402
from sglang_real.sglang_pools import read_pages  # noqa: E402

from hicache_core.compat.sglang_bridge import bridge_class  # noqa: E402
from hicache_core.keys import page_hashes  # noqa: E402

P, LAYERS, DEVICE_TOKENS = 4, 2, 64
TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def tp_group() -> Iterator[Any]:
    """A gloo process group of world size 1, and SGLang's parallel context for one rank; both
    undone at the end of the module."""
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    get_parallel().override_permanently(tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_dcp_rank=0,
                                        attn_dcp_size=1)
    yield dist.new_group([0], backend="gloo")
    get_parallel().clear_stamp()
    if created:
        dist.destroy_process_group()


def cpu_engine(kind: str, layout: str, tp_group: Any) -> HiCacheController:
    """SGLang's device pool, allocator, host pool and controller, all on CPU."""
    if kind == "mha":
        device = MHATokenToKVPool(size=DEVICE_TOKENS, page_size=P, dtype=torch.bfloat16, head_num=2, head_dim=8,
                                  layer_num=LAYERS, device="cpu", enable_memory_saver=False)
    else:
        device = MLATokenToKVPool(size=DEVICE_TOKENS, page_size=P, dtype=torch.bfloat16, kv_lora_rank=8,
                                  qk_rope_head_dim=8, layer_num=LAYERS, device="cpu", enable_memory_saver=False)
    allocator = PagedTokenToKVPoolAllocator(DEVICE_TOKENS, P, torch.bfloat16, "cpu", device, need_sort=False)
    info = device.get_device_pool_infos()[0].buffer_info
    common: dict[str, Any] = {"pin_memory": False, "device": "cpu", "device_capacity_tokens": DEVICE_TOKENS,
                              "start_layer": 0, "end_layer": LAYERS}
    with host_memory_budget_scope(1 << 30):
        if kind == "mha":
            host = MHATokenToKVPoolHost(info, 4.0, 0, P, layout, **common)
        else:
            host = MLATokenToKVPoolHost(info, 4.0, 0, P, layout, target_layer_num=LAYERS, **common)
    return HiCacheController(allocator, host, P, tp_group, threading.Event(), write_policy="write_through",
                             io_backend="direct", model_name="sglang-real/model")


@pytest.fixture
def engines(tp_group: Any) -> Iterator[Callable[[str, str], HiCacheController]]:
    made: list[HiCacheController] = []

    def _make(kind: str, layout: str) -> HiCacheController:
        made.append(cpu_engine(kind, layout, tp_group))
        return made[-1]

    yield _make
    for ctrl in made:
        try:
            ctrl.detach_storage_backend()
        except Exception:
            pass


def put_pages(host: Any, n: int, seed: int) -> tuple[torch.Tensor, list[bytes]]:
    """Host-pool pages holding KV, as a device->host backup would leave them (see module doc)."""
    idx = host.alloc(n * P)
    gen = torch.Generator().manual_seed(seed)
    for i in range(n):
        numel = host.get_data_page(int(idx[i * P])).numel()
        host.set_from_flat_data_page(int(idx[i * P]), torch.randn(numel, generator=gen).to(host.dtype))
    return idx, read_pages(host, idx)


def backup(ctrl: HiCacheController, host_indices: torch.Tensor, tokens: list[int]) -> int:
    """SGLang's backup: ``write_storage`` with the page hashes, then its ack. Tokens backed up."""
    hashes = get_storage_hash_str(tokens, None, page_size=P)
    ctrl.write_storage(host_indices, tokens, hash_value=hashes)
    op = ctrl.ack_backup_queue.get(timeout=TIMEOUT_S)
    return int(op.completed_tokens)


def prefetch(ctrl: HiCacheController, rid: str, tokens: list[int]) -> tuple[int, torch.Tensor | None]:
    """SGLang's prefetch, with the scheduler's half done here. Returns (tokens loaded, host indices)."""
    ctrl.prefetch(rid, tokens)
    op = ctrl.prefetch_hit_queue.get(timeout=TIMEOUT_S)
    if op.storage_hit_count == 0:
        return 0, None
    host_indices = ctrl.alloc_prefetch_host_buffers(op, op.storage_hit_count)
    assert host_indices is not None
    op.host_indices = host_indices
    ctrl.prefetch_buffer.put(op)
    completed = 0
    while True:
        ack = ctrl.ack_prefetch_queue.get(timeout=TIMEOUT_S)
        if ack.completed_tokens is not None:
            completed = int(ack.completed_tokens)
        if ack.completed_req:
            return completed, host_indices


CASES = [("file", "mha", "page_first", 1), ("file", "mha", "layer_first", 0), ("file", "mla", "page_first_direct", 1),
         ("mooncake", "mha", "page_first", 1), ("nixl", "mha", "page_head", 1)]


@pytest.mark.parametrize(("name", "kind", "layout", "v1"), CASES, ids=[f"{n}-{k}-{lay}-v1{v}" for n, k, lay, v in CASES])
def test_attach_backup_prefetch_detach(name: str, kind: str, layout: str, v1: int,
                                       engines: Callable[[str, str], HiCacheController],
                                       bridge_extra: Callable[..., dict[str, Any]]) -> None:
    ctrl = engines(kind, layout)
    extra = bridge_extra(name, interface_v1=v1)
    ctrl.attach_storage_backend("dynamic", prefetch_threshold=P, model_name="sglang-real/model",
                                storage_backend_extra_config=dict(extra))
    backend = ctrl.storage_backend
    assert isinstance(backend, bridge_class()) and backend.hicache_backend_name == name
    assert ctrl.storage_config.is_mla_model is (kind == "mla")
    expected_path = "_page_get_zero_copy" if v1 else "_generic_page_get"
    assert ctrl.page_get_func.__name__ == expected_path, "SGLang chose its path from interface_v1"

    tokens = list(range(1000, 1000 + 3 * P))
    assert page_hashes(tokens, P) == get_storage_hash_str(tokens, None, page_size=P), "same key chain"
    stored, expected = put_pages(ctrl.mem_pool_host, 3, seed=5)
    assert backup(ctrl, stored, tokens) == 3 * P

    # A longer request whose first 3 pages are stored: SGLang's hit query finds 3, loads 3.
    loaded, where = prefetch(ctrl, "req-1", [*tokens, *range(5000, 5000 + 2 * P)])
    assert loaded == 3 * P and where is not None
    assert read_pages(ctrl.mem_pool_host, where) == expected, "bytes came back through L3"

    # Another prefix: a miss, answered as one (no host buffers, no error).
    assert prefetch(ctrl, "req-2", list(range(9000, 9000 + 2 * P)))[0] == 0

    ctrl.detach_storage_backend()
    assert ctrl.storage_backend is None and ctrl.enable_storage is False


def test_reattach_sees_pages_stored_before_detach(engines: Callable[[str, str], HiCacheController],
                                                  bridge_extra: Callable[..., dict[str, Any]]) -> None:
    """Detach keeps L3 data; a new attach (a new bridge and backend instance) hits it."""
    ctrl = engines("mha", "page_first_direct")
    extra = bridge_extra("file")
    ctrl.attach_storage_backend("dynamic", prefetch_threshold=P, storage_backend_extra_config=dict(extra),
                                model_name="sglang-real/model")
    tokens = list(range(77, 77 + 2 * P))
    stored, expected = put_pages(ctrl.mem_pool_host, 2, seed=9)
    assert backup(ctrl, stored, tokens) == 2 * P
    first = ctrl.storage_backend
    ctrl.detach_storage_backend()
    ctrl.attach_storage_backend("dynamic", prefetch_threshold=P, storage_backend_extra_config=dict(extra),
                                model_name="sglang-real/model")
    assert ctrl.storage_backend is not first
    loaded, where = prefetch(ctrl, "again", tokens)
    assert loaded == 2 * P and where is not None and read_pages(ctrl.mem_pool_host, where) == expected


def test_attach_failure_leaves_the_controller_detached(engines: Callable[[str, str], HiCacheController],
                                                       bridge_extra: Callable[..., dict[str, Any]]) -> None:
    """A bridge config SGLang cannot use fails SGLang's attach with hicache's message, and
    SGLang's rollback leaves no backend attached."""
    ctrl = engines("mha", "page_first")
    extra = bridge_extra("file")
    extra["hicache_backend"] = "no-such-backend"
    with pytest.raises(Exception, match="no-such-backend"):
        ctrl.attach_storage_backend("dynamic", storage_backend_extra_config=dict(extra))
    assert ctrl.storage_backend is None and ctrl.enable_storage is False
