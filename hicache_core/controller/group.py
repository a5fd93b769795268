"""``ControllerGroup``: the admin operations over every data-parallel rank, all or nothing."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from hicache_core.controller.controller import StorageController
from hicache_core.controller.errors import ControllerError

log = logging.getLogger(__name__)


class ControllerGroup:
    """Drives several controllers (one per DP rank) together.

    ``attach`` succeeds only if every rank attaches; when one fails, the ranks that had
    already succeeded are put back as they were (the previous backend re-attached, or
    detached), and the error lists every rank's message joined with ``"; "``.
    """

    def __init__(self, controllers: Sequence[StorageController]) -> None:
        if not controllers:
            raise ValueError("ControllerGroup needs at least one controller")
        self.controllers = list(controllers)

    def __len__(self) -> int:
        return len(self.controllers)

    @property
    def attached(self) -> bool:
        return all(c.attached for c in self.controllers)

    @property
    def write_policy(self) -> str:
        return self.controllers[0].write_policy

    def attach(
        self,
        backend: str,
        extra_config: dict[str, Any] | None = None,
        prefetch_policy: str | None = None,
        write_policy: str | None = None,
        replace: bool = False,
        switch_mode: str = "quiesce",
    ) -> str:
        if switch_mode == "idle":  # every rank must be idle before any rank switches
            self._check_idle_all("attach")
        before = [_snapshot(c) for c in self.controllers]
        messages: list[str] = []
        done: list[int] = []
        for i, ctl in enumerate(self.controllers):
            try:
                messages.append(f"rank {ctl.rank}: " + ctl.attach(
                    backend, extra_config, prefetch_policy, write_policy, replace=replace, switch_mode=switch_mode
                ))
                done.append(i)
            except ControllerError as exc:
                messages.append(f"rank {ctl.rank}: {exc}")
                rollback = [self._restore(self.controllers[j], before[j]) for j in reversed(done)]
                skipped = [f"rank {c.rank}: not attempted" for c in self.controllers[i + 1 :]]
                raise ControllerError("; ".join([*messages, *skipped, *(r for r in rollback if r)])) from exc
        return "; ".join(messages)

    def detach(self, switch_mode: str = "quiesce") -> str:
        """Detach every rank; when ``idle`` mode refuses on one rank, nothing is detached."""
        if switch_mode == "idle":
            self._check_idle_all("detach")
        messages: list[str] = []
        errors: list[str] = []
        for ctl in self.controllers:
            try:
                messages.append(f"rank {ctl.rank}: {ctl.detach()}")
            except ControllerError as exc:
                errors.append(f"rank {ctl.rank}: {exc}")
        if errors:
            raise ControllerError("; ".join([*messages, *errors]))
        return "; ".join(messages)

    def status(self) -> dict[str, Any]:
        ranks = [c.status() for c in self.controllers]
        states = {r["state"] for r in ranks}
        return {"state": states.pop() if len(states) == 1 else "mixed", "ranks": ranks}

    def backend_view(self) -> dict[str, Any]:
        return self.controllers[0].backend_view()

    def close(self) -> None:
        for ctl in self.controllers:
            ctl.close()

    def _check_idle_all(self, op: str) -> None:
        refusals = []
        for ctl in self.controllers:
            if op == "detach" and not ctl.attached:
                continue  # nothing to switch on this rank
            try:
                ctl._check_idle(op)
            except ControllerError as exc:
                refusals.append(f"rank {ctl.rank}: {exc}")
        if refusals:
            raise ControllerError("; ".join(refusals))

    @staticmethod
    def _restore(ctl: StorageController, snap: dict[str, Any] | None) -> str:
        """Put ``ctl`` back as ``snap`` says; returns a message only when that fails."""
        try:
            if snap is None:
                ctl.detach()
            else:
                ctl.attach(
                    snap["backend"], snap["extra_config"], snap["prefetch_policy"], snap["write_policy"],
                    replace=True,
                )
            return ""
        except ControllerError as exc:
            log.error("rank %d: rollback failed: %s", ctl.rank, exc)
            return f"rank {ctl.rank}: rollback failed: {exc}"


def _snapshot(ctl: StorageController) -> dict[str, Any] | None:
    spec = ctl._session.spec if ctl._session is not None else None
    if spec is None:
        return None
    return {
        "backend": spec.backend,
        "extra_config": dict(spec.extra_config),
        "prefetch_policy": ctl.prefetch_policy,
        "write_policy": ctl.write_policy,
    }
