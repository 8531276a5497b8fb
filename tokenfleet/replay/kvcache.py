"""Paged KV-cache accounting for one replica, in blocks of `block_size` tokens.

Sequences that are decoding grow by one token per step, so their block count changes at
predictable steps. Rather than touching each sequence every step, the cache keeps a histogram of
their phases: a decoding sequence is stored by its offset `a = cached_tokens - step_no`, which
does not change while it decodes. The blocks they hold at any step, and the new blocks a run of
steps needs, then follow from the histogram in O(block_size) at worst, whatever the batch size.
"""

from __future__ import annotations


class KVCache:
    """Blocks of one replica: decoding sequences by phase, everything else as a plain count."""

    __slots__ = (
        "block_size",
        "capacity_blocks",
        "other_blocks",
        "hist",
        "q_sum",
        "n_phased",
        "memo_step",
        "memo_blocks",
    )

    def __init__(self, capacity_blocks: int, block_size: int = 16) -> None:
        self.block_size = block_size
        self.capacity_blocks = capacity_blocks
        # Blocks held by sequences that are not in the phase histogram (prefilling, reserved),
        # less those counted twice: prefix-cache blocks shared by several sequences (so it can
        # be negative when the sharers all decode).
        self.other_blocks = 0
        # hist[p] = decoding sequences whose offset a satisfies a % block_size == p.
        self.hist = [0] * block_size
        # Sum over decoding sequences of a // block_size.
        self.q_sum = 0
        self.n_phased = 0
        # The last decoder_blocks answer (asked for the same step several times per step).
        self.memo_step = -1
        self.memo_blocks = 0

    def add_decoder(self, offset: int) -> None:
        """A sequence with `cached = offset + step_no` starts decoding (its blocks count here)."""
        q, p = divmod(offset, self.block_size)
        self.hist[p] += 1
        self.q_sum += q
        self.n_phased += 1
        # The last answer stays valid: at that step this sequence holds ceil((a + s) / B).
        # (blocks_for, inlined: twice per request, 2% of a replay's time as a call.)
        self.memo_blocks += -(-(offset + self.memo_step) // self.block_size)

    def remove_decoder(self, offset: int) -> None:
        """A decoding sequence leaves (finished or preempted): its blocks are freed."""
        q, p = divmod(offset, self.block_size)
        self.hist[p] -= 1
        self.q_sum -= q
        self.n_phased -= 1
        self.memo_blocks -= -(-(offset + self.memo_step) // self.block_size)

    def decoder_blocks(self, step_no: int) -> int:
        """Blocks held by decoding sequences at the start of step `step_no`.

        Each holds ceil((a + s) / B); with a = B q + p and s = B m + r this is
        q + m + [p + r >= 1] + [p + r >= B + 1], summed over the histogram.
        """
        memo_step = self.memo_step
        if step_no == memo_step:
            return self.memo_blocks
        if step_no == memo_step + 1:  # one step on: those at a block edge took a new one
            total = self.memo_blocks + self.hist[-memo_step % self.block_size]
            self.memo_step = step_no
            self.memo_blocks = total
            return total
        bs = self.block_size
        m, r = divmod(step_no, bs)
        n = self.n_phased
        total = self.q_sum + n * m + n
        if r == 0:
            total -= self.hist[0]
        else:
            total += sum(self.hist[bs + 1 - r :])
        self.memo_step = step_no
        self.memo_blocks = total
        return total

    def decoder_blocks_bound(self, step_no: int) -> int:
        """An upper bound, in O(1), on the blocks the decoding sequences hold once given step
        `step_no`'s new ones: each holds at most q + step_no // B + 2."""
        return self.q_sum + self.n_phased * (step_no // self.block_size + 2)

    def used_blocks(self, step_no: int) -> int:
        """All blocks in use at the start of step `step_no` (before its allocations)."""
        return self.other_blocks + self.decoder_blocks(step_no)

    def decode_demand(self, step_no: int) -> int:
        """New blocks the decoding sequences need for step `step_no` (those at a block edge)."""
        return self.hist[-step_no % self.block_size]

    def steps_until_full(self, step_no: int, max_steps: int) -> int:
        """How many decode-only steps from `step_no` (at most `max_steps`) fit in free blocks."""
        room = self.capacity_blocks - self.other_blocks
        if self.decoder_blocks(step_no + max_steps) <= room:
            return max_steps
        lo, hi = 0, max_steps  # lo steps fit, hi steps do not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.decoder_blocks(step_no + mid) <= room:
                lo = mid
            else:
                hi = mid
        return lo

    def blocks_for(self, tokens: int) -> int:
        """Blocks that hold `tokens` tokens."""
        return -(-tokens // self.block_size)
