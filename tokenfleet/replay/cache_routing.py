"""Cache-aware balancers: routers that send a request where its prompt's prefix is (or is
thought to be) cached. docs/engines/prefix-caching.md sections 3-5 set out the sources' rules.

- `cache-aware`: SGLang router's `cache_aware` policy (an approximate tree of what it routed);
- `prefix-affinity`: the Gateway API Inference Extension / llm-d approximate prefix scorer (an
  LRU of routed blocks per replica) plus the queue scorer;
- `precise-prefix`: llm-d's precise prefix-cache scorer (the engines' real caches, as KV events
  tell them, late) plus the queue scorer;
- `kv-router`: NVIDIA Dynamo's KV router cost (real cached blocks against active blocks).

Router-side keys (the approximate policies) are whole trace blocks, chained:
`prefix.prompt_block_keys(seq, trace_block)`; equal leading keys mean equal leading content, so
a dict from key to the replicas holding it, walked along the request's chain and stopped at the
first miss, finds every replica's match at once (O(matched keys x holders), not O(replicas x
blocks)). Without a prefix cache (caching off) the trace block is 512 tokens and the engines'
caches are empty.

This module imports nothing from `balancer` (which registers these classes), so there is no
import cycle; its tie-break is `_LeastOf`'s, restated here.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from heapq import heappop, heappush
from typing import ClassVar

from tokenfleet.errors import UserError
from tokenfleet.replay.prefix import SYNTHETIC_TRACE_BLOCK, leading_agreement, prompt_block_keys


def _in_range(owner: str, key: str, value: float, lo: float, hi: float = math.inf) -> None:
    """Refuse a setting outside [lo, hi] (NaN included), naming it and the range."""
    if not (lo <= value <= hi and math.isfinite(value)):
        allowed = f"a finite number >= {lo}" if hi == math.inf else f"in [{lo}, {hi}]"
        raise UserError(f"{owner}: {key} = {value!r} must be {allowed}")


def _finite_weight(owner: str, key: str, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise UserError(f"{owner}: {key} = {value!r} must be a finite number >= 0")


class _CacheRouting:
    """Shared state: the replicas, their counts, the tie-break pointer and the trace block."""

    name: ClassVar[str]
    Settings: ClassVar[type]

    def __init__(self, settings, replicas: list, outstanding: list[int], seed: int) -> None:
        self.settings = settings
        self.replicas = replicas
        self.outstanding = outstanding
        self.n = len(replicas)
        self.next = 0
        prefix = getattr(replicas[0], "prefix", None) if replicas else None
        self.trace_block = prefix.trace_block if prefix is not None else SYNTHETIC_TRACE_BLOCK
        self.validate(settings)

    def validate(self, settings) -> None:  # pragma: no cover - every subclass has its own
        pass

    def inherit(self, old: _CacheRouting, moved: dict[int, int]) -> None:
        """Take over what `old` (the balancer this one replaces when the router's replicas
        change, e.g. an autoscaler adding one) learned about the replicas both route to;
        `moved` maps their index in `old` to their index here. The real routers keep their
        state when workers join or leave (sgl-router drops a leaving worker's part of the
        tree, `Tree::remove_tenant`); without this a rebuild would start them empty."""

    def _least(self, loads: list) -> int:
        """The least of `loads`; ties go to the first at or after a round-robin pointer (as
        `balancer._LeastOf._least`, so a tie goes where least-requests would send it)."""
        low = min(loads)
        try:
            i = loads.index(low, self.next)
        except ValueError:
            i = loads.index(low)
        self.next = i + 1 if i + 1 < self.n else 0
        return i

    def _best(self, scores: list) -> int:
        """The highest of `scores`, ties as in `_least` (the max-score picker; the sources
        break ties at random, this is deterministic)."""
        high = max(scores)
        try:
            i = scores.index(high, self.next)
        except ValueError:
            i = scores.index(high)
        self.next = i + 1 if i + 1 < self.n else 0
        return i

    def _queue_scores(self) -> list[float]:
        """llm-d's queue scorer `(maxQ - q) / (maxQ - minQ)` over `outstanding` (equal: 1.0)."""
        out = self.outstanding
        hi, lo = max(out), min(out)
        if hi == lo:
            return [1.0] * self.n
        span = hi - lo
        return [(hi - q) / span for q in out]

    def _kv_free_scores(self, now_s: float) -> list[float]:
        """llm-d's KV-cache-utilisation scorer, `1 - used fraction` (read only when weighted:
        it costs a look at every replica)."""
        return [1.0 - r.kv_used_at(now_s) for r in self.replicas]


