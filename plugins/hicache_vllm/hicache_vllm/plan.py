"""What the scheduler tells the worker each step: pages to load and pages to save.

Plain data (pickled from the scheduler process to the workers): per request, the vLLM block
ids and the page hashes of the pages to move, in page order.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PageTransfer:
    req_id: str
    hashes: list[str]
    block_ids: list[int]


@dataclass
class StepPlan:
    loads: list[PageTransfer] = field(default_factory=list)
    saves: list[PageTransfer] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.loads and not self.saves
