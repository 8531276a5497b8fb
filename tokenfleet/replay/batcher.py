"""Batchers: the policy that picks each step's batch on a replica.

A batcher is a class with a `Settings` dataclass (its scenario keys, all defaulted) and four
methods, called by the replica:

- `new_queue()`, `enqueue(queue, seq)`, `requeue(queue, seq)`, `remove(queue, seq)`: the
  waiting queue (requeue puts a preempted sequence back; remove takes out one whose client gave
  up, and is needed only by scenarios with client timeouts);
- `schedule(replica, now_s)`: choose the prefill chunks of the step starting at `now_s` through
  `replica.admit`, `replica.preempt_decoder` and `replica.preempt_partial`. Every decoding
  sequence left in the replica takes part in the step with one token. Return None, or the time
  to wake up at when the replica should stay idle until then. The replica calls it only when
  a request waits, a prefill is under way or the decoders might run out of blocks: otherwise
  the step holds just the decodes.

and a class attribute `holds_batch` (True: finished sequences keep their slot until the whole
batch finishes, as in request-level batching). A batcher with a prefix cache also has
`new_prefix_cache(capacity_blocks, block_size, trace_block)`: each replica's cache (None: off),
whose `release(seq, tokens, blocks, finished)` the replica calls when a sequence gives its
blocks back (it returns how many of them other sequences still hold).

Batchers are found by name among the built-ins and the `tokenfleet.batchers` entry-point group,
so a package can add one without forking (see `tokenfleet.replay.plugins`).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from heapq import heapify, heappop, heappush
from operator import itemgetter
from typing import Any, ClassVar, Protocol

from tokenfleet.errors import UserError
from tokenfleet.replay.plugins import build_settings, find_plugin
from tokenfleet.replay.prefix import PrefixCache
from tokenfleet.replay.sglang import SglangBatcher

ENTRY_POINT_GROUP = "tokenfleet.batchers"


class Batcher(Protocol):
    name: ClassVar[str]
    Settings: ClassVar[type]
    holds_batch: ClassVar[bool]

    def __init__(self, settings: Any) -> None: ...
    def new_queue(self) -> Any: ...
    def enqueue(self, queue: Any, seq: Any) -> None: ...
    def requeue(self, queue: Any, seq: Any) -> None: ...
    def schedule(self, replica: Any, now_s: float) -> float | None: ...


class _Queue:
    """First come, first served, or by priority then arrival (vLLM's `priority` policy)."""

    def __init__(self, policy: str) -> None:
        if policy not in ("fcfs", "priority"):
            raise UserError(f"scheduling_policy = {policy!r}: use 'fcfs' or 'priority'")
        self.by_priority = policy == "priority"
        # enqueue(queue, seq), requeue(queue, seq), head(queue) and pop_head(queue); FCFS uses
        # deque's own methods, so queueing and admitting a request run no Python code.
        if self.by_priority:
            self.enqueue = self.requeue = self._push
            self.remove = self._remove_entry
            self.head = self._priority_head
            self.pop_head = heappop
        else:
            self.enqueue = deque.append
            self.requeue = deque.appendleft
            self.remove = deque.remove  # Seq has no __eq__: found by identity
            self.head = itemgetter(0)
            self.pop_head = deque.popleft

    def new_queue(self):
        return [] if self.by_priority else deque()

    @staticmethod
    def _push(queue, seq) -> None:
        heappush(queue, (seq.priority, seq.arrival_s, seq.row, seq))

    @staticmethod
    def _remove_entry(queue, seq) -> None:
        queue.remove((seq.priority, seq.arrival_s, seq.row, seq))  # rows are unique
        heapify(queue)

    @staticmethod
    def _priority_head(queue):
        return queue[0][3]


@dataclasses.dataclass(frozen=True)
class VllmSettings:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    scheduling_policy: str = "fcfs"
    enable_prefix_caching: bool = True  # vLLM V1's default (vllm/config/cache.py)


class VllmBatcher:
    """vLLM V1's scheduler: one token budget per step shared by decodes and prefill chunks.

    Running sequences are served first in admission order (each decode one token, the prefill
    under way the rest of the budget), then waiting ones while the budget, `max_num_seqs` and
    the free blocks allow, with chunked prefill. When a running sequence needs a block and none
    is free, a running sequence is preempted by recompute: the newest, or under `priority` the
    lowest priority one of the whole running set, latest arrival first, which gives back the
    block it took if it was served earlier in the step (as vLLM V1 does). No new sequence is
    admitted in a step that preempted.

    With `enable_prefix_caching` (vLLM V1's default), a waiting request with nothing computed
    first looks its prompt up in the replica's prefix cache (replay/prefix.py): the hit's
    blocks are attached, only the rest is prefilled, and cached free blocks count as free
    (`Scheduler.schedule`'s waiting loop, `KVCacheManager.get_computed_blocks` and
    `allocate_slots` in vllm/v1/core/).
    """

    name: ClassVar[str] = "vllm"
    Settings: ClassVar[type] = VllmSettings
    holds_batch: ClassVar[bool] = False
    chunked: ClassVar[bool] = True

    def __init__(self, settings) -> None:
        self.settings = settings
        self.max_num_seqs = settings.max_num_seqs
        budget = getattr(settings, "max_num_batched_tokens", None)
        if self.max_num_seqs < 1:
            raise UserError(f"{self.name}: max_num_seqs = {self.max_num_seqs} must be >= 1")
        if budget is not None and budget < self.max_num_seqs:
            raise UserError(
                f"{self.name}: max_num_batched_tokens = {budget} must be >= max_num_seqs = "
                f"{self.max_num_seqs} (every running sequence needs a token each step)"
            )
        self.budget = budget if budget is not None else 1 << 62
        self.prefix_caching = bool(getattr(settings, "enable_prefix_caching", False))
        self.queue = _Queue(settings.scheduling_policy)
        self.new_queue = self.queue.new_queue
        self.enqueue = self.queue.enqueue
        self.requeue = self.queue.requeue
        self.remove = self.queue.remove

    def schedule(self, rep, now_s: float) -> float | None:
        kv = rep.kv
        s = rep.step_no
        demand = kv.decode_demand(s)
        if not demand and rep.partial is None and not rep.waiting:
            return None  # decodes only, none at a block edge: nothing to decide
        free = kv.capacity_blocks - kv.other_blocks - kv.decoder_blocks(s)
        preempted = demand > free
        if not preempted and rep.partial is None and not rep.waiting:
            return None  # the decodes' new blocks fit and nothing waits: the usual case
        free = self._serve_decoders(rep, free) if preempted else free - demand
        budget = self.budget - rep.n_dec
        part = rep.partial
        if part is not None:
            remaining = part.prompt_tokens + part.generated - part.cached
            n = remaining if remaining < budget else budget
            need = kv.blocks_for(part.cached + n) - part.blocks
            while need > free:
                preempted = True
                victim = self._victim(rep, rep.decoding, self.queue.by_priority)
                if victim is part:
                    rep.preempt_partial()
                    break
                free += self._preempt_served(rep, victim)  # every decoder is served by now
            else:
                part.blocks += need
                kv.other_blocks += need
                free -= need
                budget -= n
                rep.chunks.append((part, n))
                prefix = rep.prefix
                if prefix is not None and (
                    part.hashes is not None or part.session_id is not None or part.preemptions
                ):
                    prefix.flush(free)
                    prefix.register(part, (part.cached + n) // kv.block_size, False)
                    rep.timeline.cache(now_s, 0, prefix)
        if preempted:
            return None
        waiting = rep.waiting
        queue = self.queue
        running = rep.n_dec + len(rep.chunks)
        blocks_for = kv.blocks_for
        prefix = rep.prefix
        while waiting and budget > 0 and running < self.max_num_seqs:
            seq = queue.head(waiting)
            n = seq.prompt_tokens + seq.generated
            # A request whose cached blocks could be hit: by others, or by itself once preempted.
            if prefix is not None and (
                seq.hashes is not None or seq.session_id is not None or seq.preemptions
            ):
                if rep.blocked:
                    break
                need = self._admit_cached(rep, prefix, seq, n, budget, free, now_s)
                if need < 0:
                    rep.blocked = True
                    break
                free -= need
                budget -= rep.chunks[-1][1]
                running += 1
                continue
            if n > budget:
                if not self.chunked:
                    break
                n = budget
            need = blocks_for(n)
            if need > free:
                break
            queue.pop_head(waiting)
            rep.admit(seq, n, need, now_s)
            free -= need
            budget -= n
            running += 1
        return None

    def new_prefix_cache(
        self, capacity_blocks: int, block_size: int, trace_block: int | None
    ) -> PrefixCache | None:
        """A replica's prefix cache (None: caching off), built with the replica's KV cache."""
        if not self.prefix_caching:
            return None
        return PrefixCache(capacity_blocks, block_size, trace_block)

    def _admit_cached(self, rep, prefix, seq, n: int, budget: int, free: int, now_s) -> int:
        """Admit the head of the queue, `n` tokens long, through the prefix cache: its hit is
        attached, the rest is its first chunk. Returns the free blocks it took, or -1 when it
        does not fit (it stays queued)."""
        block_size = rep.kv.block_size
        hits, hit, touched = prefix.lookup(seq, n, free)
        cached = hit * block_size
        n -= cached
        if n > budget:
            if not self.chunked:
                return -1
            n = budget
        blocks = rep.kv.blocks_for(cached + n)
        need = blocks - hit + touched
        if need > free:
            return -1
        self.queue.pop_head(rep.waiting)
        shared = prefix.touch(seq, hits) if hits else 0
        first = seq.start_s is None
        if first:
            seq.cached_tokens = cached
        rep.admit(seq, n, blocks, now_s, shared)
        seq.cached = cached
        prefix.flush(free - need)
        prefix.register(seq, (cached + n) // block_size, False)
        rep.timeline.cache(now_s, cached if first else 0, prefix)
        return need

    def _serve_decoders(self, rep, free: int) -> int:
        """Give each decoding sequence its block in running order, preempting when none is free.

        vLLM V1 stops serving the running sequences once one is itself the victim; here every
        decoder left takes part in the step, so the rest are still served (FCFS: there are none).
        """
        s = rep.step_no
        block_size = rep.kv.block_size
        order = list(rep.decoding)
        by_priority = self.queue.by_priority
        i = 0
        while i < len(order):
            seq = order[i]
            if (seq.offset + s) % block_size == 0:
                victim = None
                while free < 1:
                    victim = self._victim(rep, order, by_priority)
                    if victim is rep.partial:
                        free += rep.preempt_partial()
                        continue
                    j = order.index(victim)
                    del order[j]
                    if j < i:  # served earlier in this step: its new block comes back too
                        i -= 1
                        free += self._preempt_served(rep, victim)
                    else:
                        free += rep.preempt_decoder(victim)
                    if victim is seq:
                        break
                if victim is seq:
                    continue  # order[i] is now the next one
                free -= 1
            i += 1
        return free

    @staticmethod
    def _victim(rep, running, by_priority: bool):
        """The newest running sequence (the prefill under way is the newest), or under
        `priority` vLLM V1's pick: the greatest (priority, arrival) of the whole running set
        (`running`: the decoders in running order; the prefill under way comes last)."""
        part = rep.partial
        if not by_priority:
            return part if part is not None else running[-1]
        candidates = [*running, part] if part is not None else running
        return max(candidates, key=lambda q: (q.priority, q.arrival_s))

    @staticmethod
    def _preempt_served(rep, seq) -> int:
        """Preempt a decoder already given its token this step: it frees its blocks, plus the
        new one it took if it stood at a block edge."""
        edge = (seq.offset + rep.step_no) % rep.kv.block_size == 0
        return rep.preempt_decoder(seq) + edge


@dataclasses.dataclass(frozen=True)
class SarathiSettings:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 512
    scheduling_policy: str = "fcfs"


class SarathiBatcher(VllmBatcher):
    """Sarathi-Serve: stall-free batching with a small fixed token budget (the chunk size).

    Decodes never wait for a prefill: each step carries every decode plus at most
    `max_num_batched_tokens - decodes` prompt tokens, so step times stay short and even.
    """

    name: ClassVar[str] = "sarathi"
    Settings: ClassVar[type] = SarathiSettings


@dataclasses.dataclass(frozen=True)
class OrcaSettings:
    max_num_seqs: int = 256
    scheduling_policy: str = "fcfs"


class OrcaBatcher(VllmBatcher):
    """Orca: iteration-level batching without chunking; a prompt is prefilled whole in one step,
    together with every decode (so a long prompt makes that step, and everyone in it, wait)."""

    name: ClassVar[str] = "orca"
    Settings: ClassVar[type] = OrcaSettings
    chunked: ClassVar[bool] = False


@dataclasses.dataclass(frozen=True)
class StaticSettings:
    max_num_seqs: int = 32
    timeout_s: float = 0.05


class StaticBatcher:
    """Request-level batching: up to `max_num_seqs` requests start together (as soon as that many
    wait, or when the oldest has waited `timeout_s`), KV reserved for their whole output, and
    the batch holds the GPU until its longest member finishes (the others pad)."""

    name: ClassVar[str] = "static"
    Settings: ClassVar[type] = StaticSettings
    holds_batch: ClassVar[bool] = True

    def __init__(self, settings) -> None:
        if settings.max_num_seqs < 1:
            raise UserError(f"static: max_num_seqs = {settings.max_num_seqs} must be >= 1")
        if not 0 <= settings.timeout_s < float("inf"):
            raise UserError(f"static: timeout_s = {settings.timeout_s} must be finite and >= 0")
        self.settings = settings
        self.queue = _Queue("fcfs")
        self.new_queue = self.queue.new_queue
        self.enqueue = self.queue.enqueue
        self.requeue = self.queue.requeue
        self.remove = self.queue.remove

    def schedule(self, rep, now_s: float) -> float | None:
        waiting = rep.waiting
        if rep.n_dec or not waiting:
            return None
        size = self.settings.max_num_seqs
        deadline = waiting[0].arrival_s + self.settings.timeout_s
        if len(waiting) < size and now_s < deadline:
            return deadline
        kv = rep.kv
        free = kv.capacity_blocks - kv.other_blocks
        while waiting and len(rep.chunks) < size:
            seq = waiting[0]
            need = kv.blocks_for(seq.prompt_tokens + seq.output_tokens)
            if need > free:
                break
            waiting.popleft()
            seq.reserved = True
            rep.admit(seq, seq.prompt_tokens, need, now_s)
            free -= need
        return None


BUILTIN_BATCHERS: dict[str, type] = {
    cls.name: cls
    for cls in (VllmBatcher, SarathiBatcher, OrcaBatcher, StaticBatcher, SglangBatcher)
}


def batcher_class(name: str) -> type:
    """The batcher registered as `name`: a built-in or a `tokenfleet.batchers` entry point."""
    return find_plugin(name, BUILTIN_BATCHERS, ENTRY_POINT_GROUP, "batcher")


def make_batcher(name: str, settings: dict[str, Any], where: str = "batcher"):
    """Instantiate a batcher from its scenario table; unknown keys are refused by name."""
    cls = batcher_class(name)
    return cls(build_settings(cls.Settings, settings, f"{where} {name!r}"))
