"""vLLM V1's automatic prefix caching for one replica: which blocks hold which prefix, and which
free block an allocation reuses.

The rules are vLLM V1's (`vllm/v1/core/block_pool.py`, `kv_cache_manager.py`,
`kv_cache_utils.py`; docs/engines/prefix-caching.md sets them out with the commits read):

- only full blocks are cached, each keyed by the chain of its content (equal key: equal tokens
  from the start of the sequence to the block's end);
- a lookup (for a waiting request with nothing computed) walks the chain from block 0 and stops
  at the first block not cached; it is capped at `(tokens - 1) // block_size` blocks, so a fully
  cached prompt still recomputes its last block;
- a block nobody references sits in one free queue, least recently used first, cached or not;
  an allocation takes the head and drops the hash of the block it reuses (the only eviction);
  a request returns its blocks in reverse order, so a chain's tail is evicted before its head;
  a hit takes its blocks out of the queue wherever they are;
- cached free blocks count as free: the replica's KV accounting (`KVCache`) never sees them.

**Keys.** A trace's `prefix_hashes` give one chained id per trace block of `T` tokens
(`tokenfleet.prefix_block_size`). Engine block j (tokens [jB, (j+1)B)) lies in trace block
b = ((j+1)B - 1) // T, the one holding its last token, so trace block b covers engine blocks
[bT // B, (b+1)T // B): 32 engine blocks of 16 tokens for Mooncake's 512. Its key is the pair
(trace id, position in the block), and equal trace ids mean equal content up to the end of the
trace block, so the chain carries over. Blocks past the hashed prompt (the prompt's unhashed
tail, the output) are keyed by the session, as `(session_id, b)`: a conversation's turn re-sends
the previous turn's prompt and output, so position b of a session holds the same tokens in every
turn that reaches it (with hashes, a later turn's hashed block finds the session's copy under
its new id). A request without a session keys them by itself, `(row, b)`: only it can hit them,
after a preemption. Without hashes the trace blocks are 512 tokens long.

**Representation.** The blocks under one key (a *group*) are held as counts, not one object per
block: sub-blocks [0, present) of a group exist; a request holds a prefix [0, c) of them. The
free queue holds *runs* (a group's sub-blocks [lo, hi), or a count of uncached blocks); freed
together in reverse, a group's higher sub-blocks always sit nearer the head, so eviction takes a
group's top sub-blocks first, as vLLM's order does block by block. The trace's ids go further:
one group (a *span*) holds a run of consecutive trace blocks of one chain, indexed by its first
id, with the list of its ids; a request whose ids part from a span's ends its hit there, and
what it adds branches off as a new span. This holds because a chain's blocks are cached and
evicted as a prefix: a block is held only with all blocks before it, returned no earlier than
they are and, in reverse order, queued nearer the head. A lookup, a hit, a release and an
eviction cost O(spans of the request), not O(blocks) nor O(trace blocks): a request of the
Mooncake trace (30.5 trace ids, 958 engine blocks on average) holds 1.3 spans when it finishes
(16 replicas, cache-aware routing), and a registration costs one C-level test of its new ids
(`dict.keys().isdisjoint`).

**Lazy eviction.** Allocations do not touch the queue: the replica's accounting already counts
them. Their pops are applied (`flush`) only before something reads which blocks are cached: a
lookup, a registration, a router's query. Pops always take the head and the queue never runs
short, so appending returned blocks before the pops are applied changes nothing.

Two simplifications, both rare: a request's output blocks become hittable when it finishes or
is preempted, not as each fills (only a session turn that arrives before the previous one
finishes could tell); a block recomputed while a copy is cached (the capped last block of a
repeated prompt) is not registered twice, and nothing past it is registered for that request
(vLLM keeps both copies under one hash).
"""

from __future__ import annotations

from collections import deque
from itertools import compress, count
from operator import ne

# Tokens per trace block of a trace without prefix hashes (a size of ours, shared by the
# caches and the routers: any size gives the same hits; longer blocks mean fewer per request).
SYNTHETIC_TRACE_BLOCK = 512


