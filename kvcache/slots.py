"""SlotPool: the fixed set of per-sequence state slots.

A slot is one row of every "slot"-scoped state tensor (models/state.py): the sliding-window ring and
the compressor tails of one live sequence. There is one slot per running sequence, so the pool has
`max_num_seqs` slots. Free slots form a stack (slot 0 first on a fresh pool, then the most recently
released one), which keeps the touched rows few when the load is light.
"""

from __future__ import annotations


class SlotPool:
    def __init__(self, num_slots: int) -> None:
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        self.num_slots = num_slots
        self._free: list[int] = list(range(num_slots - 1, -1, -1))  # stack: pop() gives slot 0 first
        self._used = [False] * num_slots

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_slots - len(self._free)

    def allocate(self) -> int | None:
        """A free slot id, or None when all slots are taken."""
        if not self._free:
            return None
        s = self._free.pop()
        self._used[s] = True
        return s

    def free(self, slot: int) -> None:
        if not 0 <= slot < self.num_slots:
            raise ValueError(f"slot {slot} out of range [0, {self.num_slots})")
        if not self._used[slot]:
            raise RuntimeError(f"double free of state slot {slot}")
        self._used[slot] = False
        self._free.append(slot)

    def is_used(self, slot: int) -> bool:
        return self._used[slot]

    def check_integrity(self) -> None:
        free = set(self._free)
        assert len(free) == len(self._free), "a slot appears twice in the free list"
        for s in range(self.num_slots):
            assert self._used[s] != (s in free), f"slot {s} is both/neither free and used"
