"""SGLang's scheduler as a batcher: a prefill batch or a decode batch each step, PrefillAdder's
token budgets, the schedule policies, new_token_ratio and retract_decode, over a radix cache.

Rules and where they were read (`sgl-project/sglang`; docs/engines/prefix-caching.md section 2):

- `managers/scheduler.py` `get_next_batch_to_run`: a prefill batch, when one can be formed,
  runs *instead of* decoding (mixed chunked prefill is `--enable-mixed-chunk`, off by default),
  so a prefill step here holds no decodes: the decoders wait (`Replica.idle_decoders`).
  `get_new_batch_prefill` continues the chunked request first, forms nothing while
  `batch_is_full` (set when a request did not fit or `max_running_requests` is reached; reset
  when the running batch shrinks: a request finished or was retracted) unless a chunked request
  runs, and stops at the first request the adder refuses.
- `managers/schedule_policy.py` @ 00550cd1: `fcfs` keeps the queue; `lpm` sorts by the longest
  match, with in-batch deprioritisation (`_compute_prefix_matches`: a request matching at most
  `in_batch_prefix_caching_check_threshold` tokens of the cache but at least
  `..._deprioritize_threshold` tokens of a tree of the waiting requests before it goes last);
  `dfs-weight` orders the waiting requests by a walk of the tree, heaviest subtree first.
  `_determine_active_policy` turns only `lpm` into FCFS above 128 waiting requests (the memo's
  table says so too: dfs-weight does not fall back). `PrefillAdder`: `rem_total_tokens` =
  free + evictable - sum over running requests of min(max_new - out, clip) * new_token_ratio -
  for each admitted request its extend (whole pages) + min(max_new, clip) (0 for a truncated
  chunk); a request whose extend + min(max_new - out, clip) is >= that (its own prefix locked)
  is refused; `max_prefill_tokens` bounds the batch's input after its first request;
  `chunked_prefill_size` bounds it always, truncating one request to a chunk.
- `managers/schedule_batch.py` `check_decode_mem` / `retract_decode`: when the decoders' next
  pages do not fit, retract by (outputs, -prompt) descending, popped from the end, until they
  do, keeping one; the ratio becomes min(1, (sum out + retract_decode_steps * n) /
  (sum max_new + 1)) over the survivors; otherwise it decays by (init - min) / decay_steps per
  decode step down to min, and it is reset to init when the scheduler idles
  (`srt/environ.py`, `Scheduler.__init__`). Retracted requests go to the end of the queue.

A request's max_new_tokens is its trace output length. The ratio is a closed form of the step
number since its last reset, so skip mode and step-by-step mode agree whatever steps the
batcher is asked about; when admission may resume at the next step, the run is cut there.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from tokenfleet.errors import UserError
from tokenfleet.replay.radix import EVICTION_POLICIES, RadixCache
from tokenfleet.replay.views import IDLE

POLICIES = ("fcfs", "lpm", "dfs-weight")
LPM_FCFS_ABOVE = 128  # _determine_active_policy's literal


@dataclasses.dataclass(frozen=True)
class SglangSettings:
    # SGLang sizes it from memory (the req_to_token pool, 2048-4096 for most models on one GPU);
    # the batcher does not know the memory, so 2048.
    max_running_requests: int = 2048
    max_prefill_tokens: int = 16384
    # SGLang's default for 35-160 GB GPUs (A100, H100, H200); the batcher does not know the GPU.
    chunked_prefill_size: int = 8192
    schedule_policy: str = "fcfs"
    schedule_conservativeness: float = 1.0
    page_size: int = 1
    radix_eviction_policy: str = "lru"
    disable_radix_cache: bool = False
    init_new_token_ratio: float = 0.7
    min_new_token_ratio_factor: float = 0.14
    new_token_ratio_decay_steps: int = 600
    retract_decode_steps: int = 20
    clip_max_new_tokens_estimation: int = 4096
    in_batch_prefix_caching_check_threshold: int = 32
    in_batch_prefix_caching_deprioritize_threshold: int = 32


class SglangBatcher:
    """SGLang's scheduler (see the module docstring); one instance per replica."""

    name: ClassVar[str] = "sglang"
    Settings: ClassVar[type] = SglangSettings
    holds_batch: ClassVar[bool] = False

    def __init__(self, settings: SglangSettings) -> None:
        s = settings
        checks = (
            (s.max_running_requests >= 1, "max_running_requests", ">= 1"),
            (s.max_prefill_tokens >= 1, "max_prefill_tokens", ">= 1"),
            (s.chunked_prefill_size >= 1 or s.chunked_prefill_size == -1,
             "chunked_prefill_size", ">= 1, or -1 (no chunking)"),
            (s.schedule_conservativeness > 0, "schedule_conservativeness", "> 0"),
            (s.page_size >= 1, "page_size", ">= 1"),
            (s.new_token_ratio_decay_steps >= 1, "new_token_ratio_decay_steps", ">= 1"),
            (s.clip_max_new_tokens_estimation >= 1, "clip_max_new_tokens_estimation", ">= 1"),
            (s.init_new_token_ratio > 0, "init_new_token_ratio", "> 0"),
            (s.min_new_token_ratio_factor >= 0, "min_new_token_ratio_factor", ">= 0"),
            (s.retract_decode_steps >= 0, "retract_decode_steps", ">= 0"),
        )  # fmt: skip
        for ok, key, rule in checks:
            if not ok:
                raise UserError(f"sglang: {key} = {getattr(s, key)!r} must be {rule}")
        if s.schedule_policy not in POLICIES:
            raise UserError(
                f"sglang: schedule_policy = {s.schedule_policy!r}: use 'fcfs', 'lpm' or "
                "'dfs-weight'"
            )
        if s.radix_eviction_policy not in EVICTION_POLICIES:
            raise UserError(
                f"sglang: radix_eviction_policy = {s.radix_eviction_policy!r}: use 'lru' or 'lfu'"
            )
        self.settings = s
        self.max_num_seqs = s.max_running_requests  # the fleet's batch slots
        self.page_size = s.page_size  # the pool's KV block size (fleet.py plans with it)
        # A cache-aware policy without the radix cache is FCFS (_validate_and_adjust_policy).
        self.policy = "fcfs" if s.disable_radix_cache else s.schedule_policy
        self.chunk = s.chunked_prefill_size if s.chunked_prefill_size > 0 else None
        self.clip = s.clip_max_new_tokens_estimation
        self.init_ratio = min(s.init_new_token_ratio * s.schedule_conservativeness, 1.0)
        self.min_ratio = min(self.init_ratio * s.min_new_token_ratio_factor, 1.0)
        self.decay = (self.init_ratio - self.min_ratio) / s.new_token_ratio_decay_steps
        self.base_ratio = self.init_ratio  # the ratio at step base_step, decaying from there
        self.base_step = 0
        self.full = False  # SGLang's running_batch.batch_is_full
        self.bound = False

    # ------------------------------------------------------------------ the queue

    @staticmethod
    def new_queue() -> list:
        return []

    @staticmethod
    def enqueue(queue: list, seq) -> None:
        queue.append(seq)

    # Retracted requests join the end of the queue (`_add_request_to_queue(is_retracted=True)`).
    requeue = enqueue

    @staticmethod
    def remove(queue: list, seq) -> None:
        queue.remove(seq)  # an aborted request leaves the queue at once (`abort_request`)

    def request_token_limit(self, capacity_tokens: int) -> int:
        """The longest prompt + output a replica ever admits: SGLang refuses a request when
        `ceil_page(extend) + max_new >= remaining` (`PrefillAdder.add_one_req`), so an empty
        cache takes at most one page less than its size."""
        return capacity_tokens - self.page_size

    def new_prefix_cache(
        self, capacity_blocks: int, block_size: int, trace_block: int | None
    ) -> RadixCache:
        """The replica's radix cache (also when disabled: it tracks locks and departures)."""
        if block_size != self.page_size:
            raise UserError(
                f"sglang: the KV block size is {block_size} but page_size = {self.page_size}: "
                "SGLang's pages are the pool's blocks, make them equal"
            )
        s = self.settings
        return RadixCache(
            capacity_blocks, block_size, trace_block, s.radix_eviction_policy, s.disable_radix_cache
        )

    # ------------------------------------------------------------------ the ratio

    def ratio(self, step: int) -> float:
        """new_token_ratio at the start of decode step `step` (closed form: exact in runs)."""
        r = self.base_ratio - self.decay * (step - self.base_step)
        return r if r > self.min_ratio else self.min_ratio

    def _reset_ratio(self, value: float, step: int) -> None:
        self.base_ratio = value
        self.base_step = step

    # ------------------------------------------------------------------ one step

    def schedule(self, rep, now_s: float) -> float | None:
        cache = rep.prefix
        if not self.bound:
            cache.rep = rep
            self.bound = True
        s = rep.step_no
        if rep.state == IDLE or (self.full and not rep.n_dec and rep.partial is None):
            # The running batch emptied: update_running_batch resets batch_is_full and the
            # scheduler idles for an iteration (self_check_during_idle resets the ratio).
            self.full = False
            self._reset_ratio(self.init_ratio, s)
        shrinks = cache.shrinks
        if shrinks and self.full and min(shrinks) <= s:
            self.full = False
        if shrinks:
            cache.shrinks = [x for x in shrinks if x > s]
        kv = rep.kv
        free = kv.capacity_blocks - kv.other_blocks - kv.decoder_blocks(s)
        if rep.partial is not None or (rep.waiting and not self.full):
            self._prefill(rep, cache, free, s, now_s)
            if rep.chunks:
                rep.idle_decoders = True
                return None
            if not self.full:  # nothing admitted, nothing ruled out: ask again next step
                rep.replan = True
        if rep.n_dec and kv.decode_demand(s) > free:
            self._retract(rep, free, s)
        elif rep.waiting and self.full and any(x <= s + 1 for x in cache.shrinks):
            rep.replan = True  # admission resumes at the next step: end the run there
        return None

    def _prefill(self, rep, cache: RadixCache, free: int, s: int, now_s: float) -> None:
        """get_new_batch_prefill with PrefillAdder's budgets (see the module docstring)."""
        page = self.page_size
        clip = self.clip
        cache.flush(free)
        ratio = self.ratio(s)
        offset = 0.0
        for seq in rep.decoding:
            left = seq.fin_step - s + 1  # max_new_tokens - len(output_ids)
            offset += (left if left < clip else clip) * ratio
        rem_total = free * page - offset
        cur_rem = free * page
        rem_input = self.settings.max_prefill_tokens
        rem_chunk = self.chunk
        admitted = 0
        part = rep.partial
        if part is not None:  # add_chunked_req
            extend = part.prompt_tokens + part.generated - part.cached
            room = int(rem_total) if rem_chunk is None else min(rem_chunk, int(rem_total))
            truncated = extend > room
            n = room // page * page if truncated else extend
            if n > 0:
                need = kv_blocks(part.cached + n, page) - part.blocks
                part.blocks += need
                rep.kv.other_blocks += need
                rep.chunks.append((part, n))
                used = kv_blocks(n, page) * page
                rem_total -= used + (0 if truncated else min(part.output_tokens, clip))
                cur_rem -= used
                rem_input -= used
                if rem_chunk is not None:
                    rem_chunk -= used
            admitted = 1
            if truncated:
                return
        waiting = rep.waiting
        if not waiting:
            return
        self._sort(cache, waiting)
        allowed = self.settings.max_running_requests - rep.n_dec
        taken = 0
        for seq in waiting:
            if admitted >= allowed:
                self.full = True
                break
            tokens = seq.prompt_tokens + seq.generated
            hit, node = cache.match(seq, tokens)
            extend = tokens - hit
            left = seq.output_tokens - seq.generated
            total = extend + (left if left < clip else clip)
            locked = cache.path_evictable(node)
            if total >= rem_total - locked:
                self.full = True
                break
            input_tokens = kv_blocks(extend, page) * page
            if input_tokens >= rem_input and admitted:
                break
            truncated = rem_chunk is not None and input_tokens > rem_chunk
            n = rem_chunk // page * page if truncated else extend
            if n <= 0:
                break
            shared = cache.lock(seq, node, hit)
            first = seq.start_s is None
            if first:
                seq.cached_tokens = hit
            rep.admit(seq, n, kv_blocks(hit + n, page), now_s, shared)
            seq.cached = hit
            rep.timeline.cache(now_s, hit if first else 0, cache)
            taken += 1
            admitted += 1
            used = kv_blocks(n, page) * page
            rem_total -= locked + used + (0 if truncated else min(seq.output_tokens, clip))
            cur_rem -= locked + used
            rem_input -= used
            if rem_chunk is not None:
                rem_chunk -= used
            if rem_total <= 0 or cur_rem <= 0:
                self.full = True
                break
            if truncated or rem_input <= 0 or (rem_chunk is not None and rem_chunk <= 0):
                break
        del waiting[:taken]

    def _sort(self, cache: RadixCache, waiting: list) -> None:
        """calc_priority: lpm (with in-batch deprioritisation) or dfs-weight reorder the
        queue in place; fcfs, and lpm above 128 waiting requests, leave it."""
        policy = self.policy
        if policy == "fcfs" or (policy == "lpm" and len(waiting) > LPM_FCFS_ABOVE):
            return
        st = self.settings
        check = st.in_batch_prefix_caching_check_threshold
        sim = RadixCache(1, 1, cache.trace_block)
        matches = {}
        demoted = set()
        for seq in waiting:
            tokens = seq.prompt_tokens + seq.generated
            hit, node = cache.match(seq, tokens)
            matches[seq] = (hit, node)
            if check != -1 and hit <= check:
                key_len = tokens - 1
                sim_hit, _ = sim.match(seq, tokens)
                if sim_hit >= st.in_batch_prefix_caching_deprioritize_threshold:
                    demoted.add(seq)
                elif key_len > 0:
                    sim._insert(sim.key(seq, key_len), key_len)
        if policy == "lpm":
            waiting.sort(key=lambda q: float("inf") if q in demoted else -matches[q][0])
            return
        # dfs-weight (_sort_by_dfs_weight): children by descending weight, then the node's own.
        by_node: dict = {}
        for seq in waiting:
            by_node.setdefault(matches[seq][1], []).append(seq)
        weight: dict = {}
        for node, reqs in by_node.items():
            while node is not None:
                weight[node] = weight.get(node, 0) + len(reqs)
                node = node.parent
        order: list = []
        stack = [(cache.root, False)]
        while stack:
            node, done = stack.pop()
            if done:
                order.extend(by_node.get(node, ()))
                continue
            stack.append((node, True))
            kids = sorted(
                {id(c): c for c in node.children.values() if c in weight}.values(),
                key=lambda c: -weight[c],
            )
            stack.extend((c, False) for c in reversed(kids))
        waiting[:] = order

    def _retract(self, rep, free: int, s: int) -> None:
        """retract_decode: the decoders' next pages do not fit even after evicting."""
        kv = rep.kv
        order = sorted(
            rep.decoding,
            key=lambda q: (q.output_tokens - (q.fin_step - s + 1), -q.prompt_tokens),
            reverse=True,
        )
        while len(order) > 1:
            free += rep.preempt_decoder(order.pop())
            if kv.decode_demand(s) <= free:
                break
        out = sum(q.output_tokens - (q.fin_step - s + 1) for q in order)
        max_new = sum(q.output_tokens for q in order)
        steps = self.settings.retract_decode_steps
        self._reset_ratio(min(1.0, (out + steps * len(order)) / (max_new + 1)), s + 1)
        self.full = False


def kv_blocks(tokens: int, page: int) -> int:
    """Pages that hold `tokens` tokens."""
    return -(-tokens // page)
