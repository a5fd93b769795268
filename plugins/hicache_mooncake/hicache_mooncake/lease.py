"""A Mooncake client leased by one store from the process's ``client_pool``, and the host
memory that store registered on it.

The lease remembers every buffer it registered so that closing the store unregisters all of
them, and whether the client itself misbehaved (a registration that failed, an unregister that
did not take, a health check that failed while the master answered): only a clean client goes
back to the pool for the next store with the same settings; a suspect one is closed.
"""

from __future__ import annotations

import torch

from hicache_core.spec.errors import HiCacheError
from hicache_mooncake import codes
from hicache_mooncake.client_pool import client_pool
from hicache_mooncake.config import MooncakeSettings
from hicache_mooncake.heap import return_freed_memory
from hicache_mooncake.objects import ObjectClient


class ClientLease:
    """``objects``: the leased client's object API; ``register``/``unregister``: host memory."""

    def __init__(self, settings: MooncakeSettings, max_batch_objects: int) -> None:
        self.settings = settings
        # A client another store of this process closed with the same settings, else a new one.
        self.objects = ObjectClient(client_pool().acquire(settings), settings.master_server_address, max_batch_objects)
        #: Set when the client itself misbehaved: it is closed at release, not handed on.
        self.suspect = False
        self._registered: list[int] = []

    def register(self, tensor: torch.Tensor) -> None:
        self.register_range(tensor.data_ptr(), tensor.numel() * tensor.element_size())

    def register_range(self, ptr: int, size: int) -> None:
        rc = self.objects.register(ptr, size)
        if rc != 0:
            self.suspect = True
            raise HiCacheError(
                f"mooncake: register_buffer of {size} bytes failed ({codes.name_of(rc)}, {rc}); "
                "with rdma, check the device and the locked-memory limit (ulimit -l)"
            )
        self._registered.append(ptr)

    def unregister(self, ptr: int) -> None:
        if not self.objects.unregister(ptr):
            self.suspect = True  # a buffer may still be registered: never hand it on
        if ptr in self._registered:
            self._registered.remove(ptr)

    def release(self) -> None:
        """Unregister what this lease registered and give the client back (or close it)."""
        if self.objects.closed:
            return
        for ptr in list(self._registered):
            self.unregister(ptr)
        client = self.objects.detach()
        reusable = not self.suspect and self.objects.client_faults == 0
        client_pool().release(self.settings, client, reusable)
        # What the store's calls freed stays in glibc's arenas, resident, otherwise (``heap``).
        return_freed_memory()
