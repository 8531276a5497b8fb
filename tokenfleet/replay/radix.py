"""SGLang's RadixCache for one replica: a radix tree of cached token prefixes, locked by the
requests that use them and evicted leaf by leaf.

The rules are SGLang's (`sgl-project/sglang` `python/sglang/srt/mem_cache/radix_cache.py`
@ 006b0e3d and `mem_cache/evict_policy.py`; docs/engines/prefix-caching.md section 2.1):

- a node holds a run of tokens; a lookup walks from the root, stamps every node it visits with
  one access time and splits the node where the match ends inside it; with `page_size` P the
  key is first cut to whole pages, so matches and nodes are whole pages;
- `lock_ref` counts the running requests whose prefix runs through a node; a locked node is
  never evicted; unlocked tokens are *evictable* and count as free for admission;
- eviction pops unlocked leaves, smallest priority first (`lru`: last access time; `lfu`: hit
  count, then last access time), a parent joining when its last child goes, whole leaves until
  enough tokens are freed;
- `cache_unfinished_req` (after every prefill chunk) inserts the computed tokens, frees the
  request's copies of tokens another request put in the tree meanwhile and moves its lock to
  the new last node; `cache_finished_req` inserts prompt and output as computed and unlocks; a
  retracted request is released without inserting (its prefix already in the tree stays).

**Keys.** Tokens are named as replay/prefix.py names them: token i of a request lies in trace
block b = i // T; while the trace's `prefix_hashes` cover it, it is (hash b, i mod T), past them
(session id, b) within a session, else (row, b), which only the request itself can hit (after a
retraction). A request with both hashes and a session names its hashed tokens both ways, so a
turn hits the previous turn's output. Keys are kept as segments (end, ids), not per token.

**Accounting.** The replica's `KVCache` counts each running request's pages in full; a page of
a node locked by k requests is counted k times, so the cache returns the pages counted twice
(`lock`, `cache_unfinished`) or still held by others (`release`) for the replica to subtract,
as replay/prefix.py does. Evictable tokens are free to the replica. Evictions are applied
lazily (`flush`): before the tree is read or changed, the fewest leaves in eviction order are
freed so that the evictable pages fit the replica's free pages. That set does not depend on
how often flush ran in between, so skip mode and step-by-step mode evict the same nodes.
SGLang evicts `num_tokens` whenever an allocation finds fewer free (`alloc_token_slots`); here
only the shortfall is freed, which is what makes it independent of the step pattern.

The clock is a counter ticked once per lookup or insert (SGLang samples `time.monotonic()` once
per call); ties between leaves go to the older node. The stored radix_cache.py never increments
`hit_count`, which makes `lfu` rank as `lru` there; here, as in SGLang's hierarchical cache
(`_inc_hit_count`), every lookup counts one hit on each node it reaches.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush

from tokenfleet.errors import UserError
from tokenfleet.replay.prefix import SYNTHETIC_TRACE_BLOCK

EVICTION_POLICIES = ("lru", "lfu")


class Node:
    """Tokens [start, end) of the prefixes through it; `segs` names them as (end, ids)."""

    __slots__ = ("parent", "children", "start", "end", "segs", "lock_ref", "access", "hits", "nid")

    def __init__(self, parent, start: int, end: int, segs: list, nid: int, access: int) -> None:
        self.parent = parent
        self.children: dict = {}
        self.start = start
        self.end = end
        self.segs = segs
        self.lock_ref = 0
        self.access = access
        self.hits = 0
        self.nid = nid


def _split_segs(segs: list, at: int) -> tuple[list, list]:
    """A node's segments cut at token `at` (inside it)."""
    left, right = [], []
    for end, ids in segs:
        if end <= at:
            left.append((end, ids))
            continue
        if not right and (not left or left[-1][0] < at):  # the segment straddles `at`
            left.append((at, ids))
        right.append((end, ids))
    return left, right