# ----------------------------------------------------------------------------- cache-aware


@dataclasses.dataclass(frozen=True)
class CacheAwareSettings:
    cache_threshold: float = 0.3
    balance_abs_threshold: int = 64
    balance_rel_threshold: float = 1.5
    eviction_interval_s: float = 120.0
    max_tree_size: int = 2**26


class CacheAware(_CacheRouting):
    """SGLang router's `cache_aware` policy (`sgl-project/sglang`,
    `sgl-router/src/policies/cache_aware.rs` `select_worker`; the tree is `sgl-router/src/tree.rs`).

    Loads are `outstanding` (the router's own in-flight count). The fleet is imbalanced iff
    `max - min > balance_abs_threshold` and `max > min * balance_rel_threshold`; then the least
    loaded replica gets the request. Otherwise the request's prefix is matched against one tree
    shared by all replicas (each node knowing which replicas it was routed to): with
    `match_rate = matched tokens / prompt tokens > cache_threshold` it goes to a replica holding
    the deepest matched node, else to the replica whose tree is smallest. Either way its prefix
    is inserted under the chosen replica, with the pick's time as the nodes' access time.

    The tree is the source's: a radix tree shared by all replicas, each node an edge label (a
    run of keys) with the replicas it was routed to and each one's last access; an insert
    splits a node where the request's keys part from it and stamps its replica along the
    path; a match counts keys into a partly matched last node, takes that node's replica and
    refreshes its path. Approximated: the router's tree is over request text (characters);
    here it is over the chain of whole trace blocks (`prompt_block_keys`), each weighing
    `trace_block` tokens, so a prompt's tail past its last whole trace block is neither matched
    nor inserted, and sizes and `max_tree_size` count tokens. Tie-breaks: the source takes the
    first tenant of a concurrent map (arbitrary); here the lowest index among the node's
    replicas, and the least loaded / smallest tree by `_least` (round-robin pointer shared by
    both, so an all-imbalanced run picks exactly what least-requests picks).

    Eviction: the router trims every replica's tree to `max_tree_size`
    (`Tree::evict_tenant_by_size`): whole leaf nodes of that replica (nodes none of whose
    children it holds), least recently used first, a parent joining when it becomes a leaf, a
    node going when no replica holds it; a thread does it every `eviction_interval_s` (0:
    never, as the source does). Here it runs at the first pick at or after each multiple of
    the interval (sim time): the tree changes only at picks, so this is what the thread would
    have left at that moment. Ties of access time go to the older leaf. Defaults: the router
    CLI's (the Rust `CacheAwareConfig::default()` has 0.5, 32, 1.1, 30 s and 10,000).
    """

    name: ClassVar[str] = "cache-aware"
    Settings: ClassVar[type] = CacheAwareSettings

    def __init__(self, settings, replicas: list, outstanding: list[int], seed: int) -> None:
        super().__init__(settings, replicas, outstanding, seed)
        self.root = _TreeNode([], None)
        self.size = [0] * self.n  # tokens in each replica's part of the tree
        # per replica: a heap of (access, order, node) holding every node that is one of its
        # leaves (and stale entries, checked when popped), so that an eviction costs what it
        # evicts: a walk of the whole tree at every interval took 70 ms with 12,000 nodes,
        # 0.8 ms per request of a slow trace with long prompts
        self.leaves: list[list] = [[] for _ in range(self.n)]
        self.pushed = 0  # entries made: the order that breaks ties of access time
        self.next_eviction = settings.eviction_interval_s

    def validate(self, s) -> None:
        owner = f"balancer {self.name!r}"
        _in_range(owner, "cache_threshold", s.cache_threshold, 0.0, 1.0)
        _in_range(owner, "balance_abs_threshold", s.balance_abs_threshold, 0)
        _in_range(owner, "balance_rel_threshold", s.balance_rel_threshold, 1.0)
        _in_range(owner, "eviction_interval_s", s.eviction_interval_s, 0.0)
        _in_range(owner, "max_tree_size", s.max_tree_size, 1)

    def match(self, keys: list) -> tuple[int, _TreeNode | None]:
        """(keys matched from the start, into a partly matched last node; that last node, or
        None when nothing matched): `Tree::prefix_match`'s walk."""
        node, pos, n = self.root, 0, len(keys)
        last = None
        while pos < n:
            child = node.children.get(keys[pos])
            if child is None:
                break
            label = child.keys
            shared = leading_agreement(keys, pos, label)
            pos += shared
            last = child
            if shared < len(label):  # partial match: stop here
                break
            node = child
        return pos, last

    def pick(self, seq, now_s: float) -> int:
        s = self.settings
        if s.eviction_interval_s > 0 and now_s >= self.next_eviction:
            self.evict(s.max_tree_size)
            self.next_eviction = (math.floor(now_s / s.eviction_interval_s) + 1) * (
                s.eviction_interval_s
            )
        keys = prompt_block_keys(seq, self.trace_block)
        out = self.outstanding
        hi, lo = max(out), min(out)
        if hi - lo > s.balance_abs_threshold and hi > lo * s.balance_rel_threshold:
            i = self._least(out)
        else:
            depth, last = self.match(keys)
            rate = depth * self.trace_block / seq.prompt_tokens if seq.prompt_tokens else 0.0
            tenant = min(last.tenants) if last is not None and last.tenants else -1
            if tenant >= 0:  # prefix_match refreshes the tenant's path to the root
                node = last
                while node is not None:
                    node.tenants[tenant] = now_s
                    node = node.parent
            i = tenant if rate > s.cache_threshold else self._least(self.size)
        self.insert(i, keys, now_s)
        return i

    def insert(self, i: int, keys: list, now_s: float) -> None:
        """`Tree::insert`: stamp replica i along the request's path, splitting the node where
        the keys part from it and adding the rest as one new leaf."""
        node, pos, n = self.root, 0, len(keys)
        node.tenants[i] = now_s
        tb = self.trace_block
        added = False  # whether replica i is new on the path's last node
        while pos < n:
            first = keys[pos]
            child = node.children.get(first)
            if child is None:  # no match: the rest is one new leaf
                leaf = node.children[first] = _TreeNode(keys[pos:], node, {i: now_s})
                self.size[i] += (n - pos) * tb
                self._leaf(i, leaf, now_s)
                return
            label = child.keys
            shared = leading_agreement(keys, pos, label)
            if shared < len(label):  # split: [node] -> [upper] -> [child, shortened]
                upper = _TreeNode(label[:shared], node, dict(child.tenants))
                upper.children[label[shared]] = child
                node.children[first] = upper
                child.keys = label[shared:]
                child.parent = upper
                child = upper
            added = i not in child.tenants
            if added:
                self.size[i] += shared * tb
            child.tenants[i] = now_s
            pos += shared
            node = child
        if added:  # the path ends on a node replica i did not hold: one of its leaves now
            self._leaf(i, node, now_s)

    def _leaf(self, i: int, node: _TreeNode, at: float) -> None:
        self.pushed += 1
        heappush(self.leaves[i], (at, self.pushed, node))

    def evict(self, max_size: int) -> None:
        """`Tree::evict_tenant_by_size`: trim each replica's part to `max_size` tokens, least
        recently used leaf nodes first, a parent joining when it becomes a leaf (each
        replica's leaves in its own heap, checked as they come out: one holding a child of
        the replica's is no leaf any more, one accessed since goes back with its new time)."""
        tb = self.trace_block
        root = self.root
        for i, heap in enumerate(self.leaves):
            while self.size[i] > max_size and heap:
                at, _k, node = heappop(heap)
                now_at = node.tenants.get(i)
                if now_at is None or not _leaf_of(node, i):  # gone, or no longer a leaf
                    continue
                if now_at > at:  # accessed since it was filed
                    self._leaf(i, node, now_at)
                    continue
                self.size[i] -= len(node.keys) * tb
                del node.tenants[i]
                parent = node.parent
                if not node.children and not node.tenants:
                    del parent.children[node.keys[0]]
                if parent is not root and i in parent.tenants and _leaf_of(parent, i):
                    self._leaf(i, parent, parent.tenants[i])

    def inherit(self, old: CacheAware, moved: dict[int, int]) -> None:
        """The old tree with each replica renumbered; a replica that left is removed from it
        (`Tree::remove_tenant`), and nodes nobody holds any more go."""
        self.root = old.root
        self.next_eviction = old.next_eviction
        self.pushed = old.pushed
        for j, i in moved.items():
            self.size[i] = old.size[j]
            self.leaves[i] = old.leaves[j]
        stack = [self.root]
        order = []
        while stack:
            node = stack.pop()
            order.append(node)
            node.tenants = {moved[t]: at for t, at in node.tenants.items() if t in moved}
            stack.extend(node.children.values())
        for node in reversed(order):  # children before parents
            if node is not self.root and not node.tenants and not node.children:
                del node.parent.children[node.keys[0]]

    def tenant_keys(self, i: int) -> list:
        """Every key of replica i's part of the tree (for tests and debugging)."""
        found, stack = [], [self.root]
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            if i in node.tenants:
                found.extend(node.keys)
        return found


