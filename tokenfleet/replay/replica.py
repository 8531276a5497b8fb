"""One inference server: its queue, its running batch, its KV cache, and its clock.

A replica runs one step (one forward pass of a mixed batch) at a time. Its batcher picks each
step's prefill chunks; every decoding sequence adds one token per step. When a step holds only
decodes, nothing can change the batch until a sequence finishes, the cache runs out of blocks or
a request arrives, so the replica advances over that whole *run* of steps at once: the durations
come from StepTime for contexts that grow by D tokens per step, and are priced lazily: a run's
likely length at its start, then ahead by doubling (pricing.py), in one StepTime.decode_times
call each, so the work done tracks events, not tokens. An arrival routed here cuts the run at
the first step end at or after it. In step-by-step mode every run is one step long; both modes
take the same decisions, so they write the same records.

GPU time is attributed to requests by token share: a step of duration t with T tokens (prefill
chunk tokens plus one per decoding sequence) gives each token t / T. Decoders are charged
through one accumulator per replica, advanced once per *segment* (a maximal stretch of
decode-only steps with the same batch), so the charge is O(1) per run and identical whether
the segment was advanced step by step or as runs.
"""

from __future__ import annotations

from bisect import bisect_left
from heapq import heappop, heappush

from tokenfleet.replay.kvcache import KVCache
from tokenfleet.replay.pricing import RunPricer