def prompt_block_keys(seq, trace_block: int) -> list:
    """The request's prompt as chained ids of whole trace blocks of `trace_block` tokens, as a
    router that never sees the engine's cache can key it: the trace's hashes, then (within a
    session) the session's positions. Equal lists' common prefix is common content."""
    full = seq.prompt_tokens // trace_block
    hashes = seq.hashes
    keys = list(hashes[:full]) if hashes is not None else []
    if seq.session_id is not None:
        keys += [("s", seq.session_id, b) for b in range(len(keys), full)]
    return keys


def leading_agreement(items: list, start: int, other: list) -> int:
    """How many leading items of `other` equal items[start:]: one list comparison in C for the
    usual whole match, else the first difference found by iterators in C (`compress` over
    `map(ne)`), about 1.4x faster than a generator's Python loop at any depth."""
    n = max(0, min(len(other), len(items) - start))
    mine = items[start : start + n]
    if mine == (other if n == len(other) else other[:n]):
        return n
    return next(compress(count(), map(ne, mine, other)), n)


class Group:
    """The cached blocks under one key: sub-blocks [0, present) from engine block `j0` on.

    A group of the trace's ids is a *span*: `keys` lists the ids of the trace blocks
    tb0, tb0 + 1, ... that its present sub-blocks reach (a chain, one request's run of blocks
    no other copy branches from), and it is indexed by its first id only."""

    __slots__ = (
        "key",
        "alias",
        "j0",
        "present",
        "holders",
        "top",
        "runs",
        "private",
        "keys",
        "tb0",
    )

    def __init__(self, key, j0: int, private: bool, keys: list | None = None, tb0: int = 0):
        self.key = key
        self.alias = None  # a second key it is known by (a session's output, now hashed)
        self.j0 = j0
        self.keys = keys  # a span's trace ids, exactly those its present blocks reach
        self.tb0 = tb0  # a span's first trace block
        self.present = 0
        self.holders: dict[int, int] = {}  # coverage c -> requests holding sub-blocks [0, c)
        self.top = 0  # the largest coverage held (0: nobody holds any)
        self.runs: list[Run] = []  # its free runs, lowest sub-blocks first (latest in queue)
        self.private = private  # keyed by one request: worthless once it has finished


class Run:
    """Free blocks in the queue: sub-blocks [lo, hi) of `group`, or hi - lo uncached blocks."""

    __slots__ = ("group", "lo", "hi")

    def __init__(self, group: Group | None, lo: int, hi: int) -> None:
        self.group = group
        self.lo = lo
        self.hi = hi