class RadixCache:
    """A replica's radix tree (see the module docstring). Sizes are tokens inside, pages out."""

    def __init__(
        self,
        capacity_blocks: int,
        page_size: int,
        trace_block: int | None,
        eviction_policy: str = "lru",
        disabled: bool = False,
    ) -> None:
        if eviction_policy not in EVICTION_POLICIES:
            raise UserError(
                f"sglang: radix_eviction_policy = {eviction_policy!r}: use 'lru' or 'lfu'"
            )
        self.page = page_size
        self.trace_block = trace_block or SYNTHETIC_TRACE_BLOCK
        self.lfu = eviction_policy == "lfu"
        self.disabled = disabled  # --disable-radix-cache: nothing is matched or kept
        self.clock = 0
        self.nids = 0
        self.root = Node(None, 0, 0, [], self._nid(), 0)
        self.root.lock_ref = 1
        self.leaves: set[Node] = set()  # evictable leaves
        self.evictable = 0  # tokens in unlocked nodes
        self.locks: dict = {}  # request -> (its last locked node, tokens it covers)
        self.cached_blocks = 0  # pages in the tree (the timeline's count)
        self.evicted_blocks = 0
        self.rep = None  # the replica, bound by the batcher: flushes read its free pages
        self.shrinks: list[int] = []  # steps from which a departure lets admission resume

    def _nid(self) -> int:
        self.nids += 1
        return self.nids

    releases_every_request = True  # SGLang inserts every finished request's KV

    # ------------------------------------------------------------------ keys

    def key(self, seq, tokens: int) -> list:
        """The request's first `tokens` tokens as segments (end, ids)."""
        tb = self.trace_block
        hashes = seq.hashes
        sid = seq.session_id
        hashed = min(len(hashes) * tb, seq.prompt_tokens) if hashes is not None else 0
        segs = []
        pos = 0
        while pos < tokens:
            b = pos // tb
            end = min((b + 1) * tb, tokens)
            if pos < hashed:
                end = min(end, hashed)
                ids = (hashes[b], ("s", sid, b)) if sid is not None else (hashes[b],)
            elif sid is not None:
                ids = (("s", sid, b),)
            else:
                ids = (("r", seq.row, b),)
            segs.append((end, ids))
            pos = end
        return segs

    @staticmethod
    def _ids_at(segs: list, pos: int) -> tuple[int, tuple]:
        for i, (end, ids) in enumerate(segs):
            if pos < end:
                return i, ids
        raise AssertionError(pos)

    def _child(self, node: Node, segs: list, pos: int) -> Node | None:
        _i, ids = self._ids_at(segs, pos)
        children = node.children
        for ident in ids:
            child = children.get(ident)
            if child is not None:
                return child
        return None

    def _common(self, child: Node, segs: list, limit: int) -> int:
        """How far (whole pages) `segs` agrees with the child's tokens, from its start."""
        pos = child.start
        stop = min(child.end, limit)
        k = 0
        ri, _ = self._ids_at(segs, pos)
        while pos < stop:
            cend, cids = child.segs[k]
            rend, rids = segs[ri]
            if not any(ident in rids for ident in cids):
                break
            pos = min(cend, rend, stop)
            if pos == cend:
                k += 1
            if pos == rend:
                ri += 1
        return pos // self.page * self.page

    def _split(self, child: Node, at: int) -> Node:
        """Cut `child` at token `at`: the new upper part takes its place under the parent."""
        left, right = _split_segs(child.segs, at)
        upper = Node(child.parent, child.start, at, left, self._nid(), self.clock)
        upper.lock_ref = child.lock_ref
        upper.hits = child.hits
        parent_children = child.parent.children
        for ident in child.segs[0][1]:
            if parent_children.get(ident) is child:
                parent_children[ident] = upper
        child.parent = upper
        child.start = at
        child.segs = right
        for ident in right[0][1]:
            upper.children[ident] = child
        return upper

    # ------------------------------------------------------------------ lookups

    def match(self, seq, tokens: int, limit: int | None = None) -> tuple[int, Node]:
        """SGLang's `match_prefix` for a request `tokens` long: the key is its first
        `tokens - 1` tokens (at least one is computed), cut to whole pages. Returns the
        matched tokens and the last node; stamps and counts the nodes reached."""
        node = self.root
        if self.disabled:
            return 0, node
        cap = (tokens - 1) // self.page * self.page if limit is None else limit
        if cap <= 0:
            return 0, node
        segs = self.key(seq, cap)
        self.clock += 1
        node.access = self.clock
        pos = 0
        while pos < cap:
            child = self._child(node, segs, pos)
            if child is None:
                break
            m = self._common(child, segs, cap)
            if m <= pos:
                break
            child.access = self.clock
            child.hits += 1
            if m < child.end:
                node = self._split(child, m)
                pos = m
                break
            node = child
            pos = m
        return pos, node

    @property
    def block_size(self) -> int:
        """The page, as routers that read a replica's cache count blocks."""
        return self.page

    def cached_prompt_blocks(self, seq) -> int:
        """Pages of the request's prompt the tree holds now, as a router reading the engine's
        cache sees them: no cap, nothing stamped, counted or split."""
        limit = seq.prompt_tokens // self.page * self.page
        if self.disabled or limit <= 0:
            return 0
        segs = self.key(seq, limit)
        node = self.root
        pos = 0
        while pos < limit:
            child = self._child(node, segs, pos)
            if child is None:
                break
            m = self._common(child, segs, limit)
            if m <= pos:
                break
            pos = m
            if m < child.end:
                break
            node = child
        return pos // self.page

    def path_evictable(self, node: Node) -> int:
        """Unlocked tokens on the path to `node` (locking it takes them out of the evictable)."""
        total = 0
        while node is not self.root:
            if node.lock_ref == 0:
                total += node.end - node.start
            node = node.parent
        return total

    # ------------------------------------------------------------------ locks

    def _update_leaf(self, node: Node) -> None:
        if node is self.root or node.lock_ref or node.children:
            self.leaves.discard(node)
        else:
            self.leaves.add(node)

    def _inc(self, node: Node) -> int:
        """inc_lock_ref; returns the pages on the path other requests lock too."""
        shared = 0
        while node is not self.root:
            size = node.end - node.start
            if node.lock_ref:
                shared += size
            else:
                self.evictable -= size
            node.lock_ref += 1
            self._update_leaf(node)
            node = node.parent
        return shared // self.page

    def _dec(self, node: Node) -> int:
        """dec_lock_ref; returns the pages on the path other requests still lock."""
        kept = 0
        while node is not self.root:
            size = node.end - node.start
            node.lock_ref -= 1
            if node.lock_ref:
                kept += size
            else:
                self.evictable += size
            self._update_leaf(node)
            node = node.parent
        return kept // self.page

    def lock(self, seq, node: Node, tokens: int) -> int:
        """An admitted request locks its matched prefix; returns its pages others lock too."""
        self.locks[seq] = (node, tokens)
        return self._inc(node)

    # ------------------------------------------------------------------ inserting and freeing

    def _insert(self, segs: list, limit: int) -> tuple[int, Node]:
        """Insert tokens [0, limit): (tokens already in the tree, the node ending at limit)."""
        self.clock += 1
        node = self.root
        node.access = self.clock
        pos = 0
        while pos < limit:
            child = self._child(node, segs, pos)
            if child is None:
                break
            m = self._common(child, segs, limit)
            if m <= pos:  # differs inside its first page from a cached page: not inserted
                return pos, node
            child.access = self.clock
            node = self._split(child, m) if m < child.end else child
            pos = m
        if pos < limit:
            rest = _split_segs(segs, pos)[1] if pos else segs
            leaf = Node(node, pos, limit, rest, self._nid(), self.clock)
            for ident in rest[0][1]:
                node.children[ident] = leaf
            self.evictable += limit - pos
            self.cached_blocks += (limit - pos) // self.page
            self._update_leaf(node)
            self._update_leaf(leaf)
            found = pos
            node = leaf
        else:
            found = limit
        return found, node

    def cache_unfinished(self, seq, tokens: int) -> int:
        """After a prefill chunk: insert its `tokens` computed tokens and move its lock to
        them. Returns the pages now counted twice (its copies of tokens others lock)."""
        if self.disabled:
            return 0
        rep = self.rep
        kv = rep.kv
        self.flush(kv.capacity_blocks - kv.other_blocks - kv.decoder_blocks(rep.step_no))
        limit = tokens // self.page * self.page
        old, _covered = self.locks[seq]
        _found, node = self._insert(self.key(seq, limit), limit)
        kept = self._dec(old)
        shared = self._inc(node)
        self.locks[seq] = (node, limit)
        return shared - kept

    def release(self, seq, tokens: int, blocks: int, finished: bool) -> int:
        """A request gives back its `blocks` pages (`tokens` computed): a finished one is
        inserted first (`cache_finished_req`), a retracted one is not. Returns its pages
        that other requests still lock."""
        rep = self.rep
        if finished:  # admission may resume (SGLang's batch_is_full is reset)
            self.shrinks.append(rep.step_no + 2 if seq.fin_step >= 0 else 0)
        entry = self.locks.pop(seq, None)
        if entry is None or self.disabled:
            return 0
        kv = rep.kv
        step = rep.step_no + (seq.fin_step >= 0)  # a decoder finishing: at its last step's end
        self.flush(kv.capacity_blocks - kv.other_blocks - kv.decoder_blocks(step) - blocks)
        if finished:
            limit = tokens // self.page * self.page
            self._insert(self.key(seq, limit), limit)
        return self._dec(entry[0])

    # ------------------------------------------------------------------ eviction

    def _priority(self, node: Node) -> tuple:
        if self.lfu:
            return (node.hits, node.access, node.nid, node)
        return (node.access, node.nid, node)

    def flush(self, free_pages: int) -> None:
        """Evict the fewest leaves, in eviction order, that leave the evictable tokens within
        the replica's `free_pages` (it counts them as free)."""
        need = self.evictable - free_pages * self.page
        if need > 0:
            self.evict(need)

    def evict(self, tokens: int) -> int:
        """Free whole unlocked leaves, smallest priority first, until `tokens` are freed."""
        heap = [self._priority(node) for node in self.leaves]
        heapify(heap)
        freed = 0
        while freed < tokens and heap:
            node = heappop(heap)[-1]
            size = node.end - node.start
            freed += size
            self.evictable -= size
            self.cached_blocks -= size // self.page
            self.evicted_blocks += size // self.page
            self.leaves.discard(node)
            parent = node.parent
            children = parent.children
            for ident in node.segs[0][1]:
                if children.get(ident) is node:
                    del children[ident]
            if parent is not self.root and not children and parent.lock_ref == 0:
                self.leaves.add(parent)
                heappush(heap, self._priority(parent))
        return freed

    # ------------------------------------------------------------------ checks

    def check(self) -> None:
        """Raise AssertionError where the tree breaks an invariant (for the tests)."""
        evictable = cached = 0
        stack = [self.root]
        seen = set()
        while stack:
            node = stack.pop()
            for child in node.children.values():
                if child.nid in seen:
                    continue
                seen.add(child.nid)
                assert child.parent is node and child.start == node.end
                assert child.start % self.page == 0 and child.end % self.page == 0
                assert child.segs[-1][0] == child.end
                assert child.lock_ref <= node.lock_ref or node is self.root
                size = child.end - child.start
                cached += size
                if not child.lock_ref:
                    evictable += size
                leaf = not child.children and not child.lock_ref
                assert leaf == (child in self.leaves)
                stack.append(child)
        assert evictable == self.evictable, (evictable, self.evictable)
        assert cached // self.page == self.cached_blocks
