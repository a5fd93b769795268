"""The page index: visibility only after confirm, generations, two writers, eviction from the tail."""

from __future__ import annotations

from pathlib import Path

from hicache_hf3fs.metadata.index import EXISTS, FULL, NEW, PageIndex, SlotRef


class Clock:
    """A settable monotonic clock, so lease expiry is tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _store(index: PageIndex, keys: list[str], parents: list[str | None] | None = None) -> list[SlotRef]:
    parents = parents if parents is not None else [None, *keys[:-1]]
    allocs = index.allocate(keys, parents)
    assert all(a.status == NEW for a in allocs), allocs
    refs = [SlotRef(k, a.slot, a.gen) for k, a in zip(keys, allocs)]
    assert index.confirm(refs) == [True] * len(keys)
    return refs


def test_page_is_invisible_until_confirmed() -> None:
    index = PageIndex(num_pages=4, page_bytes=64)
    (alloc,) = index.allocate(["a"], [None])
    assert alloc.status == NEW
    assert index.exists(["a"]) == [False]
    assert index.lookup(["a"]) == [None]
    assert index.confirm([SlotRef("a", alloc.slot, alloc.gen)]) == [True]
    assert index.exists(["a"]) == [True]
    assert index.lookup(["a"]) == [SlotRef("a", alloc.slot, alloc.gen)]


def test_aborted_write_frees_the_slot_and_stays_invisible() -> None:
    index = PageIndex(num_pages=1, page_bytes=64)
    (alloc,) = index.allocate(["a"], [None])
    index.confirm([], [SlotRef("a", alloc.slot, alloc.gen)])
    assert index.exists(["a"]) == [False]
    (again,) = index.allocate(["b"], [None])
    assert again.status == NEW and again.slot == alloc.slot and again.gen > alloc.gen


def test_stored_key_is_not_written_twice() -> None:
    index = PageIndex(num_pages=4, page_bytes=64)
    (ref,) = _store(index, ["a"])
    (alloc,) = index.allocate(["a"], [None])
    assert alloc.status == EXISTS and alloc.slot == ref.slot


def test_two_writers_of_one_key_get_two_slots_and_the_first_confirm_wins() -> None:
    index = PageIndex(num_pages=4, page_bytes=64)
    (a1,) = index.allocate(["k"], [None])
    (a2,) = index.allocate(["k"], [None])
    assert a1.status == a2.status == NEW and a1.slot != a2.slot
    assert index.confirm([SlotRef("k", a2.slot, a2.gen)]) == [True]
    assert index.confirm([SlotRef("k", a1.slot, a1.gen)]) == [True]
    assert index.lookup(["k"])[0] == SlotRef("k", a2.slot, a2.gen)
    # The loser's slot went back to the free list: two more pages fit in the 4 slots.
    assert [a.status for a in index.allocate(["x", "y"], [None, None])] == [NEW, NEW]
    assert index.stats()["ready_pages"] == 1 and index.stats()["writing_pages"] == 2


def test_generation_check_catches_a_slot_reused_during_a_read() -> None:
    index = PageIndex(num_pages=1, page_bytes=64)
    _store(index, ["old"])
    (ref,) = index.lookup(["old"])
    assert ref is not None
    # While the reader reads, the page is deleted and its slot is given to another page.
    index.delete(["old"])
    (alloc,) = index.allocate(["new"], [None])
    assert alloc.slot == ref.slot
    assert index.validate([ref]) == [False]
    index.confirm([SlotRef("new", alloc.slot, alloc.gen)])
    assert index.validate([ref]) == [False]
    (fresh,) = index.lookup(["new"])
    assert fresh is not None and index.validate([fresh]) == [True]


def test_eviction_takes_the_chain_tail_first() -> None:
    index = PageIndex(num_pages=3, page_bytes=64)
    _store(index, ["p0", "p1", "p2"])
    # Touch the chain from its head, so plain LRU would evict p0 (the head) first.
    index.lookup(["p0", "p1", "p2"])
    index.lookup(["p0"])
    (alloc,) = index.allocate(["q0"], [None])
    assert alloc.status == NEW
    assert index.exists(["p0", "p1", "p2"]) == [True, True, False]
    index.confirm([SlotRef("q0", alloc.slot, alloc.gen)])
    (alloc,) = index.allocate(["q1"], ["q0"])
    assert index.exists(["p0", "p1"]) == [True, False]
    index.confirm([SlotRef("q1", alloc.slot, alloc.gen)])
    assert index.evictions == 2
    assert index.parent_of("q1") == "q0"


def test_eviction_never_leaves_a_page_whose_prefix_is_gone() -> None:
    index = PageIndex(num_pages=8, page_bytes=64)
    chains = [[f"c{c}p{i}" for i in range(4)] for c in range(2)]
    for chain in chains:
        _store(index, chain)
    for n in range(12):  # keep writing unrelated pages: chains shrink from their tails
        _store(index, [f"other{n}"])
        for chain in chains:
            present = index.exists(chain)
            # A stored page's prefix neighbour is always stored too.
            assert present == sorted(present, reverse=True), (n, chain, present)


def test_prefix_of_a_batch_comes_from_the_caller() -> None:
    index = PageIndex(num_pages=3, page_bytes=64)
    _store(index, ["a"])
    _store(index, ["b", "c"], parents=["a", "b"])
    assert index.parent_of("b") == "a" and index.parent_of("c") == "b"
    (alloc,) = index.allocate(["z"], [None])
    assert alloc.status == NEW
    assert index.exists(["a", "b", "c"]) == [True, True, False]


def test_full_when_every_slot_is_being_written() -> None:
    index = PageIndex(num_pages=2, page_bytes=64, write_lease_seconds=10, clock=Clock())
    assert [a.status for a in index.allocate(["a", "b", "c"], [None] * 3)] == [NEW, NEW, FULL]


def test_expired_write_lease_is_reclaimed_and_its_late_confirm_fails() -> None:
    clock = Clock()
    index = PageIndex(num_pages=1, page_bytes=64, write_lease_seconds=10, clock=clock)
    (stuck,) = index.allocate(["dead-writer"], [None])
    clock.now += 11
    (alloc,) = index.allocate(["b"], [None])
    assert alloc.status == NEW and alloc.slot == stuck.slot
    assert index.confirm([SlotRef("dead-writer", stuck.slot, stuck.gen)]) == [False]
    assert index.stats()["reclaimed_write_leases"] == 1


def test_clear_invalidates_writes_in_flight_but_keeps_their_slots_reserved() -> None:
    index = PageIndex(num_pages=2, page_bytes=64)
    _store(index, ["a"])
    (alloc,) = index.allocate(["b"], [None])
    index.clear()
    assert index.exists(["a", "b"]) == [False, False]
    # b's writer may still be writing: its slot must not go to another page meanwhile.
    assert [a.status for a in index.allocate(["c", "d"], [None, None])] == [NEW, FULL]
    assert index.allocate(["e"], [None])[0].status == FULL
    assert index.confirm([SlotRef("b", alloc.slot, alloc.gen)]) == [False]
    assert index.exists(["b"]) == [False]
    (again,) = index.allocate(["f"], [None])
    assert again.status == NEW and again.slot == alloc.slot


def test_state_round_trip_keeps_pages_chains_and_generations() -> None:
    index = PageIndex(num_pages=4, page_bytes=64)
    refs = _store(index, ["p0", "p1"])
    index.delete(["p0"])  # p1's prefix is gone; it becomes a root
    _store(index, ["r0", "r1"])
    again = PageIndex.from_state(index.to_state())
    assert again.exists(["p0", "p1", "r0", "r1"]) == [False, True, True, True]
    assert again.validate([refs[1]]) == [True]
    assert again.parent_of("r1") == "r0" and again.parent_of("p1") is None
    (alloc,) = again.allocate(["n"], [None])
    assert alloc.status == NEW and alloc.gen > max(r.gen for r in refs)
    assert alloc.slot not in {r.slot for r in again.lookup(["p1", "r0", "r1"]) if r is not None}


def test_journal_replay_follows_confirms_evictions_deletes_and_clear(tmp_path: Path) -> None:
    from hicache_hf3fs.metadata.journal import Journal

    journal = Journal(str(tmp_path / "i.journal"))
    journal.restart(4, 64)
    snapshot = {"num_pages": 4, "page_bytes": 64, "generation": 3, "entries": [["old", 0, 3, None]]}
    journal.append([["c", "a", 1, 4, None], ["c", "b", 2, 5, "a"], ["d", "a"],
                    ["c", "new", 0, 6, None]])  # slot 0 reused: "old" must be gone
    with open(journal.path, "a") as fh:
        fh.write('["c","torn",3')  # a kill in the middle of an append
    state, n = journal.replay(snapshot, 4, 64)
    assert n == 4 and state is not None
    assert {e[0]: e[1] for e in state["entries"]} == {"b": 2, "new": 0}
    assert state["generation"] == 6
    assert journal.replay(snapshot, 8, 64) == (snapshot, 0)  # another geometry: not replayed
    journal.restart(4, 64)  # what a start does after replaying (the snapshot holds the rest)
    journal.append([["c", "y", 1, 8, None], ["x"], ["c", "z", 3, 9, None]])
    state, _ = journal.replay(None, 4, 64)
    assert state is not None and [e[0] for e in state["entries"]] == ["z"]
    journal.close()