class PrefixCache:
    """The cached blocks of one replica and the free queue's order (see the module docstring).

    A request's `held` lists the groups it holds, (group, c) in chain order, covering its
    engine blocks [0, registered); its other blocks are uncached."""

    # False: a finished request that holds nothing and has no key gives its blocks back
    # through `loose`, without a call to `release` (the replica checks this first).
    releases_every_request = False

    __slots__ = (
        "block_size",
        "trace_block",
        "groups",
        "queue",
        "free",
        "loose",
        "keyed_free",
        "cached_blocks",
        "evicted_blocks",
    )

    def __init__(self, capacity_blocks: int, block_size: int, trace_block: int | None) -> None:
        self.block_size = block_size
        self.trace_block = trace_block or SYNTHETIC_TRACE_BLOCK
        self.groups: dict = {}
        self.queue: deque[Run] = deque([Run(None, 0, capacity_blocks)])
        self.free = capacity_blocks  # blocks in the queue, before the lazy pops
        # Uncached blocks given back since the queue last changed, not yet appended (nor in
        # `free`): they belong at its tail, after everything in it (`_settle` appends them).
        self.loose = 0
        self.keyed_free = 0  # cached blocks in the queue
        self.cached_blocks = 0  # blocks holding a key, held or free
        self.evicted_blocks = 0  # keys dropped by reuse, since the start

    # ------------------------------------------------------------------ keys

    def _segment(self, seq, j: int, hashed_end: int) -> tuple[object, int, bool]:
        """(key, end, private): the group holding the request's engine block j, and the
        request's last block in it (exclusive); `hashed_end` is `_hashed_end(seq)`."""
        bs, tb_tokens = self.block_size, self.trace_block
        tb = ((j + 1) * bs - 1) // tb_tokens  # the trace block holding block j's last token
        end = (tb + 1) * tb_tokens // bs
        if j < hashed_end:
            return seq.hashes[tb], end if end < hashed_end else hashed_end, False
        if seq.session_id is not None:
            return ("s", seq.session_id, tb), end, False
        return ("r", seq.row, tb), end, True

    # ------------------------------------------------------------------ lookups and hits

    def lookup(self, seq, tokens: int, free: int) -> tuple[list, int, int]:
        """The hit of a waiting request with `tokens` tokens (prompt plus output so far), when
        the replica has `free` free blocks: (groups hit, each as (group, the coverage the
        request would hold, the key it was looked up by), blocks hit, hit blocks that are free
        now). Changes nothing but the lazy pops: a request that does not fit looks again."""
        self.flush(free)
        return self._match(seq, (tokens - 1) // self.block_size)

    def cached_prompt_blocks(self, seq) -> int:
        """How many of the request's leading prompt blocks this replica holds now, as a router
        reading the engine's cache would see them (no cap, no pending evictions applied, no
        change to anything)."""
        return self._match(seq, seq.prompt_tokens // self.block_size)[1]

    def _match(self, seq, limit: int) -> tuple[list, int, int]:
        """Walk the request's chain from block 0 to at most `limit` blocks: `lookup`'s answer."""
        groups = self.groups
        hashes = seq.hashes
        hashed_end = self._hashed_end(seq)
        hits = []
        j = touched = 0
        while j < limit:
            key, end, _private = self._segment(seq, j, hashed_end)
            group = groups.get(key)
            if group is None and hashes is not None and seq.session_id is not None:
                group = self._session_copy(seq, j)
            if group is None or group.j0 != j:
                break
            keys = group.keys
            if keys is not None:  # a span: on as far as its ids are the request's
                tb0 = group.tb0
                agree = leading_agreement(hashes, tb0, keys)
                end = (tb0 + agree) * self.trace_block // self.block_size
                if end > hashed_end:
                    end = hashed_end
            want = (end if end < limit else limit) - j
            have = group.present if group.present < want else want
            hits.append((group, have, key))
            if have > group.top:
                touched += have - group.top
            j += have
            if j < end:  # the group ends early, or the limit falls inside it
                break
        return hits, j, touched

    def _hashed_end(self, seq) -> int:
        """The engine block where the request's hashed prompt ends (0: it has no hashes)."""
        if seq.hashes is None:
            return 0
        tokens = len(seq.hashes) * self.trace_block
        if tokens > seq.prompt_tokens:
            tokens = seq.prompt_tokens
        return tokens // self.block_size

    def _session_copy(self, seq, j: int) -> Group | None:
        """A hashed block missing under its id may be cached as the session's output (a
        session's position holds the same tokens in every turn); `touch` files it under the id
        too."""
        tb = ((j + 1) * self.block_size - 1) // self.trace_block
        group = self.groups.get(("s", seq.session_id, tb))
        return group if group is not None and group.alias is None else None

    def touch(self, seq, hits: list) -> int:
        """Attach a lookup's hit to the request (its free blocks leave the queue). Returns the
        hit blocks another request already held: the replica counts those once."""
        shared = 0
        held = seq.held
        for group, c, key in hits:
            if key != group.key:  # found as a session's copy: known by the hash from now on
                group.alias = key
                self.groups[key] = group
            top = group.top
            if c > top:
                self._take_free(group, top, c)
                group.top = c
                shared += top
            else:
                shared += c
            holders = group.holders
            holders[c] = holders.get(c, 0) + 1
            held.append((group, c))
        if hits:
            group, c, _key = hits[-1]
            seq.registered = group.j0 + c
        return shared

    def _take_free(self, group: Group, lo: int, hi: int) -> None:
        """Take sub-blocks [lo, hi) out of the queue: the group's lowest free runs."""
        runs = group.runs
        n = hi - lo
        self.free -= n
        self.keyed_free -= n
        while n:
            run = runs[0]
            k = run.hi - run.lo
            if k <= n:
                run.lo = run.hi  # empty: dropped when it reaches the head
                run.group = None
                del runs[0]
                n -= k
            else:
                run.lo += n
                n = 0

    # ------------------------------------------------------------------ filling and freeing

    def register(self, seq, full_blocks: int, private: bool) -> None:
        """The request's blocks up to `full_blocks` are full and scheduled: cache them (under
        a key of the request alone only with `private`)."""
        j = seq.registered
        if j < 0:  # stopped at a block cached by another copy
            return
        groups = self.groups
        held = seq.held
        hashed_end = self._hashed_end(seq)
        while j < full_blocks:
            key, end, is_private = self._segment(seq, j, hashed_end)
            if is_private and not private:
                break
            if end > full_blocks:
                end = full_blocks
            group, c = held[-1] if held else (None, 0)
            keys = group.keys if group is not None else None
            hashed = j < hashed_end
            if keys is not None and hashed:  # after a span of the trace's ids
                i = ((j + 1) * self.block_size - 1) // self.trace_block - group.tb0
                if i < len(keys) and keys[i] == key:  # the span goes on with this block
                    if group.present != c:  # another copy is cached past this request's part
                        seq.registered = -1
                        return
                elif key in groups:  # cached meanwhile by another request: not twice
                    seq.registered = -1
                    return
                elif i == len(keys):  # the span's present blocks end here: it grows
                    end = self._new_ids(seq, j, end, min(full_blocks, hashed_end), keys)
                else:  # another copy goes on differently: a new span branches off here
                    group = None
            elif keys is None and group is not None and key in (group.key, group.alias):
                if group.present != c:  # its last group goes on, unless another copy is past
                    seq.registered = -1
                    return
            else:
                group = None
            if group is None:
                if key in groups:  # cached meanwhile by another request: not twice
                    seq.registered = -1
                    return
                if hashed:
                    tb = ((j + 1) * self.block_size - 1) // self.trace_block
                    keys = []
                    end = self._new_ids(seq, j, end, min(full_blocks, hashed_end), keys)
                    group = Group(key, j, False, keys, tb)
                else:
                    group = Group(key, j, is_private)
                groups[key] = group
                c = 0
            else:
                held.pop()
                holders = group.holders
                holders[c] -= 1
                if not holders[c]:
                    del holders[c]
            holders = group.holders
            new_c = end - group.j0
            self.cached_blocks += new_c - c
            group.present = group.top = new_c
            holders[new_c] = holders.get(new_c, 0) + 1
            held.append((group, new_c))
            j = end
        seq.registered = j

    def _new_ids(self, seq, j: int, end: int, last: int, keys: list) -> int:
        """Append to a span's `keys` the request's ids from engine block j (a trace block's
        start, its id cached nowhere) on: all those up to engine block `last` when none is
        cached anywhere, else only the first. Returns where the span ends."""
        bs, tbt = self.block_size, self.trace_block
        tb = ((j + 1) * bs - 1) // tbt
        tb_last = (last * bs - 1) // tbt  # the trace block holding block last - 1's last token
        ids = seq.hashes[tb : tb_last + 1]
        # One C-level test for the whole run (block by block, each id would be looked up alone).
        if len(ids) > 1 and self.groups.keys().isdisjoint(ids[1:]):
            keys.extend(ids)
            return last
        keys.append(ids[0])
        return end

    def release(self, seq, tokens: int, blocks: int, finished: bool) -> int:
        """The request gives back its `blocks` blocks (it holds `tokens` computed tokens): they
        join the queue's tail in reverse order, with their keys. Returns how many of them other
        requests still hold."""
        if not finished:
            self.register(seq, tokens // self.block_size, True)
        elif seq.session_id is not None or (
            seq.hashes is not None and 0 <= seq.registered < self._hashed_end(seq)
        ):  # else only blocks keyed by the request alone are left: `register` would stop there
            self.register(seq, tokens // self.block_size, False)
        held = seq.held
        registered = held[-1][0].j0 + held[-1][1] if held else 0
        self._settle()
        self._append_uncached(blocks - registered)
        queue = self.queue
        kept = 0
        for group, c in reversed(held):
            holders = group.holders
            left = holders[c] - 1
            if left:
                holders[c] = left
            else:
                del holders[c]
            if c == group.top and not left:
                top = max(holders) if holders else 0
                group.top = top
                kept += top
                run = Run(group, top, c)
                queue.append(run)
                group.runs.insert(0, run)
                self.free += c - top
                self.keyed_free += c - top
            else:
                kept += c
            if group.private and finished:  # nobody else can hit it: uncached from now on
                for run in group.runs:
                    run.group = None
                    self.keyed_free -= run.hi - run.lo
                self.cached_blocks -= group.present
                self._forget(group)
        seq.held = []
        seq.registered = 0
        return kept

    def _settle(self) -> None:
        """Append the loose blocks to the queue (before anything reads or extends it)."""
        n = self.loose
        if n:
            self.loose = 0
            self._append_uncached(n)

    def _append_uncached(self, n: int) -> None:
        if n <= 0:
            return
        self.free += n
        queue = self.queue
        tail = queue[-1] if queue else None
        if tail is not None and tail.group is None:
            tail.hi += n
        else:
            queue.append(Run(None, 0, n))

    # ------------------------------------------------------------------ eviction

    def flush(self, free: int) -> None:
        """Apply the allocations made since the last flush: pop the queue's head until `free`
        blocks are left, dropping the keys of cached blocks reused."""
        if self.loose:
            self._settle()
        n = self.free - free
        if n < 0:
            raise RuntimeError(f"prefix cache: {free} free blocks asked, {self.free} queued")
        self.free = free
        queue = self.queue
        while n:
            run = queue[0]
            k = run.hi - run.lo
            take = k if k < n else n
            group = run.group
            if group is not None:  # the group's highest free run: its top sub-blocks go
                present = group.present = group.present - take
                self.keyed_free -= take
                self.cached_blocks -= take
                self.evicted_blocks += take
                keys = group.keys
                if keys is not None and present:  # a span keeps the ids its blocks reach
                    del keys[self._reach(group.j0 + present) - group.tb0 :]
            run.hi -= take
            n -= take
            if run.hi == run.lo:
                queue.popleft()
                if group is not None:
                    group.runs.pop()
                    if not group.present:
                        self._forget(group)

    def _reach(self, blocks: int) -> int:
        """How many trace blocks engine blocks [0, blocks) reach (the last one partly)."""
        return (blocks * self.block_size - 1) // self.trace_block + 1

    def _forget(self, group: Group) -> None:
        del self.groups[group.key]
        if group.alias is not None:
            del self.groups[group.alias]

    # ------------------------------------------------------------------ checks

    def check(self, used_blocks: int, capacity_blocks: int) -> None:
        """Raise AssertionError where the structure breaks an invariant (for the tests)."""
        self._settle()
        assert sum(r.hi - r.lo for r in self.queue) == self.free
        assert capacity_blocks - used_blocks <= self.free, (capacity_blocks, used_blocks)
        keyed = 0
        for run in self.queue:
            group = run.group
            if group is not None and run.hi > run.lo:
                keyed += run.hi - run.lo
                assert run in group.runs
        assert keyed == self.keyed_free
        cached = 0
        for key, group in self.groups.items():
            assert key in (group.key, group.alias)
            if key == group.alias:
                continue
            assert group.present > 0 or group.holders
            assert group.top == (max(group.holders) if group.holders else 0)
            assert group.top <= group.present
            lo = group.top
            for run in group.runs:  # contiguous free runs from top to present
                assert run.lo == lo, (run.lo, lo)
                lo = run.hi
            assert lo == group.present
            if group.keys is not None:  # a span's ids: exactly the trace blocks it reaches
                assert len(group.keys) == self._reach(group.j0 + group.present) - group.tb0
                assert group.j0 == group.tb0 * self.trace_block // self.block_size
            cached += group.present
        assert cached == self.cached_blocks
