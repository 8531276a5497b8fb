"""The request's vocabulary: `Seq` (one request inside the fleet), its `Status`, and the
fields of the request record that `records/requests.py` writes.

A request's status moves WAITING -> RUNNING -> FINISHED along the normal path (back to WAITING
when preempted). The gateway may hold it DEFERRED first, and it may end without being served:
TOO_LONG (its prompt and output cannot fit an empty KV cache), RATE_LIMITED (refused by a token
bucket, after its retries), EXPIRED (a deferred tier's deadline passed) or TIMED_OUT (its client
gave up: the tier's `client_timeout_s`, replay/timeouts.py). Between the router and the engine's
queue (the engine's frontend, `frontend_in_ms`) it is ROUTING. Only the five ending statuses
reach requests.parquet.
"""

from __future__ import annotations

from enum import StrEnum

INF = float("inf")


class Status(StrEnum):
    """Where a request is. Members are strings, so records and comparisons use them as is."""

    WAITING = "waiting"  # queued at the gateway or a replica, or preempted
    DEFERRED = "deferred"  # held at the gateway until its pools have headroom
    RUNNING = "running"  # some of its KV is (being) computed on a replica
    FINISHED = "finished"
    TOO_LONG = "too_long"
    RATE_LIMITED = "rate_limited"
    EXPIRED = "expired"
    TIMED_OUT = "timed_out"  # its client disconnected first; the engine aborted it
    ROUTING = "routing"  # routed, in the engine's frontend on its way to the queue


# The members as module names too, for the hot paths: in Python 3.11 `Status.FINISHED` is a
# slow class-attribute lookup (1 us, 12x a global's; a replay sets 3 statuses per request).
WAITING, DEFERRED, RUNNING, FINISHED, TOO_LONG, RATE_LIMITED, EXPIRED, TIMED_OUT, ROUTING = Status
# The statuses a request ends with.
ENDED = frozenset((FINISHED, TOO_LONG, RATE_LIMITED, EXPIRED, TIMED_OUT))

# The Seq attributes a request record is built from, in the order the writer reads them.
RECORD_FIELDS = (
    "request_id",
    "tenant",
    "tier",
    "replica",
    "arrival_s",
    "routed_s",
    "start_s",
    "first_token_s",
    "finish_s",
    "prompt_tokens",
    "output_tokens",
    "cached_tokens",
    "preemptions",
    "status",
    "attempts",
    "prefill_s",
    "decode_s",
)


class Seq:
    """A request inside the fleet: its trace fields, its progress and what the records need.

    `tier` is the scenario tier it is served and billed as (an unknown trace tier is the
    default tier from the moment it enters), and `priority` that tier's, negated: the batchers
    serve lower values first."""

    __slots__ = (
        "row",
        "request_id",
        "tenant",
        "tier",
        "session_id",
        "arrival_s",
        "routed_s",
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
        "timeout_at",
        "hashes",
        "held",
        "registered",
        "cached_tokens",
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
        hashes: list[int] | None = None,
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
        self.routed_s = None  # when the gateway sent it to a replica (None: it never did)
        self.start_s = None  # first step that computed any of it
        self.first_token_s = None
        self.finish_s = None
        self.preemptions = 0
        self.replica = -1
        self.status = WAITING
        self.prefill_s = 0.0  # replica-seconds of prefill steps, by token share
        self.decode_s = 0.0  # replica-seconds of decode tokens, by token share
        self.a_join = 0.0  # the replica's decode accumulator when this joined decoding
        self.attempts = 1  # 1 + client retries after rate limiting or a timeout
        self.deadline_at = INF  # deferred tiers: finishing later makes it EXPIRED
        self.timeout_at = INF  # when its client gives up (its tier's client_timeout_s)
        self.hashes = hashes  # the trace's prefix block ids (None: none given)
        self.held: list = []  # prefix-cache groups it holds (replay/prefix.py)
        self.registered = 0  # its engine blocks [0, registered) are cached under a key
        self.cached_tokens = 0  # prompt tokens its first admission found in the prefix cache