IDLE, STEP, RUN = 0, 1, 2
INF = float("inf")
# Steps priced when a run starts: twice what runs here have lasted lately, at least this many
# (an arrival may cut the run short; the pool's pricer prices more on demand).
_FIRST_CHUNK_STEPS = 16
# Timeline accumulator fields, in order (see metrics.TIMELINE_COLUMNS).
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
    OUTPUT,
    BILLED_EXTRA,
) = range(12)


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
        "decode_times",
        "pricer",
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
        "run_times",
        "run_s0",
        "run_n_max",
        "run_ctx0",
        "version",
        "outstanding",
        "tokens_left",
        "finished",
        "hold_batch",
        "interval_s",
        "acc",
        "in_sys_s",
        "cur_iv",
        "cur_row",
        "replan",
        "run_hint",
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
        pricer: RunPricer | None = None,
    ) -> None:
        self.index = index
        self.pool = pool
        self.kv = kv
        self.batcher = batcher
        self.step_s = step_time.step_s
        self.pricer = pricer or RunPricer(step_time)
        self.decode_times = self.pricer.decode_times
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
        self.run_times: list[float] = []
        self.run_s0 = 0
        self.run_n_max = 0
        self.run_ctx0 = 0
        self.version = 0
        self.outstanding = outstanding  # shared per-fleet list: requests queued or running
        self.tokens_left = 0  # prompt + output tokens not yet generated, over outstanding
        self.finished = finished  # shared sink of finished requests
        self.hold_batch = batcher.holds_batch
        self.interval_s = interval_s
        self.acc: dict[int, list] = {}  # timeline accumulators by interval number
        self.in_sys_s = 0.0  # time up to which the in-system integral is accounted
        self.cur_iv = -1  # the interval whose accumulator was used last, and that row
        self.cur_row: list = []
        # Set (by a preemption, or by a batcher) when the next step must be chosen afresh even
        # if this one holds only decodes: vLLM admits nothing in a step that preempted.
        self.replan = False
        self.run_hint = 16.0  # recent run length in steps (sizes the first chunk priced)
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
        self._in_system(now, 1)
        self.tokens_left += seq.prompt_tokens + seq.output_tokens
        self.batcher.enqueue(self.waiting, seq)
        state = self.state
        if state == IDLE:
            # Start at `now`, after every other arrival at the same instant has queued.
            self.version += 1
            return now
        if state == RUN:
            times = self.run_times
            if times[-1] < now and len(times) < self.run_n_max:
                self._extend(now)
            k = bisect_left(times, now) + 1
            if k < len(times):
                del times[k:]
            self.run_n_max = k
            self.version += 1
            return times[k - 1]
        return None

    def on_event(self, now: float) -> float | None:
        """The replica's event fired at `now`: a step or run ended, or a wake-up. Next time."""
        state = self.state
        if state == RUN:
            times = self.run_times
            last = times[-1]
            if now < last:
                return last  # a checkpoint overtaken by an earlier extension
            k = len(times)
            if k < self.run_n_max:
                self._extend()
                return times[-1]
            # The run's k steps happened: account them and end the last one.
            s0 = self.run_s0
            self.run_hint += (k - self.run_hint) * 0.25
            d = self.n_dec
            if self.seg_d == d and self.seg_end == self.t_start:
                self.seg_end = last  # the segment goes on
            else:
                if self.seg_d:
                    self.gpu_acc += (self.seg_end - self.seg_start) / self.seg_d
                self.seg_start = self.t_start
                self.seg_end = last
                self.seg_d = d
            self._account_run(s0, k, times)
            self.step_no = s0 + k - 1
            self._end_step(last)
        elif state == STEP:
            self._account_step(self.t_start, now, self.step_prefill, self.step_kv)
            self._end_step(now)
        return self._plan(now)

    # ------------------------------------------------------------------ views for balancers

    def steps_done_at(self, now: float) -> int:
        """Steps of the current run that ended strictly before `now` (0 outside a run)."""
        if self.state != RUN:
            return 0
        times = self.run_times
        if times[-1] < now and len(times) < self.run_n_max:
            self._extend(now)
        return bisect_left(times, now)

    def kv_used_at(self, now: float) -> float:
        """Fraction of the KV cache in use at `now`."""
        kv = self.kv
        return kv.used_blocks(self.step_no + self.steps_done_at(now)) / kv.capacity_blocks

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
        seq.generated = seq.output_tokens - 1 - (seq.fin_step - s)
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
        """Choose the step starting at `now`; return when the replica next needs the engine."""
        self.chunks = []
        self.replan = False
        wake = self.batcher.schedule(self, now)
        chunks = self.chunks
        d = self.n_dec
        s = self.step_no
        if not chunks:
            if d == 0:
                self.state = IDLE
                return wake
            # Decodes only: nothing changes the batch until a sequence finishes, the cache is
            # full or a request arrives, so this step opens a run.
            fin_heap = self.fin_heap
            while fin_heap[0][2].fin_step != fin_heap[0][0]:
                heappop(fin_heap)  # left behind by a preemption
            n = 1 if self.step_by_step or self.replan else fin_heap[0][0] - s + 1
            kv = self.kv
            ph = kv.n_phased
            if n > 1 and ph:
                # Cheap bound first: each decoder holds at most q + (s + n) // B + 2 blocks.
                bound = kv.q_sum + ph * ((s + n) // kv.block_size + 2)
                if bound > kv.capacity_blocks - kv.other_blocks:
                    n = kv.steps_until_full(s, n)
            self.state = RUN
            self.t_start = now
            self.run_s0 = s
            self.run_n_max = n
            self.run_ctx0 = self.off_sum + d * s + d
            self.run_times = times = []
            self._extend()
            return times[-1]
        prefill = 0
        pairs = 0.0
        for seq, n in chunks:
            prefill += n
            pairs += n * (seq.cached + (n + 1) / 2)
        ctx = self.off_sum + d * s + d if d else 0
        self.state = STEP
        self.t_start = now
        self.step_prefill = prefill
        kv = self.kv
        self.step_kv = kv.other_blocks + kv.decoder_blocks(s + 1)
        return now + self.step_s(prefill, pairs, d, ctx)

    def _extend(self, until: float | None = None) -> None:
        """Price more steps of the run: up to the first step end >= `until` when a caller needs
        that time (an arrival, a balancer's look); otherwise, at a run's start, twice as many
        steps as runs here have lasted lately, then ahead through the pool's pricer."""
        times = self.run_times
        k = len(times)
        if k and until is None:
            self.pricer.top_up(self, times[-1], 0.0)
            return
        if until is None:
            m = min(self.run_n_max, max(_FIRST_CHUNK_STEPS, int(2 * self.run_hint)))
            until = INF
        else:
            m = self.run_n_max - k
        d = self.n_dec
        start = times[-1] if k else self.t_start
        times += self.decode_times(d, self.run_ctx0 + d * k, m, start, until)

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
                self.tokens_left -= 1
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
                self._row(int(self.t_start // self.interval_s))[OUTPUT] += sampled
        fin_heap = self.fin_heap
        while fin_heap and fin_heap[0][0] == s:
            seq = heappop(fin_heap)[2]
            if seq.fin_step != s:
                continue
            seq.generated = seq.output_tokens
            self.n_gen -= 1
            seq.decode_s += self._decode_acc() - seq.a_join
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
        self._in_system(now, -1)
        row = self._row(int(now // self.interval_s))
        row[FINISHED] += 1
        if now > seq.deadline_at:
            seq.status = "expired"
        self.finished.append(seq)

    # ------------------------------------------------------------------ timeline

    def _row(self, iv: int) -> list:
        if iv == self.cur_iv:
            return self.cur_row
        row = self.acc.get(iv)
        if row is None:
            row = self.acc[iv] = new_row()
        self.cur_iv = iv
        self.cur_row = row
        return row

    def _in_system(self, now: float, change: int) -> None:
        """Integrate the number of requests here over time, then apply `change` at `now`."""
        out = self.outstanding
        n = out[self.index]
        self.settle(now)
        out[self.index] = n + change
        for view, i in self.views:
            view[i] += change
        if change > 0:
            self._row(int(now // self.interval_s))[ARRIVED] += 1

    def settle(self, now: float) -> None:
        """Account the in-system integral up to `now`."""
        last = self.in_sys_s
        if now <= last:
            return
        n = self.outstanding[self.index]
        if n:
            size = self.interval_s
            iv = int(last // size)
            while True:
                edge = (iv + 1) * size
                if now <= edge:
                    self._row(iv)[IN_SYSTEM] += n * (now - last)
                    break
                self._row(iv)[IN_SYSTEM] += n * (edge - last)
                last = edge
                iv += 1
        self.in_sys_s = now

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
        row = self._row(iv)
        row[STEPS] += 1
        batch = d + len(self.chunks)
        row[BATCH_SUM] += batch
        if batch > row[BATCH_MAX]:
            row[BATCH_MAX] = batch
        row[PREFILL] += prefill
        row[DECODE] += self.n_gen
        row[OUTPUT] += self.n_gen
        self.tokens_left -= self.n_gen
        if kv_blocks > row[KV_PEAK]:
            row[KV_PEAK] = kv_blocks
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

    def _account_run(self, s0: int, k: int, times: list[float]) -> None:
        """Account k decode-only steps starting at step s0, split by interval of step start."""
        d = self.n_dec
        gen = self.n_gen
        kv = self.kv
        size = self.interval_s
        start = self.t_start
        end = times[k - 1]
        iv = int(start // size)
        self.tokens_left -= gen * k
        if end <= (iv + 1) * size:  # the usual case: the run lies within one interval
            row = self._row(iv)
            row[BUSY] += end - start
            row[STEPS] += k
            row[BATCH_SUM] += k * d
            if d > row[BATCH_MAX]:
                row[BATCH_MAX] = d
            row[DECODE] += k * gen
            row[OUTPUT] += k * gen
            peak = kv.other_blocks + kv.decoder_blocks(s0 + k)
            if peak > row[KV_PEAK]:
                row[KV_PEAK] = peak
            return
        done = 0
        while done < k:
            edge = (iv + 1) * size
            # Steps of this interval: those starting before its edge.
            upto = k if end <= edge else min(k, bisect_left(times, edge, done, k) + 1)
            steps = upto - done
            if steps > 0:
                row = self._row(iv)
                row[STEPS] += steps
                row[BATCH_SUM] += steps * d
                if d > row[BATCH_MAX]:
                    row[BATCH_MAX] = d
                row[DECODE] += steps * gen
                row[OUTPUT] += steps * gen
                peak = kv.other_blocks + kv.decoder_blocks(s0 + upto)
                if peak > row[KV_PEAK]:
                    row[KV_PEAK] = peak
                done = upto
            iv += 1
        self._busy(int(start // size), start, end)

    def busy_since(self) -> float:
        """Start of the step or run in flight (inf when idle): accounting is final before it."""
        return self.t_start if self.state != IDLE else float("inf")
