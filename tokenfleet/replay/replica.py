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

from bisect import bisect_left
from heapq import heapify, heappop, heappush
from math import sqrt

from tokenfleet.replay.kvcache import KVCache

IDLE, STEP, RUN = 0, 1, 2
INF = float("inf")
_NO_END = 1 << 62  # the step a piece valid for every context ends at
# Timeline accumulator fields (metrics.TimelineWriter turns them into timeline.parquet).
(
    BUSY,
    STEPS,
    BATCH_SUM,
    BATCH_MAX,
    PREFILL,
    DECODE,
    KV_PEAK,
    ARRIVED,
    FINISHED,
    IN_SYSTEM,
    SAMPLED,  # first tokens, sampled at prefill ends (output tokens = DECODE + SAMPLED)
    BILLED_EXTRA,
) = range(12)


def one_step_pieces(step_s):
    """`decode_piece` for a step-time model without one: each piece is a single step priced by
    `step_s`, so step ends are its durations summed in order (exact, but O(steps) per run)."""

    def decode_piece(decode_seqs: int, context_tokens: int) -> tuple[float, float, int, float]:
        return step_s(0, 0.0, decode_seqs, context_tokens), 0.0, 0, context_tokens + 1

    return decode_piece


def new_row() -> list:
    """A fresh timeline accumulator (BILLED_EXTRA: on-demand rounding, see autoscale)."""
    return [0.0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0, 0.0]


class Seq:
    """A request inside the fleet: its trace fields, its progress and what the records need."""

    __slots__ = (
        "row",
        "request_id",
        "tenant",
        "tier",
        "session_id",
        "arrival_s",
        "prompt_tokens",
        "output_tokens",
        "priority",
        "cached",
        "generated",
        "blocks",
        "offset",
        "fin_step",
        "reserved",
        "start_s",
        "first_token_s",
        "finish_s",
        "preemptions",
        "replica",
        "status",
        "prefill_s",
        "decode_s",
        "a_join",
        "attempts",
        "deadline_at",
    )

    def __init__(
        self,
        row: int,
        arrival_s: float,
        prompt_tokens: int,
        output_tokens: int,
        request_id=None,
        tenant=None,
        tier=None,
        session_id=None,
        priority: int = 0,
    ) -> None:
        self.row = row
        self.request_id = request_id
        self.tenant = tenant
        self.tier = tier
        self.session_id = session_id
        self.arrival_s = arrival_s
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.priority = priority
        self.cached = 0  # tokens whose KV is computed
        self.generated = 0  # output tokens produced so far
        self.blocks = 0  # KV blocks held while not in the decode histogram
        self.offset = 0  # cached - step_no while decoding
        self.fin_step = -1  # step whose end produces the last token, while decoding
        self.reserved = False  # static batching: blocks for the whole output taken up front
        self.start_s = None  # first step that computed any of it
        self.first_token_s = None
        self.finish_s = None
        self.preemptions = 0
        self.replica = -1
        self.status = "finished"
        self.prefill_s = 0.0  # replica-seconds of prefill steps, by token share
        self.decode_s = 0.0  # replica-seconds of decode tokens, by token share
        self.a_join = 0.0  # the replica's decode accumulator when this joined decoding
        self.attempts = 1  # 1 + client retries after rate limiting
        self.deadline_at = INF  # deferred tiers: finishing later makes it `expired`


