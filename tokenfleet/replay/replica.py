"""One inference server: its queue, its running batch, its KV cache, and its clock.

A replica runs one step (one forward pass of a mixed batch) at a time. Its batcher picks each
step's prefill chunks; every decoding sequence adds one token per step. When a step holds only
decodes, nothing can change the batch until a sequence finishes, the cache runs out of blocks or
a request arrives, so the replica advances over that whole *run* of steps at once. Step ends
within a stretch of decode-only steps with the same batch come in closed form from
StepTime.decode_piece (a *piece*: its m-th step ends at t0 + (m A + B K_m), K_m the summed
contexts, an exact integer), so a run of any length costs O(1): its end, and the first step end
at or after a given time, are computed, not listed. An arrival routed here cuts the run at the
first step end at or after it. A piece starts where its segment does (or where the previous
piece's regime ended), whatever the runs in between, so in step-by-step mode, where every run
is one step long, steps end at the same times; both modes take the same decisions, so they
write the same records.

GPU time is attributed to requests by token share: a step of duration t with T tokens (prefill
chunk tokens plus one per decoding sequence) gives each token t / T. Decoders are charged
through one accumulator per replica, advanced once per *segment* (a maximal stretch of
decode-only steps with the same batch), so the charge is O(1) per run and identical whether
the segment was advanced step by step or as runs.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush

from tokenfleet.perf.decode import DecodePiece, one_step_pieces
from tokenfleet.replay.kvcache import KVCache
from tokenfleet.replay.prefix import PrefixCache
from tokenfleet.replay.records.timeline import ReplicaTimeline
from tokenfleet.replay.request import EXPIRED, FINISHED, RUNNING, TIMED_OUT, WAITING, Seq
from tokenfleet.replay.views import IDLE, RUN, STEP, ReplicaViews

INF = float("inf")


class Replica(ReplicaViews):
    """State and clock of one server. The loop calls `on_arrival` and `on_event` only."""

    __slots__ = (
        "index",
        "pool",
        "tp",
        "kv",
        "prefix",
        "batcher",
        "step_s",
        "piece",
        "step_by_step",
        "max_request_tokens",
        "waiting",
        "decoding",
        "partial",
        "fin_heap",
        "step_no",
        "n_dec",
        "n_gen",
        "off_sum",
        "chunks",
        "state",
        "t_start",
        "step_prefill",
        "step_kv",
        "run_s0",
        "run_n",
        "run_end",
        "view_piece",
        "view_s",
        "view_lo",
        "view_hi",
        "version",
        "outstanding",
        "views",
        "load_indexes",
        "tokens_left",
        "ended",
        "hold_batch",
        "replan",
        "blocked",
        "frontend_in_s",
        "frontend_out_s",
        "async_scheduling",
        "inbox",
        "idle_decoders",
        "on_chunk",
        "gpu_acc",
        "seg_start",
        "seg_end",
        "seg_d",
        "timeline",
        "aborts",
        "timed_out",
    )

    def __init__(
        self,
        index: int,
        pool: str,
        step_time,
        kv: KVCache,
        batcher,
        outstanding: list[int],
        ended: list[Seq],
        timeline: ReplicaTimeline,
        step_by_step: bool = False,
        tp: int = 1,
        prefix: PrefixCache | None = None,
    ) -> None:
        self.index = index
        self.pool = pool
        self.tp = tp
        self.kv = kv
        self.prefix = prefix  # the prefix cache's blocks and free queue (None: caching off)
        self.batcher = batcher
        self.step_s = step_time.step_s
        # The engine's frontend (hardware/profile.py CLIENT_KEYS): a request reaches the queue
        # this late after it was routed, and each token the client this late after its step.
        engine = getattr(step_time, "engine", None)
        self.frontend_in_s = getattr(engine, "frontend_in_ms", 0.0) * 1e-3
        self.frontend_out_s = getattr(engine, "frontend_out_ms", 0.0) * 1e-3
        # The engine chooses each step one step ahead (hardware/profile.py ASYNC_KEY): requests
        # that arrive while a step runs wait in `inbox` for its end, and join the queue only
        # after the next step is chosen (`_take_inbox`).
        self.async_scheduling = bool(getattr(engine, "async_scheduling", False))
        self.inbox: list[Seq] = []
        self.piece = DecodePiece(
            getattr(step_time, "decode_piece", None) or one_step_pieces(step_time.step_s)
        )
        self.step_by_step = step_by_step
        # The longest request (prompt + output) whose KV fits in an empty cache.
        # (A batcher whose admission test is stricter says so: SGLang's needs one page spare.)
        self.max_request_tokens = getattr(batcher, "request_token_limit", lambda n: n)(
            kv.capacity_blocks * kv.block_size
        )
        self.waiting = batcher.new_queue()
        self.decoding: dict[Seq, None] = {}  # decoding sequences in admission (running) order
        self.partial: Seq | None = None  # the one sequence whose prefill spans steps
        self.fin_heap: list = []  # (fin_step, row, seq) of decoding sequences
        self.step_no = 0
        self.n_dec = 0  # sequences in the decode part of every step
        self.n_gen = 0  # those of them still producing tokens (static batching pads)
        self.off_sum = 0  # sum of their offsets: context tokens = off_sum + n_dec * step_no
        self.chunks: list = []  # (seq, new_tokens) prefill chunks of the current step
        self.state = IDLE
        self.t_start = 0.0
        self.step_prefill = 0
        self.step_kv = 0
        self.run_s0 = 0  # the run's first step, its length and its end (in `piece`)
        self.run_n = 0
        self.run_end = 0.0
        # steps_done_at's last answer: step view_s of piece view_piece is in progress in
        # (view_lo, view_hi].
        self.view_piece = -1
        self.view_s = 0
        self.view_lo = self.view_hi = 0.0
        self.version = 0
        self.outstanding = outstanding  # shared per-fleet list: requests queued or running
        # Extra per-router outstanding counts this replica keeps current: (list, position).
        self.views: list = []
        # Balancers' LoadIndexes told of each change to those counts: (index, position).
        self.load_indexes: list = []
        self.tokens_left = 0  # prompt + output tokens not yet generated, over outstanding
        self.ended = ended  # shared sink of ended requests (the loop writes them)
        self.hold_batch = batcher.holds_batch
        # Set (by a preemption, or by a batcher) when the next step must be chosen afresh even
        # if this one holds only decodes: vLLM admits nothing in a step that preempted.
        self.replan = False
        # Set by a batcher when the queue's head, looked up in the prefix cache, did not fit:
        # until a request arrives or blocks come back, it cannot fit, so it is not looked up
        # again (a lookup applies the cache's pending evictions: looking only when something
        # changed keeps them where skip mode and step-by-step mode both look).
        self.blocked = False
        # Set by a batcher whose prefill steps exclude the decoders (SGLang runs a prefill batch
        # or a decode batch): this step's decoders wait, and the decode clock `step_no` stays.
        self.idle_decoders = False
        # A prefix cache's hook after each prefill chunk that does not finish its request
        # (SGLang's cache_unfinished_req): returns the blocks now counted twice.
        self.on_chunk = getattr(prefix, "cache_unfinished", None)
        # Decode-time accumulator: closed segments' (duration / batch), plus the open segment.
        self.gpu_acc = 0.0
        self.seg_start = 0.0
        self.seg_end = 0.0
        self.seg_d = 0  # batch of the open decode-only segment (0: none open)
        self.timeline = timeline
        self.aborts: list[Seq] = []  # requests whose clients gave up, dropped at the step's end
        # Where a timed-out request goes: ended, or back to its client for a retry (set by the
        # loop: replay/timeouts.py).
        self.timed_out = lambda seq, now: ended.append(seq)

    # ------------------------------------------------------------------ the loop's interface

    def on_arrival(self, seq: Seq, now: float) -> float | None:
        """Queue a request (the balancers counted it when it was routed here: loop.py's
        dispatch); return the replica's new event time if it changed, else None."""
        seq.replica = self.index
        self.timeline.arrivals.append(now)
        self.tokens_left += seq.prompt_tokens + seq.output_tokens
        state = self.state
        if self.async_scheduling and state != IDLE:
            # The engine core takes it in at the end of the step under way, which ends the run.
            self.inbox.append(seq)
            if state == RUN and self.run_n > 1:
                return self._cut_run(now)
            return None
        self.blocked = False
        self.batcher.enqueue(self.waiting, seq)
        if state == IDLE:
            # Start at `now`, after every other arrival at the same instant has queued.
            self.version += 1
            return now
        if state == RUN and self.run_n > 1:
            return self._cut_run(now)
        return None

    def abort(self, seq: Seq, now: float) -> float | None:
        """Its client gave up at `now` (replay/timeouts.py): the engine drops it at the end of
        the step in flight, as vLLM's engine core takes aborts between steps (at once when
        idle). Returns the replica's new event time if it changed, else None."""
        self.aborts.append(seq)
        state = self.state
        if state == IDLE:
            self._apply_aborts(now)
        elif state == RUN and self.run_n > 1:
            return self._cut_run(now)
        return None

    def drop_routing(self, seq: Seq, now: float) -> None:
        """Its client gave up while the engine's frontend still held it: it never queues."""
        self._count_out()
        self._time_out(seq, now)

    def _cut_run(self, now: float) -> float | None:
        """Cut the run at its first step end at or after `now` (the run ends at or after `now`,
        so that step is in it); return its new end, or None where a run already ends there (a
        run cut at the same step by an earlier arrival keeps its event)."""
        s0 = self.run_s0
        s, end = self.piece.first_end_at(now)
        if s < s0:
            s = s0
            end = self.piece.end_of(s)
        n = s - s0 + 1
        if n != self.run_n:
            self.run_n = n
            self.run_end = end
            self.version += 1
            return end
        return None

    def on_event(self, now: float) -> float | None:
        """The replica's event fired at `now`: a step or run ended, or a wake-up. Next time."""
        state = self.state
        if state == RUN:
            # The run's k steps happened: account them and end the last one.
            s0 = self.run_s0
            k = self.run_n
            last = self.run_end
            d = self.n_dec
            gen = self.n_gen
            if self.seg_d == d and self.seg_end == self.t_start:
                self.seg_end = last  # the segment goes on
            else:
                if self.seg_d:
                    self.gpu_acc += (self.seg_end - self.seg_start) / self.seg_d
                self.seg_start = self.t_start
                self.seg_end = last
                self.seg_d = d
            self.tokens_left -= gen * k
            kv = self.kv
            self.timeline.run(
                self.t_start, last, k, d, gen, kv.other_blocks + kv.decoder_blocks(s0 + k), self
            )
            self.step_no = s0 + k - 1
            self._end_step(last)
        elif state == STEP:
            start = self.t_start
            d, gen = (0, 0) if self.idle_decoders else (self.n_dec, self.n_gen)
            chunks = self.chunks
            prefill = self.step_prefill
            # GPU time by token share: chunks directly, decoders through the accumulator.
            share = (now - start) / (prefill + d)
            for seq, n in chunks:
                seq.prefill_s += n * share
            if self.seg_d:
                self.gpu_acc += (self.seg_end - self.seg_start) / self.seg_d
                self.seg_d = 0
            if d:
                self.gpu_acc += share
            self.tokens_left -= gen
            batch = d + len(chunks)
            sampled = self._end_step(now)
            self.timeline.step(start, now, batch, prefill, gen, self.step_kv, sampled)
        if self.aborts:
            self._apply_aborts(now)
        if self.inbox:
            return self._take_inbox(now)
        return self._plan(now)

    def _take_inbox(self, now: float) -> float | None:
        """Async scheduling (vllm/v1/engine/core.py `step_with_batch_queue`): the step starting
        now was chosen while the last one ran, before the requests in `inbox` reached the
        engine core; they join the queue now, for the step after (which `_plan` makes end a
        run here). Where nothing was chosen, the engine core takes them at once."""
        wake = self._plan(now)  # a run planned now is one step long: the inbox is not empty
        inbox = self.inbox
        self.inbox = []
        self.blocked = False
        for seq in inbox:
            self.batcher.enqueue(self.waiting, seq)
        if self.state == IDLE:
            return self._plan(now)
        return wake

    # ------------------------------------------------------------------ batch changes

    def admit(self, seq: Seq, new_tokens: int, blocks: int, now: float, shared: int = 0) -> None:
        """Start (or resume) a waiting sequence with a first chunk of `new_tokens`; it holds
        `blocks` blocks, `shared` of them (prefix-cache hits) held by others already."""
        seq.blocks = blocks
        seq.status = RUNNING
        self.kv.other_blocks += blocks - shared
        if seq.start_s is None:
            seq.start_s = now
        self.chunks.append((seq, new_tokens))

    def preempt_decoder(self, seq: Seq) -> int:
        """Evict a decoding sequence by recompute; return the blocks freed."""
        freed = self._out_of_decoding(seq, False)
        self._requeue(seq)
        return freed

    def _requeue(self, seq: Seq) -> None:
        """A preempted sequence waits again, to be recomputed; nothing is admitted in a step
        that preempted (vLLM V1), so the next step is chosen afresh."""
        seq.cached = 0
        seq.preemptions += 1
        seq.status = WAITING
        self.replan = True
        self.blocked = False
        self.batcher.requeue(self.waiting, seq)

    def _apply_aborts(self, now: float) -> None:
        """Drop the requests whose clients gave up, between steps: from the queue, or from the
        running batch with their blocks given back as a finish gives them (their computed full
        blocks stay cached). One that finished at this step's end is already timed out
        (`_finish`); a request-level batch keeps its requests to its end."""
        for seq in self.aborts:
            status = seq.status
            if status is WAITING:
                if seq in self.inbox:  # not yet taken in by the engine core
                    self.inbox.remove(seq)
                else:
                    self.batcher.remove(self.waiting, seq)
            elif status is RUNNING and not self.hold_batch:
                if seq is self.partial:
                    self._out_of_prefill(True)
                else:
                    self._out_of_decoding(seq, True)
            else:
                continue
            self.tokens_left -= seq.prompt_tokens + seq.output_tokens - seq.generated
            self.blocked = False
            self._count_out()
            self.timeline.finishes.append(now)
            self._time_out(seq, now)
        self.aborts = []

    def _out_of_prefill(self, finished: bool) -> int:
        """Take the sequence whose prefill is under way out, preempted or aborted: its blocks
        back (to the prefix cache as a finish gives them, or a preemption). Returns the
        blocks freed."""
        seq = self.partial
        self.partial = None
        freed = seq.blocks
        self.kv.other_blocks -= freed
        if self.prefix is not None:
            kept = self.prefix.release(seq, seq.cached, freed, finished)
            self.kv.other_blocks += kept
            freed -= kept
        seq.blocks = 0
        return freed

    def _out_of_decoding(self, seq: Seq, finished: bool) -> int:
        """Take a decoding sequence out of the batch, preempted or aborted: its decode time so
        far, its tokens so far, and its blocks back (to the prefix cache as a finish gives
        them, or a preemption). Returns the blocks freed."""
        s = self.step_no
        del self.decoding[seq]
        seq.decode_s += self._decode_acc() - seq.a_join
        offset = seq.offset
        self.kv.remove_decoder(offset)
        self.n_dec -= 1
        self.n_gen -= 1
        self.off_sum -= offset
        fin = seq.fin_step
        seq.generated = seq.output_tokens - 1 - (fin - s)
        # Out of the finish heap now (O(batch), but preemptions and aborts are rare), so the
        # hot paths never meet an entry left behind.
        fin_heap = self.fin_heap
        fin_heap.remove((fin, seq.row, seq))
        heapify(fin_heap)
        seq.fin_step = -1
        freed = self.kv.blocks_for(offset + s)
        if self.prefix is not None:
            kept = self.prefix.release(seq, offset + s, freed, finished)
            self.kv.other_blocks += kept
            freed -= kept
        return freed

    def _count_out(self) -> None:
        """One fewer request here, as the balancers count (inlined in `_finish`)."""
        self.outstanding[self.index] -= 1
        for view, i in self.views:
            view[i] -= 1
        for index, i in self.load_indexes:
            index.down(i)

    def _time_out(self, seq: Seq, now: float) -> None:
        """It ends timed out, at the moment its client gave up (the first token counts only
        if the client had it by then); its client may send it again (`timed_out`)."""
        seq.status = TIMED_OUT
        seq.finish_s = seq.timeout_at
        if seq.first_token_s is not None and seq.first_token_s > seq.timeout_at:
            seq.first_token_s = None
        self.timed_out(seq, now)

    def preempt_partial(self) -> int:
        """Evict the sequence whose prefill is under way; return the blocks freed."""
        seq = self.partial
        freed = self._out_of_prefill(False)
        self._requeue(seq)
        return freed

    # ------------------------------------------------------------------ steps and runs

    def _plan(self, now: float) -> float | None:
        """Choose the step starting at `now`; return when the replica next needs the engine.
        (`chunks` is empty here: `_end_step` consumed the last step's.)"""
        self.replan = False
        self.idle_decoders = False
        s = self.step_no
        kv = self.kv
        # The batcher is asked only when there is something to decide: a request waiting, a
        # prefill under way, or decoders that might need more blocks than are free. Otherwise
        # the step is all decodes, as every batcher would choose; most steps after a finish are.
        if (
            self.waiting
            or self.partial is not None
            or kv.decoder_blocks_bound(s) > kv.capacity_blocks - kv.other_blocks
        ):
            wake = self.batcher.schedule(self, now)
        else:
            wake = None
        d = self.n_dec  # after the batcher: it may have preempted decoders
        chunks = self.chunks
        if not chunks:
            if d == 0:
                self.state = IDLE
                return wake
            # Decodes only: nothing changes the batch until a sequence finishes, the cache is
            # full or a request arrives, so this step opens a run.
            n = 1 if self.step_by_step or self.replan or self.inbox else self.fin_heap[0][0] - s + 1
            if (
                n > 1
                and kv.n_phased
                and kv.decoder_blocks_bound(s + n) > kv.capacity_blocks - kv.other_blocks
            ):  # the cheap bound first
                n = kv.steps_until_full(s, n)
            piece = self.piece
            if not (self.seg_d == d and self.seg_end == now and s < piece.s1):
                # A new piece: the segment starts here, or the previous piece's regime ended.
                piece.restart(s, now, d, self.off_sum + d * s + d)
            if n > piece.s1 - s:
                n = piece.s1 - s
            self.state = RUN
            self.t_start = now
            self.run_s0 = s
            self.run_n = n
            self.run_end = end = piece.end_of(s + n - 1)
            return end
        prefill = 0
        pairs = 0.0
        for seq, n in chunks:
            prefill += n
            pairs += n * (seq.cached + (n + 1) / 2)
        if self.idle_decoders:
            d = 0
        ctx = self.off_sum + d * s + d if d else 0
        self.state = STEP
        self.t_start = now
        self.step_prefill = prefill
        self.step_kv = kv.other_blocks + kv.decoder_blocks(s + (not self.idle_decoders))
        return now + self.step_s(prefill, pairs, d, ctx)

    def _end_step(self, now: float) -> int:
        """Tokens of step `step_no` land at `now`: prefills advance, sequences finish. Returns
        the first tokens sampled (at the end of a prefill)."""
        s = self.step_no
        idle = self.idle_decoders
        nxt = s if idle else s + 1  # the next decode step
        chunks = self.chunks
        sampled = 0
        on_chunk = self.on_chunk
        if chunks:
            self.partial = None
            for seq, n in chunks:
                cached = seq.cached + n
                seq.cached = cached
                if cached < seq.prompt_tokens + seq.generated:
                    self.partial = seq
                    if on_chunk is not None:
                        self.kv.other_blocks -= on_chunk(seq, cached)
                    continue
                out = seq.output_tokens
                if out == 0:  # prefill only: the response is ready when the prompt is read
                    self._free_blocks(seq)
                    seq.first_token_s = now + self.frontend_out_s
                    self._finish(seq, now)
                    continue
                seq.generated += 1
                sampled += 1
                if seq.first_token_s is None:
                    seq.first_token_s = now + self.frontend_out_s
                if seq.generated == out:
                    self._free_blocks(seq)
                    self._finish(seq, now)
                    continue
                if on_chunk is not None:
                    self.kv.other_blocks -= on_chunk(seq, cached)
                # Joins the decode part from the next step on.
                offset = cached - nxt
                seq.offset = offset
                if not seq.reserved:
                    self.kv.other_blocks -= seq.blocks
                    seq.blocks = 0
                    self.kv.add_decoder(offset)
                self.decoding[seq] = None
                seq.a_join = self.gpu_acc  # no segment is open after a prefill step
                self.n_dec += 1
                self.n_gen += 1
                self.off_sum += offset
                seq.fin_step = fin = nxt - 1 + out - seq.generated
                heappush(self.fin_heap, (fin, seq.row, seq))
            self.chunks = []
            self.tokens_left -= sampled
        fin_heap = self.fin_heap
        while fin_heap and fin_heap[0][0] == s and not idle:
            seq = heappop(fin_heap)[2]
            seq.generated = seq.output_tokens
            self.n_gen -= 1
            d = self.seg_d  # inline _decode_acc()
            acc = self.gpu_acc + (self.seg_end - self.seg_start) / d if d else self.gpu_acc
            seq.decode_s += acc - seq.a_join
            if self.hold_batch:
                self._finish(seq, now)
                if self.n_gen == 0:
                    self._release_batch()
                continue
            del self.decoding[seq]
            offset = seq.offset
            self.kv.remove_decoder(offset)
            prefix = self.prefix
            if prefix is not None:  # it computed the KV of all its tokens but the last
                tokens = offset + s + 1
                blocks = -(-tokens // self.kv.block_size)
                if (
                    prefix.releases_every_request
                    or seq.held
                    or seq.hashes is not None
                    or seq.session_id is not None
                ):
                    self.kv.other_blocks += prefix.release(seq, tokens, blocks, True)
                else:  # nothing of it is cached (most requests of a trace without prefixes):
                    prefix.loose += blocks  # they join the queue's tail (no call: 2% of a run)
            self.n_dec -= 1
            self.off_sum -= offset
            self._finish(seq, now)
        self.step_no = nxt
        return sampled

    def _decode_acc(self) -> float:
        """The decode accumulator now (at the end of the last step accounted)."""
        d = self.seg_d
        if d:
            return self.gpu_acc + (self.seg_end - self.seg_start) / d
        return self.gpu_acc

    def _free_blocks(self, seq: Seq) -> None:
        """A sequence that never decoded finishes: its blocks go back."""
        kv = self.kv
        kv.other_blocks -= seq.blocks
        prefix = self.prefix
        if prefix is not None:
            if (
                prefix.releases_every_request
                or seq.held
                or seq.hashes is not None
                or seq.session_id is not None
            ):
                kv.other_blocks += prefix.release(seq, seq.cached, seq.blocks, True)
            else:
                prefix.loose += seq.blocks
        seq.blocks = 0

    def _release_batch(self) -> None:
        """Static batching: the batch's last sequence finished; its padded slots are freed."""
        kv = self.kv
        for seq in self.decoding:
            kv.other_blocks -= seq.blocks
            seq.blocks = 0
        self.decoding = {}
        self.n_dec = 0
        self.off_sum = 0

    def _finish(self, seq: Seq, now: float) -> None:
        seq.finish_s = now + self.frontend_out_s  # as the client sees it
        seq.fin_step = -1
        self.blocked = False
        self.tokens_left -= seq.prompt_tokens
        self.outstanding[self.index] -= (
            1  # one fewer, as the balancers count (see loop.py dispatch)
        )
        for view, i in self.views:
            view[i] -= 1
        for index, i in self.load_indexes:
            index.down(i)
        self.timeline.finishes.append(now)
        if seq.finish_s > seq.timeout_at:  # done, but its client had given up
            self._time_out(seq, now)
            return
        seq.status = EXPIRED if now > seq.deadline_at else FINISHED
        self.ended.append(seq)

    def busy_since(self) -> float:
        """Start of the step or run in flight (inf when idle): accounting is final before it."""
        return self.t_start if self.state != IDLE else INF