class _TreeNode:
    """A node of the cache-aware router's radix tree: its edge label (keys), children by first
    key, parent, and each replica routed through it with its last access."""

    __slots__ = ("keys", "children", "parent", "tenants")

    def __init__(self, keys: list, parent: _TreeNode | None, tenants: dict | None = None):
        self.keys = keys
        self.children: dict = {}
        self.parent = parent
        self.tenants: dict[int, float] = tenants if tenants is not None else {}


def _index_of(per_replica: list[dict]) -> dict:
    """key -> the replicas whose map holds it."""
    index: dict = {}
    for i, keys in enumerate(per_replica):
        for key in keys:
            h = index.get(key)
            if h is None:
                index[key] = {i}
            else:
                h.add(i)
    return index


def _leaf_of(node: _TreeNode, i: int) -> bool:
    """Whether replica i holds none of the node's children (`Tree::leaf_of`)."""
    return not any(i in child.tenants for child in node.children.values())


# ----------------------------------------------------------------------------- prefix-affinity


@dataclasses.dataclass(frozen=True)
class PrefixAffinitySettings:
    prefix_weight: float = 2.0
    queue_weight: float = 1.0
    kv_cache_weight: float = 0.0
    block_size_tokens: int = 16
    max_prefix_blocks: int = 256
    lru_capacity_per_server: int = 31250