class Replica:
    """State and clock of one server. The engine calls `on_arrival` and `on_event` only."""

    __slots__ = (
        "index",
        "pool",
        "kv",
        "batcher",
        "step_s",
        "decode_piece",
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
        "pc_s0",
        "pc_s1",
        "pc_t0",
        "pc_a",
        "pc_b",
        "pc_c1",
        "pc_d",
        "pc_id",
        "vw_piece",
        "vw_s",
        "vw_lo",
        "vw_hi",
        "version",
        "outstanding",
        "tokens_left",
        "finished",
        "hold_batch",
        "interval_s",
        "acc",
        "in_sys_n",
        "arrived_at",
        "finished_at",
        "cur_iv",
        "cur_row",
        "replan",
        "gpu_acc",
        "seg_start",
        "seg_end",
        "seg_d",
        "views",
        "spans",
        "tp",
    )

    def __init__(
        self,
        index: int,
        pool: str,
        step_time,
        kv: KVCache,
        batcher,
        outstanding: list[int],
        finished: list[Seq],
        interval_s: float,
        step_by_step: bool = False,
    ) -> None:
        self.index = index
        self.pool = pool
        self.kv = kv
        self.batcher = batcher
        self.step_s = step_time.step_s
        self.decode_piece = getattr(step_time, "decode_piece", None) or one_step_pieces(
            step_time.step_s
        )
        self.step_by_step = step_by_step
        # The longest request (prompt + output) whose KV fits in an empty cache.
        self.max_request_tokens = kv.capacity_blocks * kv.block_size
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
        self.run_s0 = 0  # the run's first step, its length and its end
        self.run_n = 0
        self.run_end = 0.0
        # The piece of decode-only steps the run lies in: steps [pc_s0, pc_s1) of pc_d sequences;
        # the m-th ends at pc_t0 + (m pc_a + pc_b K_m), K_m = m pc_c1 + pc_d m (m - 1) / 2.
        self.pc_s0 = 0
        self.pc_s1 = 0
        self.pc_t0 = 0.0
        self.pc_a = 0.0
        self.pc_b = 0.0
        self.pc_c1 = 0
        self.pc_d = 0
        self.pc_id = 0  # which piece: a new one, a new number
        # steps_done_at's last answer: step vw_s of piece vw_piece is in progress in (lo, hi].
        self.vw_piece = -1
        self.vw_s = 0
        self.vw_lo = self.vw_hi = 0.0
        self.version = 0
        self.outstanding = outstanding  # shared per-fleet list: requests queued or running
        self.tokens_left = 0  # prompt + output tokens not yet generated, over outstanding
        self.finished = finished  # shared sink of finished requests
        self.hold_batch = batcher.holds_batch
        self.interval_s = interval_s
        self.acc: dict[int, list] = {}  # timeline accumulators by interval number
        self.in_sys_n = 0  # requests here at the start of the next interval the engine writes
        # Arrival and finish times here, in order, not yet folded into their intervals' rows
        # (fold_counts: once per batch of finished requests, and before a row is written).
        self.arrived_at: list[float] = []
        self.finished_at: list[float] = []
        self.cur_iv = -1  # the interval whose accumulator was used last, and that row
        self.cur_row: list = []
        # Set (by a preemption, or by a batcher) when the next step must be chosen afresh even
        # if this one holds only decodes: vLLM admits nothing in a step that preempted.
        self.replan = False
        # Decode-time accumulator: closed segments' (duration / batch), plus the open segment.
        self.gpu_acc = 0.0
        self.seg_start = 0.0
        self.seg_end = 0.0
        self.seg_d = 0  # batch of the open decode-only segment (0: none open)
        # Extra per-router outstanding counts this replica keeps current: (list, position).
        self.views: list = []
        # Provisioned spans [start, end] (end inf while provisioned); fixed pools: always.
        self.spans: list = [[0.0, INF]]
        self.tp = 1

    # ------------------------------------------------------------------ engine interface

    def on_arrival(self, seq: Seq, now: float) -> float | None:
        """Queue a request; return the replica's new event time if it changed, else None."""
        seq.replica = self.index
        self._count(1)
        self.arrived_at.append(now)
        self.tokens_left += seq.prompt_tokens + seq.output_tokens
        self.batcher.enqueue(self.waiting, seq)
        state = self.state
        if state == IDLE:
            # Start at `now`, after every other arrival at the same instant has queued.
            self.version += 1
            return now
        if state == RUN and self.run_n > 1:
            # Cut the run at its first step end at or after `now` (the run ends at or after
            # `now`, so that step is in it). A run of one step, or one already cut at the same
            # step by an earlier arrival, keeps its event.
            s0 = self.run_s0
            s, end = self._first_end_at(now)
            if s < s0:
                s = s0
                end = self._end_of(s)
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
            if self.seg_d == d and self.seg_end == self.t_start:
                self.seg_end = last  # the segment goes on
            else:
                if self.seg_d:
                    self.gpu_acc += (self.seg_end - self.seg_start) / self.seg_d
                self.seg_start = self.t_start
                self.seg_end = last
                self.seg_d = d
            self._account_run(s0, k)
            self.step_no = s0 + k - 1
            self._end_step(last)
        elif state == STEP:
            self._account_step(self.t_start, now, self.step_prefill, self.step_kv)
            self._end_step(now)
        return self._plan(now)

    # ------------------------------------------------------------------ views for balancers

    def steps_done_at(self, now: float) -> int:
        """Steps of the current run that ended strictly before `now` (0 outside a run).

        A balancer asks every replica at every arrival; the answer only changes at a step end,
        so the piece's step in progress is kept with the times it holds for. The piece is
        checked too: a gateway timer can route a request at the very instant a run ends and the
        next piece starts, inside the old window."""
        if self.state != RUN:
            return 0
        if self.vw_piece == self.pc_id and self.vw_lo < now <= self.vw_hi:
            s = self.vw_s
        else:
            s, self.vw_hi = self._first_end_at(now)
            self.vw_lo = self._end_of(s - 1) if s > self.pc_s0 else -INF
            self.vw_s = s
            self.vw_piece = self.pc_id
        done = s - self.run_s0
        n = self.run_n
        return done if 0 <= done <= n else (0 if done < 0 else n)

    def kv_used_at(self, now: float) -> float:
        """Fraction of the KV cache in use at `now`."""
        kv = self.kv
        used = kv.other_blocks + kv.decoder_blocks(self.step_no + self.steps_done_at(now))
        return used / kv.capacity_blocks

    def tokens_left_at(self, now: float) -> int:
        return self.tokens_left - self.n_gen * self.steps_done_at(now)

    # ------------------------------------------------------------------ batch changes

    def admit(self, seq: Seq, new_tokens: int, blocks: int, now: float) -> None:
        """Start (or resume) a waiting sequence with a first chunk of `new_tokens`."""
        seq.blocks = blocks
        self.kv.other_blocks += blocks
        if seq.start_s is None:
            seq.start_s = now
        self.chunks.append((seq, new_tokens))

    def preempt_decoder(self, seq: Seq) -> int:
        """Evict a decoding sequence by recompute; return the blocks freed."""
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
        # Out of the finish heap now (O(batch), but preemptions are rare), so the hot paths
        # never meet an entry left behind.
        fin_heap = self.fin_heap
        fin_heap.remove((fin, seq.row, seq))
        heapify(fin_heap)
        seq.fin_step = -1
        seq.cached = 0
        seq.preemptions += 1
        self.replan = True
        self.batcher.requeue(self.waiting, seq)
        return -(-(offset + s) // self.kv.block_size)

    def preempt_partial(self) -> int:
        """Evict the sequence whose prefill is under way; return the blocks freed."""
        seq = self.partial
        self.partial = None
        freed = seq.blocks
        self.kv.other_blocks -= freed
        seq.blocks = 0
        seq.cached = 0
        seq.preemptions += 1
        self.replan = True
        self.batcher.requeue(self.waiting, seq)
        return freed

    # ------------------------------------------------------------------ steps and runs

    def _plan(self, now: float) -> float | None:
        """Choose the step starting at `now`; return when the replica next needs the engine.
        (`chunks` is empty here: `_end_step` consumed the last step's.)"""
        self.replan = False
        d = self.n_dec
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
        chunks = self.chunks
        if not chunks:
            if d == 0:
                self.state = IDLE
                return wake
            # Decodes only: nothing changes the batch until a sequence finishes, the cache is
            # full or a request arrives, so this step opens a run.
            n = 1 if self.step_by_step or self.replan else self.fin_heap[0][0] - s + 1
            if (
                n > 1
                and kv.n_phased
                and kv.decoder_blocks_bound(s + n) > kv.capacity_blocks - kv.other_blocks
            ):  # the cheap bound first
                n = kv.steps_until_full(s, n)
            if not (self.seg_d == d and self.seg_end == now and s < self.pc_s1):
                # A new piece: the segment starts here, or the previous piece's regime ended.
                ctx = self.off_sum + d * s + d
                a, b, shift, ctx_end = self.decode_piece(d, ctx)
                self.pc_s0 = s
                self.pc_s1 = s - int((ctx - ctx_end) // d) if ctx_end < INF else _NO_END
                self.pc_t0 = now
                self.pc_a = a
                self.pc_b = b
                self.pc_c1 = ctx + shift
                self.pc_d = d
                self.pc_id += 1
            if n > self.pc_s1 - s:
                n = self.pc_s1 - s
            self.state = RUN
            self.t_start = now
            self.run_s0 = s
            self.run_n = n
            m = s + n - self.pc_s0  # inline _end_of(s + n - 1): once per run
            self.run_end = end = self.pc_t0 + (
                m * self.pc_a + self.pc_b * (m * self.pc_c1 + d * (m * (m - 1) // 2))
            )
            return end
        prefill = 0
        pairs = 0.0
        for seq, n in chunks:
            prefill += n
            pairs += n * (seq.cached + (n + 1) / 2)
        ctx = self.off_sum + d * s + d if d else 0
        self.state = STEP
        self.t_start = now
        self.step_prefill = prefill
        self.step_kv = kv.other_blocks + kv.decoder_blocks(s + 1)
        return now + self.step_s(prefill, pairs, d, ctx)

    def _end_of(self, s: int) -> float:
        """End time of step `s` of the current piece."""
        m = s - self.pc_s0 + 1
        return self.pc_t0 + (
            m * self.pc_a + self.pc_b * (m * self.pc_c1 + self.pc_d * (m * (m - 1) // 2))
        )

    def _first_end_at(self, t: float) -> tuple[int, float]:
        """The first step of the current piece that ends at or after `t`, and its end: the root
        of the quadratic, then checked against the exact ends (they never decrease with the
        step)."""
        t0 = self.pc_t0
        a, b, c1, d = self.pc_a, self.pc_b, self.pc_c1, self.pc_d
        x = t - t0
        if x <= 0.0:
            m = 1
        else:
            # m a + b (m c1 + d m (m - 1) / 2) >= x, i.e. q m^2 + r m >= x:
            q = 0.5 * b * d
            r = a + b * c1 - q
            m = int(2.0 * x / (r + sqrt(r * r + 4.0 * q * x)))
            if m < 1:
                m = 1
        # The exact end of the m-th step, as `_end_of` computes it (inlined: the hot path).
        n = m - 1
        while n and t0 + (n * a + b * (n * c1 + d * (n * (n - 1) // 2))) >= t:
            m, n = n, n - 1
        while (end := t0 + (m * a + b * (m * c1 + d * (m * (m - 1) // 2)))) < t:
            m += 1
        return self.pc_s0 + m - 1, end

    def _end_step(self, now: float) -> None:
        """Tokens of step `step_no` land at `now`: prefills advance, sequences finish."""
        s = self.step_no
        chunks = self.chunks
        if chunks:
            self.partial = None
            sampled = 0  # tokens sampled at the end of a (re)prefill
            for seq, n in chunks:
                cached = seq.cached + n
                seq.cached = cached
                if cached < seq.prompt_tokens + seq.generated:
                    self.partial = seq
                    continue
                out = seq.output_tokens
                if out == 0:  # prefill only: the response is ready when the prompt is read
                    self.kv.other_blocks -= seq.blocks
                    seq.blocks = 0
                    seq.first_token_s = now
                    self._finish(seq, now)
                    continue
                seq.generated += 1
                sampled += 1
                if seq.first_token_s is None:
                    seq.first_token_s = now
                if seq.generated == out:
                    self.kv.other_blocks -= seq.blocks
                    seq.blocks = 0
                    self._finish(seq, now)
                    continue
                # Joins the decode part from the next step on.
                offset = cached - s - 1
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
                seq.fin_step = fin = s + out - seq.generated
                heappush(self.fin_heap, (fin, seq.row, seq))
            self.chunks = []
            if sampled:
                self.tokens_left -= sampled
                iv = int(self.t_start // self.interval_s)
                (self.cur_row if iv == self.cur_iv else self._row(iv))[SAMPLED] += sampled
        fin_heap = self.fin_heap
        while fin_heap and fin_heap[0][0] == s:
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
            self.n_dec -= 1
            self.off_sum -= offset
            self._finish(seq, now)
        self.step_no = s + 1

    def _decode_acc(self) -> float:
        """The decode accumulator now (at the end of the last step accounted)."""
        d = self.seg_d
        if d:
            return self.gpu_acc + (self.seg_end - self.seg_start) / d
        return self.gpu_acc

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
        seq.finish_s = now
        seq.fin_step = -1
        self.tokens_left -= seq.prompt_tokens
        self._count(-1)
        self.finished_at.append(now)
        if now > seq.deadline_at:
            seq.status = "expired"
        self.finished.append(seq)

    # ------------------------------------------------------------------ timeline

    def _row(self, iv: int) -> list:
        """The accumulator of interval `iv` (hot callers check `cur_iv` first)."""
        if iv == self.cur_iv:
            return self.cur_row
        row = self.acc.get(iv)
        if row is None:
            row = self.acc[iv] = new_row()
        self.cur_iv = iv
        self.cur_row = row
        return row

    def _count(self, change: int) -> None:
        """Apply `change` to the requests here, as the balancers see them."""
        self.outstanding[self.index] += change
        for view, i in self.views:
            view[i] += change

    def fold_counts(self, before: float = INF) -> None:
        """Move the arrival and finish times before `before` into their intervals' rows: the
        counts, and the in-system integral's parts (each arrival adds the time to its
        interval's end, each finish takes it back; the engine adds the requests present at
        the interval's start when it writes the row). Called per batch, not per request."""
        size = self.interval_s
        for times, field, sign in (
            (self.arrived_at, ARRIVED, 1.0),
            (self.finished_at, FINISHED, -1.0),
        ):
            n = bisect_left(times, before)
            i = 0
            while i < n:
                iv = int(times[i] // size)
                end = (iv + 1) * size
                j = bisect_left(times, end, i, n)
                row = self._row(iv)
                row[field] += j - i
                row[IN_SYSTEM] += sign * ((j - i) * end - sum(times[i:j]))
                i = j
            del times[:n]

    def _account_step(self, start: float, end: float, prefill: int, kv_blocks: int) -> None:
        d = self.n_dec
        # GPU time by token share: chunks directly, decoders through the accumulator.
        share = (end - start) / (prefill + d)
        for seq, n in self.chunks:
            seq.prefill_s += n * share
        if self.seg_d:
            self.gpu_acc += (self.seg_end - self.seg_start) / self.seg_d
            self.seg_d = 0
        if d:
            self.gpu_acc += share
        size = self.interval_s
        iv = int(start // size)
        row = self.cur_row if iv == self.cur_iv else self._row(iv)
        row[STEPS] += 1
        batch = d + len(self.chunks)
        row[BATCH_SUM] += batch
        if batch > row[BATCH_MAX]:
            row[BATCH_MAX] = batch
        row[PREFILL] += prefill
        row[DECODE] += self.n_gen
        self.tokens_left -= self.n_gen
        if kv_blocks > row[KV_PEAK]:
            row[KV_PEAK] = kv_blocks
        if end <= (iv + 1) * size:  # the usual case: the step lies within one interval
            row[BUSY] += end - start
        else:
            self._busy(iv, start, end)

    def _busy(self, iv: int, start: float, end: float) -> None:
        size = self.interval_s
        while True:
            edge = (iv + 1) * size
            if end <= edge:
                self._row(iv)[BUSY] += end - start
                return
            self._row(iv)[BUSY] += edge - start
            start = edge
            iv += 1

    def _account_run(self, s0: int, k: int) -> None:
        """Account k decode-only steps starting at step s0, split by interval of step start."""
        d = self.n_dec
        gen = self.n_gen
        kv = self.kv
        size = self.interval_s
        start = self.t_start
        end = self.run_end
        iv = int(start // size)
        self.tokens_left -= gen * k
        if end <= (iv + 1) * size:  # the usual case: the run lies within one interval
            row = self.cur_row if iv == self.cur_iv else self._row(iv)
            row[BUSY] += end - start
            row[STEPS] += k
            row[BATCH_SUM] += k * d
            if d > row[BATCH_MAX]:
                row[BATCH_MAX] = d
            row[DECODE] += k * gen
            peak = kv.other_blocks + kv.decoder_blocks(s0 + k)
            if peak > row[KV_PEAK]:
                row[KV_PEAK] = peak
            return
        done = 0
        while done < k:
            edge = (iv + 1) * size
            # Steps of this interval: those starting before its edge.
            upto = k if end <= edge else min(k, self._first_end_at(edge)[0] - s0 + 1)
            steps = upto - done
            if steps > 0:
                row = self._row(iv)
                row[STEPS] += steps
                row[BATCH_SUM] += steps * d
                if d > row[BATCH_MAX]:
                    row[BATCH_MAX] = d
                row[DECODE] += steps * gen
                peak = kv.other_blocks + kv.decoder_blocks(s0 + upto)
                if peak > row[KV_PEAK]:
                    row[KV_PEAK] = peak
                done = upto
            iv += 1
        self._busy(int(start // size), start, end)

    def busy_since(self) -> float:
        """Start of the step or run in flight (inf when idle): accounting is final before it."""
        return self.t_start if self.state != IDLE else float("inf")
