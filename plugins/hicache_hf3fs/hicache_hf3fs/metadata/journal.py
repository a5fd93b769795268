"""The in-process index's journal: every change to the stored pages, appended as it happens.

The index snapshot (``<file>.index.json``) is written at close; a process killed before that
(``kill -9``, OOM) would lose every page stored since. So each change that makes a page visible
or takes one away is appended to ``<index>.journal`` before the call that made it returns:

- ``["c", key, slot, gen, parent]``: a page became visible (``confirm``);
- ``["d", key]``: a page went away (``delete``, or evicted to free its slot);
- ``["x"]``: every page went away (``clear``).

An eviction is journaled before the slot is handed out for new bytes, so a replay never maps a
key to a slot that may since hold another page. At start the journal is replayed over the
snapshot (a torn last line, from a kill mid-append, is ignored); a saved snapshot empties it.
The appends are plain ``write``s: they survive the process, not the machine (neither do the
page bytes, which are not fsynced either).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


class Journal:
    """Append-only record of page-visibility changes of one rank file's index.

    Its first line names the page geometry it describes (``["g", num_pages, page_bytes]``); a
    journal of another geometry is not replayed.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)

    def append(self, records: Iterable[list[Any]]) -> None:
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        if text:
            os.write(self._fd, text.encode())

    def restart(self, num_pages: int, page_bytes: int) -> None:
        """Empty the journal (a snapshot holding all of it was just saved) and name the geometry."""
        os.ftruncate(self._fd, 0)
        self.append([["g", num_pages, page_bytes]])

    def close(self) -> None:
        os.close(self._fd)

    def replay(self, state: dict[str, Any] | None, num_pages: int, page_bytes: int) -> tuple[dict[str, Any] | None, int]:
        """``state`` (a snapshot of this geometry, or None) with the journal applied, and how many
        records were applied. A journal of another geometry is left out (0 records)."""
        try:
            with open(self.path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            return state, 0
        records: list[Any] = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                log.warning("hf3fs: ignoring a torn journal line in %s", self.path)
        if not records or records[0] != ["g", num_pages, page_bytes]:
            if len(records) > 1:
                log.warning("hf3fs: the journal %s describes another page geometry; not replayed", self.path)
            return state, 0
        base = state or {"num_pages": num_pages, "page_bytes": page_bytes, "generation": 0, "entries": []}
        entries: dict[str, list[Any]] = {str(e[0]): list(e) for e in base.get("entries", [])}
        by_slot = {int(e[1]): str(e[0]) for e in entries.values()}
        generation = int(base.get("generation", 0))
        for record in records[1:]:
            op = record[0] if isinstance(record, list) and record else None
            if op == "c":
                key, slot, gen, parent = str(record[1]), int(record[2]), int(record[3]), record[4]
                old = entries.pop(key, None)
                if old is not None:
                    by_slot.pop(int(old[1]), None)
                holder = by_slot.pop(slot, None)
                if holder is not None:
                    entries.pop(holder, None)
                entries[key] = [key, slot, gen, parent]
                by_slot[slot] = key
                generation = max(generation, gen)
            elif op == "d":
                old = entries.pop(str(record[1]), None)
                if old is not None:
                    by_slot.pop(int(old[1]), None)
            elif op == "x":
                entries.clear()
                by_slot.clear()
        return {**base, "generation": generation, "entries": list(entries.values())}, len(records) - 1