class PrefixAffinity(_CacheRouting):
    """The approximate prefix-cache scorer of the Gateway API Inference Extension (GIE,
    `kubernetes-sigs/gateway-api-inference-extension`,
    `pkg/epp/scheduling/framework/plugins/multi/prefix/plugin.go`; llm-d's newer
    `approx-prefix-cache`), with the queue scorer, summed with weights by a max-score picker.

    Each replica has an LRU of the blocks routed to it (`lru_capacity_per_server` blocks of
    `block_size_tokens`); a request's prefix score is `matched blocks / its blocks`, both capped
    at `max_prefix_blocks`, where matched is counted as `matchLongestPrefix` does: walk the
    request's blocks from the first, stop at the first no replica holds, and credit each block
    to every replica holding it. The queue score is `(maxQ - q) / (maxQ - minQ)` with q =
    `outstanding` (GIE reads the engine's waiting-queue metric; equal queues give 1.0); with
    `kv_cache_weight` > 0 the KV-utilisation scorer `1 - used fraction` is added too. Highest
    `prefix_weight * prefix + queue_weight * queue (+ kv_cache_weight * kv)` wins, ties to the
    first at or after a round-robin pointer (the source: random). After the pick, the
    request's (capped) blocks go into the chosen replica's LRU, in order.

    Approximated: GIE hashes blocks of `block_size_tokens` tokens of text; here a key is a
    whole trace block (`prompt_block_keys`), counted as `trace_block / block_size_tokens`
    blocks for the cap, the score and the LRU's capacity (976 Mooncake blocks for 31,250 of 16
    tokens), so blocks match and are evicted a trace block at a time, and a prompt's tail past
    its last whole trace block never matches (it still counts in the denominator). Defaults:
    GIE's `DefaultBlockSizeTokens` 16, `MaxPrefixBlocksToMatch` 256, `LRUCapacityPerServer`
    31250; weights from llm-d's sample prefix-cache config (prefix 2, queue 1; its KV
    utilisation weight of 1 is left off by default: set `kv_cache_weight = 1.0` to add it).
    """

    name: ClassVar[str] = "prefix-affinity"
    Settings: ClassVar[type] = PrefixAffinitySettings

    def __init__(self, settings, replicas: list, outstanding: list[int], seed: int) -> None:
        super().__init__(settings, replicas, outstanding, seed)
        s = settings
        self.per_key = self.trace_block / s.block_size_tokens  # GIE blocks in one key
        self.max_keys = math.ceil(s.max_prefix_blocks * s.block_size_tokens / self.trace_block)
        self.capacity_keys = max(1, int(s.lru_capacity_per_server // self.per_key))
        self.lrus: list[OrderedDict] = [OrderedDict() for _ in range(self.n)]
        self.index: dict = {}  # key -> replicas whose LRU holds it

    def validate(self, s) -> None:
        owner = f"balancer {self.name!r}"
        for key in ("prefix_weight", "queue_weight", "kv_cache_weight"):
            _finite_weight(owner, key, getattr(s, key))
        for key in ("block_size_tokens", "max_prefix_blocks", "lru_capacity_per_server"):
            _in_range(owner, key, getattr(s, key), 1)

    def inherit(self, old: PrefixAffinity, moved: dict[int, int]) -> None:
        """Each staying replica keeps its LRU."""
        for j, i in moved.items():
            self.lrus[i] = old.lrus[j]
        self.index = _index_of(self.lrus)

    def prefix_scores(self, seq, keys: list) -> list[float]:
        total = min(seq.prompt_tokens // self.settings.block_size_tokens,
                    self.settings.max_prefix_blocks)  # fmt: skip
        counts = [0] * self.n
        if total:
            index = self.index
            for key in keys:
                h = index.get(key)
                if not h:
                    break
                for i in h:
                    counts[i] += 1
        per = self.per_key
        return [min(c * per, total) / total if total else 0.0 for c in counts]

    def scores(self, seq, now_s: float, keys: list | None = None) -> list[float]:
        s = self.settings
        if keys is None:
            keys = prompt_block_keys(seq, self.trace_block)[: self.max_keys]
        prefix = self.prefix_scores(seq, keys)
        queue = self._queue_scores()
        pw, qw = s.prefix_weight, s.queue_weight
        total = [pw * p + qw * q for p, q in zip(prefix, queue, strict=True)]
        if s.kv_cache_weight:
            kw = s.kv_cache_weight
            total = [t + kw * k for t, k in zip(total, self._kv_free_scores(now_s), strict=True)]
        return total

    def pick(self, seq, now_s: float) -> int:
        keys = prompt_block_keys(seq, self.trace_block)[: self.max_keys]
        i = self._best(self.scores(seq, now_s, keys))
        lru = self.lrus[i]
        index = self.index
        for key in keys:
            if key in lru:
                lru.move_to_end(key)
            else:
                lru[key] = None
                h = index.get(key)
                if h is None:
                    index[key] = {i}
                else:
                    h.add(i)
        while len(lru) > self.capacity_keys:
            key, _ = lru.popitem(last=False)
            h = index[key]
            h.discard(i)
            if not h:
                del index[key]
        return i


# ----------------------------------------------------------------------------- precise-prefix


@dataclasses.dataclass(frozen=True)
class PrecisePrefixSettings:
    precise_weight: float = 2.0
    queue_weight: float = 1.0
    kv_cache_weight: float = 0.0
    cache_signal_delay_s: float = 0.05


class PrecisePrefix(_CacheRouting):
    """llm-d's precise prefix-cache scorer (`llm-d/llm-d-inference-scheduler`,
    `pkg/plugins/scorer/precise_prefix_cache.go`, normalised by `pkg/plugins/scorer/utils.go`),
    with the queue scorer, as in `deploy/config/epp-precise-prefix-cache-config.yaml`.

    A replica's raw score is the number of leading prompt blocks its engine holds
    (`PrefixCache.cached_prompt_blocks`), as the router's index learns them from the engines'
    KV events; raw scores are min-max normalised over the replicas (all equal: 1.0 each), and
    `precise_weight * prefix + queue_weight * queue (+ kv_cache_weight * (1 - KV used))` picks
    the highest, ties to the first at or after a round-robin pointer (the source: random).

    The events' lag, `cache_signal_delay_s`, is modelled per replica and trace block: a block is
    visible to the router only once a request holding it, routed to that replica, started
    (`Seq.start_s`: its first scheduled step, when vLLM registers the blocks it computes or
    hits) at least `cache_signal_delay_s` ago. The router keeps, per replica, each routed key's
    visibility time (or, until one has started, the requests waiting to store it), and the
    score is the real cached run cut at the first key not yet visible. Cost: the walk stops at
    the first miss, and only replicas the request's first key was routed to are looked at.

    Not modelled: removal events are seen at once (the real cache is read now, so a block
    evicted less than the delay ago is not reported stale), a block stored again after an
    eviction is visible at once (the key's first visibility time is kept), later chunks of a
    chunked prefill are visible with its first, and the tail past the last whole trace block
    is visible when all the whole ones are. A request shorter than one trace block scores 0
    everywhere. Defaults: the sample config's weights (precise 2, queue 1; its KV-utilisation
    weight 1 is off by default, `kv_cache_weight = 1.0` adds it); the source has no delay
    model, 0.05 s stands for about one engine step plus transport.
    """

    name: ClassVar[str] = "precise-prefix"
    Settings: ClassVar[type] = PrecisePrefixSettings

    def __init__(self, settings, replicas: list, outstanding: list[int], seed: int) -> None:
        super().__init__(settings, replicas, outstanding, seed)
        # per replica: key -> the time it becomes visible, or a list of routed requests none
        # of which has started yet
        self.visible: list[dict] = [{} for _ in range(self.n)]
        self.index: dict = {}  # key -> replicas it was routed to
        # (replica, key) of the lists made, to resolve in bulk (`_resolve`): a key no later
        # request reaches would hold its requests, and their prompts, to the end of the run
        self.unresolved: list[tuple[int, object]] = []
        self.resolve_at = 4096

    def validate(self, s) -> None:
        owner = f"balancer {self.name!r}"
        for key in ("precise_weight", "queue_weight", "kv_cache_weight"):
            _finite_weight(owner, key, getattr(s, key))
        _in_range(owner, "cache_signal_delay_s", s.cache_signal_delay_s, 0.0)

    def inherit(self, old: PrecisePrefix, moved: dict[int, int]) -> None:
        """Each staying replica keeps what its KV events have told (and will tell)."""
        for j, i in moved.items():
            self.visible[i] = old.visible[j]
        self.index = _index_of(self.visible)
        self.unresolved = [(moved[j], key) for j, key in old.unresolved if j in moved]

    def _visible_depth(self, i: int, keys: list, now_s: float) -> int:
        """Leading keys the router has seen stored on replica i by `now_s`."""
        vis = self.visible[i]
        delay = self.settings.cache_signal_delay_s
        depth = 0
        for key in keys:
            v = vis.get(key)
            if v is None:
                break
            if v.__class__ is list:  # resolve: the earliest start fixes the time for good
                starts = [s.start_s for s in v if s.start_s is not None]
                if not starts:
                    break
                v = vis[key] = min(starts) + delay
            if v > now_s:
                break
            depth += 1
        return depth

    def raw_scores(self, seq, now_s: float, keys: list) -> list[int]:
        raw = [0] * self.n
        if not keys:
            return raw
        candidates = self.index.get(keys[0])
        if not candidates:
            return raw
        tb = self.trace_block
        for i in candidates:
            depth = self._visible_depth(i, keys, now_s)
            if not depth:
                continue
            prefix = self.replicas[i].prefix
            if prefix is None:
                continue
            real = prefix.cached_prompt_blocks(seq)
            if depth < len(keys):
                seen = depth * tb // prefix.block_size
                real = real if real < seen else seen
            raw[i] = real
        return raw

    def scores(self, seq, now_s: float, keys: list | None = None) -> list[float]:
        s = self.settings
        if keys is None:
            keys = prompt_block_keys(seq, self.trace_block)
        raw = self.raw_scores(seq, now_s, keys)
        hi, lo = max(raw), min(raw)
        prefix = [1.0] * self.n if hi == lo else [(r - lo) / (hi - lo) for r in raw]
        queue = self._queue_scores()
        pw, qw = s.precise_weight, s.queue_weight
        total = [pw * p + qw * q for p, q in zip(prefix, queue, strict=True)]
        if s.kv_cache_weight:
            kw = s.kv_cache_weight
            total = [t + kw * k for t, k in zip(total, self._kv_free_scores(now_s), strict=True)]
        return total

    def pick(self, seq, now_s: float) -> int:
        keys = prompt_block_keys(seq, self.trace_block)
        i = self._best(self.scores(seq, now_s, keys))
        vis = self.visible[i]
        index = self.index
        unresolved = self.unresolved
        for key in keys:
            v = vis.get(key)
            if v is None:
                vis[key] = [seq]
                unresolved.append((i, key))
                h = index.get(key)
                if h is None:
                    index[key] = {i}
                else:
                    h.add(i)
            elif v.__class__ is list:
                v.append(seq)
        if len(unresolved) > self.resolve_at:
            self._resolve()
        return i

    def _resolve(self) -> None:
        """Turn every list with a started request into its visibility time, as a walk would
        (a request routed later starts later, so the earliest start is already known)."""
        delay = self.settings.cache_signal_delay_s
        left = []
        for i, key in self.unresolved:
            vis = self.visible[i]
            v = vis.get(key)
            if v.__class__ is not list:
                continue
            starts = [s.start_s for s in v if s.start_s is not None]
            if starts:
                vis[key] = min(starts) + delay
            else:
                left.append((i, key))
        self.unresolved = left
        self.resolve_at = max(4096, 2 * len(left))


# ----------------------------------------------------------------------------- kv-router


@dataclasses.dataclass(frozen=True)
class KvRouterSettings:
    overlap_score_weight: float = 1.0


class KvRouter(_CacheRouting):
    """NVIDIA Dynamo's KV router at temperature 0 (`ai-dynamo/dynamo`,
    `lib/llm/src/kv_router/scheduler.rs`, `DefaultWorkerSelector`): for each replica
    `overlap_score_weight * (request_blocks - cached_blocks) + decode_blocks`, lowest wins.

    `request_blocks = ceil(prompt / engine block)`; `cached_blocks` is the replica's real
    cached run of leading prompt blocks (`PrefixCache.cached_prompt_blocks`, read now: Dynamo's
    radix tree of KV events, without their lag; 0 with caching off). For Dynamo's "potential
    active blocks" stands the KV the replica reports in use now (`kv_used_at(now_s)` times
    `kv.capacity_blocks`: running and partly computed requests' blocks, shared ones once,
    cached free blocks not at all). It leaves out what Dynamo adds: the candidate request's own
    blocks and the blocks of requests routed but still queued (they hold no KV yet). Ties go
    to the first at or after a round-robin pointer (Dynamo: random). No normalisation (one
    version divides by the largest logit, which does not change the minimum). Default:
    `--router-kv-overlap-score-weight` 1.
    """

    name: ClassVar[str] = "kv-router"
    Settings: ClassVar[type] = KvRouterSettings

    def validate(self, s) -> None:
        _finite_weight(f"balancer {self.name!r}", "overlap_score_weight", s.overlap_score_weight)

    def costs(self, seq, now_s: float) -> list[float]:
        w = self.settings.overlap_score_weight
        prompt = seq.prompt_tokens
        keyed = seq.hashes is not None or seq.session_id is not None  # else nothing can hit
        out = []
        for r in self.replicas:
            prefix = r.prefix
            kv = r.kv
            if prefix is not None:
                bs = prefix.block_size
                cached = prefix.cached_prompt_blocks(seq) if keyed else 0
            else:
                bs = kv.block_size
                cached = 0
            request_blocks = -(-prompt // bs)
            decode = round(r.kv_used_at(now_s) * kv.capacity_blocks)
            out.append(w * (request_blocks - cached) + decode)
        return out

    def pick(self, seq, now_s: float) -> int:
        return self._least(self.costs(seq, now_s))


CACHE_BALANCERS: dict[str, type] = {
    cls.name: cls for cls in (CacheAware, PrefixAffinity, PrecisePrefix, KvRouter)
}
