"""Client timeouts: clients that wait `client_timeout_s` (their tier's) for a request's last
token, then disconnect, and the engine aborting what was left of the request.

Real clients give up: inference-perf's aiohttp session runs under aiohttp's default total
timeout of 300 s (`aiohttp.ClientTimeout(total=5 * 60)`; `request_timeout` unset in its
`load` config), the OpenAI Python SDK's default is 600 s. A request whose client gave up ends
`timed_out`, with `finish_s` the moment the client gave up (`arrival_s + client_timeout_s`),
and leaves the fleet from wherever it is:

- held at the gateway (its latency, a retry's back-off, deferral): dropped there;
- in the engine's frontend (`ROUTING`, `frontend_in_ms`): it never reaches the queue;
- on a replica: vLLM's API server notices the disconnect and aborts the request
  (`Scheduler.finish_requests(..., RequestStatus.FINISHED_ABORTED)`, vllm/v1/core/sched/
  scheduler.py: "the API server can abort a request when the client disconnects"). The engine
  core takes aborts from its input queue between steps (`EngineCore.run_busy_loop`:
  `_process_input_queue`, then the step; vllm/v1/engine/core.py), so the request leaves at the
  first step end at or after its timeout (`Replica.abort`): out of the waiting queue, or out of
  the running batch with its KV blocks freed, its computed full blocks staying in the prefix
  cache as `KVCacheManager.free` leaves them. The `sglang` batcher does the same; SGLang
  itself deletes a waiting request at once and lets a running one (`req.to_abort`) run one
  more decode pass before it is cleaned up (`Scheduler.abort_request`, sglang/srt/managers/
  scheduler.py), one step later than here. Request-level (`static`) batches keep a running
  request to the batch's end.

A request the engine finished but whose last token reaches the client after the timeout (the
frontend's lag) is timed out too. A timed-out request keeps the GPU time it used (its cost)
and pays nothing; its latencies are left out of the summary's percentiles, as a client's
report leaves out its failures (so a saturated fleet's E2E stays under the timeout).

Clients retry timeouts as they retry rate limits, under `[gateway.retries]` (one budget of
`max_retries` for both, as the OpenAI SDK's `max_retries` covers both): after a jittered
back-off from the moment it gave up (not before the engine dropped the attempt), the client
sends the request again, through the gateway's limits, with a new timeout of its own. The
retry is a new request to the fleet (a new `Seq`, the old one forgotten, so nothing left of
the first attempt can touch it) that carries the GPU time of every attempt and counts them in
`attempts`; its record keeps the first send as `arrival_s`, so TTFT and E2E are what the user
waited, retries included. Under overload, retries add load where there is none to spare.

Each timeout is a fixed time after arrival, and requests are watched in arrival order, so the
requests watched under one timeout expire in the order they were watched: one FIFO and one
timer per timeout, not a heap entry per request (at 10^4 requests/s and 300 s that would be
3 million entries).
"""

from __future__ import annotations

import math
from collections import deque

from tokenfleet.replay.request import ENDED, ROUTING, Seq


class ClientTimeouts:
    """The watched requests of one replay; the gateway watches each as it arrives."""

    def __init__(self, events, replicas: list, gateway, ended: list) -> None:
        self.events = events
        self.replicas = replicas
        self.gateway = gateway
        self.ended = ended
        self.queues: dict[float, deque] = {}  # timeout -> watched requests, in arrival order
        for rep in replicas:
            rep.timed_out = self.timed_out

    def watch(self, seq: Seq, timeout_s: float) -> None:
        """`seq`'s client gives up `timeout_s` after it arrived (`timeout_s` > 0)."""
        seq.timeout_at = seq.arrival_s + timeout_s
        queue = self.queues.get(timeout_s)
        if queue is None:
            queue = self.queues[timeout_s] = deque()
        if not queue:
            self.events.push_timer(seq.timeout_at, self._expire, queue)
        queue.append(seq)

    def _expire(self, now: float, queue: deque) -> None:
        while queue and queue[0].timeout_at <= now:
            self._give_up(queue.popleft(), now)
        if queue:
            self.events.push_timer(queue[0].timeout_at, self._expire, queue)

    def _expire_retry(self, now: float, seq: Seq) -> None:
        """A retry's own timeout (a timer each: retries are not in arrival order)."""
        self._give_up(seq, now)

    def _give_up(self, seq: Seq, now: float) -> None:
        status = seq.status
        if status in ENDED:  # it ended first
            return
        if seq.routed_s is None:  # still at the gateway
            self.gateway.abandon(seq)
            self.timed_out(seq, now)
            return
        rep = self.replicas[seq.replica]
        if status is ROUTING:
            rep.drop_routing(seq, now)
            return
        nt = rep.abort(seq, now)
        if nt is not None:
            self.events.push_replica(nt, rep)

    def timed_out(self, seq: Seq, now: float) -> None:
        """`seq` has left the fleet timed out (at `now`, the engine having dropped it): it
        ends, or its client sends it again after a back-off (the module docstring)."""
        gateway = self.gateway
        retry = gateway.retry
        if seq.attempts > retry.max_retries:
            self.ended.append(seq)
            return
        again = Seq(
            seq.row, seq.arrival_s, seq.prompt_tokens, seq.output_tokens, seq.request_id,
            seq.tenant, seq.tier, seq.session_id, seq.priority, seq.hashes,
        )  # fmt: skip
        again.attempts = seq.attempts + 1
        again.prefill_s = seq.prefill_s
        again.decode_s = seq.decode_s
        again.preemptions = seq.preemptions
        again.deadline_at = seq.deadline_at
        at = seq.timeout_at + retry.backoff_s(seq.attempts, gateway.rng)
        if at <= now:
            # Strictly later than `now`: this may run inside a replica's event, after which
            # the loop replaces the heap's top (loop.simulate); a timer at `now` would be that
            # top, and lost.
            at = math.nextafter(now, math.inf)
        again.timeout_at = at + gateway.client_timeouts[seq.tier]
        gateway.retries += 1
        gateway.pending += 1
        self.events.push_timer(at, gateway.resend, again)
        self.events.push_timer(again.timeout_at, self._expire_retry, again)
