"""Synthetic traces: arrival processes and length distributions with known parameters.

Arrivals are a unit-rate renewal process (exponential gaps for Poisson, gamma gaps for a given
coefficient of variation) mapped through the inverse of the cumulative rate curve: a constant
rate, or a diurnal cosine with a peak/trough ratio and a peak hour. Everything is drawn in
fixed-size chunks from seeded generators, one independent stream per quantity, so memory is
bounded, the same seed gives the same bytes, and changing the tenant shares does not move the
arrivals.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from tokenfleet.atomic import refuse_clobber
from tokenfleet.errors import UserError
from tokenfleet.traces.paths import require_trace_suffix
from tokenfleet.traces.reader import read_trace_batches
from tokenfleet.traces.schema import INT32_MAX, PREFIX_BLOCK_SIZE_KEY
from tokenfleet.traces.writer import TraceWriter

CHUNK_ROWS = 1 << 20
SESSION_CHUNK = 1 << 16  # sessions per chunk: each holds several turns and their hashes
DAY_S = 86_400.0
SYNTH_METADATA_KEY = b"tokenfleet.synth"
# Defaults resemble the Azure 2023 conversation trace: mean rate 5.53 req/s; prompt mean 1,155
# and median 1,020 tokens (lognormal sigma 0.5); output median 129 and, after the trace's cap
# of 1,000 tokens, mean 211 (lognormal mean 229 before the cap, sigma 1.07).
DEFAULT_RATE_RPS = 5.5
DEFAULT_PROMPT = "lognormal:1155,0.5"
DEFAULT_OUTPUT = "lognormal:229,1.07,1000"
ARRIVALS = ("poisson", "gamma", "diurnal")
DEFAULT_THINK = "exponential:30"
DEFAULT_BLOCK_TOKENS = 512  # Mooncake's block size
# Settings that only a trace with prefixes or sessions stores, so that a plain trace's
# metadata, and so its bytes, stay those of the versions before them.
PREFIX_SETTINGS = (
    "system_prompts",
    "system_prompt_tokens",
    "prefix_zipf",
    "turns",
    "think_time_s",
    "prefix_block_tokens",
)


@dataclass(frozen=True)
class LengthDist:
    """Token lengths: lognormal (mean tokens, sigma of the log), fixed, or uniform (inclusive).

    `max_tokens` caps lognormal draws (the mean is the one before the cap); every draw is
    rounded to a whole number of tokens and is at least 1.
    """

    kind: str
    params: tuple[float, ...]
    max_tokens: int | None = None

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "fixed":
            return np.full(n, int(self.params[0]), dtype=np.int32)
        if self.kind == "uniform":
            low, high = (int(p) for p in self.params)
            return rng.integers(low, high + 1, size=n, dtype=np.int32)
        mean, sigma = self.params
        values = np.rint(rng.lognormal(math.log(mean) - sigma**2 / 2, sigma, size=n))
        return np.clip(values, 1, self.max_tokens or INT32_MAX).astype(np.int32)

    @property
    def mean(self) -> float:
        """The mean before any cap: an estimate good enough to size chunks by."""
        return sum(self.params) / len(self.params) if self.kind == "uniform" else self.params[0]


@dataclass(frozen=True)
class GapDist:
    """Seconds between turns: fixed, uniform, exponential (mean) or lognormal (mean, sigma)."""

    kind: str
    params: tuple[float, ...]

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "fixed":
            return np.full(n, self.params[0])
        if self.kind == "uniform":
            return rng.uniform(*self.params, size=n)
        if self.kind == "exponential":
            return rng.exponential(self.params[0], size=n)
        mean, sigma = self.params
        return rng.lognormal(math.log(mean) - sigma**2 / 2, sigma, size=n)


def parse_seconds(text: str, option: str) -> GapDist:
    """ "fixed:S", "uniform:LOW,HIGH", "exponential:MEAN" or "lognormal:MEAN,SIGMA" (s >= 0)."""
    kind, _, rest = text.strip().partition(":")
    usage = (
        f"{option} {text!r}: expected fixed:S, uniform:LOW,HIGH, exponential:MEAN or "
        "lognormal:MEAN,SIGMA (seconds >= 0)"
    )
    try:
        params = tuple(float(p) for p in rest.split(",")) if rest.strip() else ()
    except ValueError:
        raise UserError(usage) from None
    arity = {"fixed": 1, "uniform": 2, "exponential": 1, "lognormal": 2}
    if (
        arity.get(kind) != len(params)
        or not all(math.isfinite(p) and p >= 0 for p in params)
        or (kind == "uniform" and params[0] > params[1])
        or (kind == "lognormal" and params[0] == 0)
    ):
        raise UserError(usage)
    return GapDist(kind, params)


def parse_length(text: str, option: str) -> LengthDist:
    """ "lognormal:MEAN,SIGMA[,MAX]", "fixed:N" or "uniform:LOW,HIGH" (tokens)."""
    kind, _, rest = text.strip().partition(":")
    usage = f"{option} {text!r}: expected lognormal:MEAN,SIGMA[,MAX], fixed:N or uniform:LOW,HIGH"
    try:
        params = tuple(float(p) for p in rest.split(",")) if rest.strip() else ()
    except ValueError:
        raise UserError(usage) from None
    if not all(math.isfinite(p) for p in params):
        raise UserError(usage)
    if any(p > INT32_MAX for p in params):
        raise UserError(f"{option} {text!r}: token counts must be <= {INT32_MAX} (int32)")
    if kind == "lognormal" and len(params) in (2, 3):
        if params[0] < 1 or params[1] < 0:
            raise UserError(f"{option} {text!r}: the mean must be >= 1 and sigma >= 0")
        if len(params) == 3 and params[2] < 1:
            raise UserError(f"{option} {text!r}: the cap MAX must be >= 1 token")
        return LengthDist(kind, params[:2], int(params[2]) if len(params) == 3 else None)
    if kind == "fixed" and len(params) == 1 and params[0] >= 1 and params[0] == int(params[0]):
        return LengthDist(kind, params)
    if kind == "uniform" and len(params) == 2 and 1 <= params[0] <= params[1]:
        if params != tuple(int(p) for p in params):
            raise UserError(f"{option} {text!r}: LOW and HIGH must be whole numbers of tokens")
        return LengthDist(kind, params)
    raise UserError(usage)


def parse_shares(text: str, option: str) -> dict[str, float]:
    """ "a=0.6,b=0.4" (normalised to sum to 1), or an integer N for N equal shares."""
    text = text.strip()
    if text.isdigit():
        n = int(text)
        if n < 1:
            raise UserError(f"{option} {text}: expected at least one")
        width = len(str(n - 1))
        return {f"{option.lstrip('-').rstrip('s')}-{i:0{width}d}": 1.0 / n for i in range(n)}
    shares: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            share = float(value)
        except ValueError:
            share = -1.0
        if not sep or not name.strip() or not (math.isfinite(share) and share > 0):
            raise UserError(f"{option}: {item!r} is not NAME=SHARE with a share > 0 (a=0.7,b=0.3)")
        if name.strip() in shares:
            raise UserError(f"{option}: {name.strip()!r} is given twice; give each name once")
        shares[name.strip()] = share
    if not shares:
        raise UserError(f"{option}: expected NAME=SHARE pairs like a=0.7,b=0.3, or a count")
    total = sum(shares.values())
    return {name: share / total for name, share in shares.items()}


@dataclass(frozen=True)
class SynthSpec:
    """Everything that defines a synthetic trace; stored in the file's metadata as provenance."""

    requests: int | None = None
    duration_s: float | None = None
    arrivals: str = "poisson"
    rate_rps: float = DEFAULT_RATE_RPS
    cv: float | None = None
    peak_trough: float = 3.0
    peak_hour: float = 14.0
    prompt: str | None = None
    output: str | None = None
    lengths_from: str | None = None
    tenants: dict[str, float] = field(default_factory=dict)
    tiers: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    system_prompts: int | None = None
    system_prompt_tokens: int | None = None
    prefix_zipf: float | None = None
    turns: str | None = None
    think_time_s: str | None = None
    prefix_block_tokens: int | None = None

    @property
    def writes_prefixes(self) -> bool:
        """Whether the trace gets prefix_hashes: it has system prompts or sessions."""
        return self.system_prompts is not None or self.turns is not None

    def checked(self) -> SynthSpec:
        """Refuse contradictory or out-of-range settings in one line each."""
        if (self.requests is None) == (self.duration_s is None):
            raise UserError("give exactly one of --requests N, --duration-s S or --days D")
        if self.requests is not None and self.requests < 1:
            raise UserError(f"--requests {self.requests}: expected at least 1")
        if self.duration_s is not None and not (0 < self.duration_s < math.inf):
            raise UserError(f"--duration-s {self.duration_s}: expected seconds > 0")
        if self.arrivals not in ARRIVALS:
            raise UserError(f"--arrivals {self.arrivals!r}: expected one of {', '.join(ARRIVALS)}")
        if not (0 < self.rate_rps < math.inf):
            raise UserError(f"--rate {self.rate_rps}: expected requests per second > 0")
        if self.cv is not None and not (0 < self.cv < math.inf):
            raise UserError(f"--cv {self.cv}: expected a coefficient of variation > 0")
        if self.arrivals == "poisson" and self.cv not in (None, 1.0):
            raise UserError(f"--cv {self.cv} needs --arrivals gamma (Poisson has CV 1)")
        if not (1 <= self.peak_trough < math.inf):
            raise UserError(f"--peak-trough {self.peak_trough}: expected a ratio >= 1")
        if not (0 <= self.peak_hour < 24):
            raise UserError(f"--peak-hour {self.peak_hour}: expected an hour in [0, 24)")
        if self.seed < 0:
            raise UserError(f"--seed {self.seed}: expected an integer >= 0")
        if self.lengths_from and (self.prompt or self.output):
            raise UserError("--lengths-from resamples both lengths; drop --prompt and --output")
        parse_length(self.prompt or DEFAULT_PROMPT, "--prompt")
        parse_length(self.output or DEFAULT_OUTPUT, "--output")
        if (self.system_prompts is None) != (self.system_prompt_tokens is None):
            raise UserError("give --system-prompts N and --system-prompt-tokens L together")
        if self.system_prompts is not None and self.system_prompts < 1:
            raise UserError(f"--system-prompts {self.system_prompts}: expected at least 1")
        if self.system_prompt_tokens is not None and not (
            1 <= self.system_prompt_tokens <= INT32_MAX
        ):
            raise UserError(
                f"--system-prompt-tokens {self.system_prompt_tokens}: expected tokens >= 1"
            )
        if self.prefix_zipf is not None:
            if self.system_prompts is None:
                raise UserError("--prefix-zipf sets system prompt popularity; add --system-prompts")
            if not (0 <= self.prefix_zipf < math.inf):
                raise UserError(f"--prefix-zipf {self.prefix_zipf}: expected an exponent >= 0")
        if self.think_time_s is not None and self.turns is None:
            raise UserError("--think-time-s is the gap between turns; add --turns")
        if self.turns is not None:
            parse_length(self.turns, "--turns")
        parse_seconds(self.think_time_s or DEFAULT_THINK, "--think-time-s")
        if self.prefix_block_tokens is not None:
            if not self.writes_prefixes:
                raise UserError(
                    "--prefix-block-tokens sizes prefix_hashes; add --system-prompts or --turns"
                )
            if not (1 <= self.prefix_block_tokens <= INT32_MAX):
                raise UserError(
                    f"--prefix-block-tokens {self.prefix_block_tokens}: expected tokens >= 1"
                )
        if not self.writes_prefixes:
            return self
        return replace(
            self,
            prefix_zipf=1.0 if self.prefix_zipf is None else self.prefix_zipf,
            think_time_s=(self.think_time_s or DEFAULT_THINK) if self.turns else None,
            prefix_block_tokens=self.prefix_block_tokens or DEFAULT_BLOCK_TOKENS,
        )

    @property
    def gap_cv(self) -> float:
        return self.cv if self.cv is not None else (2.0 if self.arrivals == "gamma" else 1.0)


def synth_trace(
    dst: str | os.PathLike[str], spec: SynthSpec, *, progress: bool = False
) -> dict[str, object]:
    """Write the synthetic trace `spec` describes to `dst`; return its rows and last arrival."""
    spec = spec.checked()
    refuse_clobber(outputs={"DST": dst}, inputs={"--lengths-from": spec.lengths_from})
    require_trace_suffix(dst, "DST")
    resample = _load_lengths(spec.lengths_from) if spec.lengths_from else None
    provenance = asdict(spec) | {"cv": spec.gap_cv}
    metadata = {}
    if spec.writes_prefixes:
        metadata[PREFIX_BLOCK_SIZE_KEY] = str(spec.prefix_block_tokens)
    else:
        provenance = {k: v for k, v in provenance.items() if k not in PREFIX_SETTINGS}
    if not spec.lengths_from:
        provenance |= {
            "prompt": spec.prompt or DEFAULT_PROMPT,
            "output": spec.output or DEFAULT_OUTPUT,
        }
    metadata[SYNTH_METADATA_KEY] = json.dumps(provenance, sort_keys=True)
    rows, last_arrival_s = 0, 0.0
    with (
        TraceWriter(dst, metadata=metadata) as writer,
        tqdm(
            total=spec.requests, unit=" rows", unit_scale=True, disable=not progress, desc="synth"
        ) as bar,
    ):
        for batch in _batches(spec, resample):
            writer.write(batch)
            rows += batch.num_rows
            last_arrival_s = batch.column(0)[-1].as_py()
            bar.update(batch.num_rows)
        if rows == 0:
            raise UserError(
                f"--duration-s {spec.duration_s}: too short for any request at "
                f"{spec.rate_rps} req/s; use a longer duration or a higher --rate"
            )
    return {"destination": str(dst), "rows": rows, "last_arrival_s": last_arrival_s}


def _load_lengths(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The (prompt, output) pairs of an existing trace, resampled jointly to keep correlation."""
    prompts, outputs = [], []
    for batch in read_trace_batches(path, columns=["prompt_tokens", "output_tokens"]):
        prompts.append(batch.column(0).to_numpy())
        outputs.append(batch.column(1).to_numpy())
    return np.concatenate(prompts), np.concatenate(outputs)


class _Starts:
    """Arrival times in seconds, drawn chunk by chunk from the unit-rate renewal process."""

    def __init__(self, spec: SynthSpec, rng: np.random.Generator) -> None:
        self.rng, self.rate_rps, self.cv = rng, spec.rate_rps, spec.gap_cv
        self.warp = _diurnal_inverse(spec) if spec.arrivals == "diurnal" else None
        self.clock = 0.0  # unit-rate time of the last arrival drawn

    def draw(self, n: int) -> np.ndarray:
        if self.cv == 1.0:
            gaps = self.rng.exponential(1.0, size=n)
        else:
            shape = 1.0 / self.cv**2
            gaps = self.rng.standard_gamma(shape, size=n) / shape
        unit_time = self.clock + np.cumsum(gaps)
        self.clock = float(unit_time[-1])
        return self.warp(unit_time) if self.warp else unit_time / self.rate_rps


def _batches(
    spec: SynthSpec, resample: tuple[np.ndarray, np.ndarray] | None
) -> Iterator[pa.RecordBatch]:
    """Sessions (one request each without --turns) drawn in chunks, emitted in arrival order.

    A chunk's session starts are drawn first; every request that arrives by the chunk's last
    start is final (later sessions start later), so it is emitted, and the later turns wait
    for the next chunk. Without --turns nothing waits and the chunks are those of a plain
    request stream.
    """
    arrival_rng, *rngs = (
        np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(8)
    )
    sessions = _Sessions(spec, resample, *rngs)
    starts = _Starts(spec, arrival_rng)
    chunk = CHUNK_ROWS if spec.turns is None else SESSION_CHUNK
    pending: pa.Table | None = None
    done = 0
    while True:
        n = chunk
        if spec.requests is not None:
            n = min(chunk, math.ceil((spec.requests - done) / sessions.mean_turns))
        start_s = starts.draw(n)
        cut = len(start_s)
        if spec.duration_s is not None:
            cut = int(np.searchsorted(start_s, spec.duration_s, "left"))
        table = sessions.requests(start_s[:cut])
        if spec.turns is not None:  # later turns interleave with other sessions' turns
            if pending is not None:
                table = pa.concat_tables([pending, table])
            order = np.argsort(table.column("arrival_s").to_numpy(), kind="stable")
            table = table.take(order)
        last = cut < len(start_s)
        if last:
            arrival = table.column("arrival_s").to_numpy()
            table = table.slice(0, int(np.searchsorted(arrival, spec.duration_s, "left")))
            ready = table.num_rows
        else:  # requests after the last start may still be overtaken by later sessions
            arrival = table.column("arrival_s").to_numpy()
            ready = int(np.searchsorted(arrival, start_s[-1], "right"))
        if spec.requests is not None:
            ready = min(ready, spec.requests - done)
        if ready:
            yield from table.slice(0, ready).combine_chunks().to_batches(max_chunksize=chunk)
        done += ready
        pending = table.slice(ready) if spec.turns is not None else None
        if last or done == spec.requests:
            return


class _Sessions:
    """Turns, lengths, tenants, tiers, system prompts and prefix hashes of new sessions.

    Each quantity has its own random stream, so adding sessions or system prompts does not
    move the lengths, and a trace with one turn per session and no system prompts is the
    plain request stream.

    A session is one growing token stream: the system prompt, then per turn the user's part
    and the model's output. Turn k's prompt is its first P_k tokens, so prefix block i holds
    the same content in every request of the session that has it, and in every session with
    the same system prompt while it lies inside the system prompt. Block ids follow: block i
    inside system prompt s is s * blocks_per_system_prompt + i; any other block gets an id of
    its session's own range. Equal ids therefore mean equal content up to the block's end.
    """

    def __init__(
        self,
        spec: SynthSpec,
        resample: tuple[np.ndarray, np.ndarray] | None,
        prompt_rng: np.random.Generator,
        output_rng: np.random.Generator,
        tenant_rng: np.random.Generator,
        tier_rng: np.random.Generator,
        system_rng: np.random.Generator,
        turns_rng: np.random.Generator,
        think_rng: np.random.Generator,
    ) -> None:
        self.spec, self.resample = spec, resample
        self.prompt_rng, self.output_rng = prompt_rng, output_rng
        self.tenant_rng, self.tier_rng = tenant_rng, tier_rng
        self.system_rng, self.turns_rng, self.think_rng = system_rng, turns_rng, think_rng
        self.prompt_dist = parse_length(spec.prompt or DEFAULT_PROMPT, "--prompt")
        self.output_dist = parse_length(spec.output or DEFAULT_OUTPUT, "--output")
        self.turn_dist = parse_length(spec.turns, "--turns") if spec.turns else None
        self.mean_turns = self.turn_dist.mean if self.turn_dist else 1.0
        self.think_dist = parse_seconds(spec.think_time_s or DEFAULT_THINK, "--think-time-s")
        self.system_tokens = spec.system_prompt_tokens or 0
        self.block = spec.prefix_block_tokens or DEFAULT_BLOCK_TOKENS
        self.system_blocks = self.system_tokens // self.block
        if spec.system_prompts:
            weights = np.arange(1, spec.system_prompts + 1, dtype=np.float64) ** -spec.prefix_zipf
            self.popularity = np.cumsum(weights) / weights.sum()
        self.sessions = 0  # session ids handed out so far
        self.next_block = (spec.system_prompts or 0) * self.system_blocks

    def requests(self, start_s: np.ndarray) -> pa.Table:
        """The requests of sessions starting at `start_s`, in session then turn order."""
        spec, n = self.spec, len(start_s)
        turns = self.turn_dist.sample(self.turns_rng, n) if self.turn_dist else np.ones(n, np.int32)
        total = int(turns.sum())
        first = np.cumsum(turns, dtype=np.int64) - turns
        session = np.repeat(np.arange(n), turns)
        turn = np.arange(total) - np.repeat(first, turns)
        if self.resample is not None:
            picks = self.prompt_rng.integers(0, len(self.resample[0]), size=total)
            user, output = self.resample[0][picks], self.resample[1][picks]
        else:
            user = self.prompt_dist.sample(self.prompt_rng, total)
            output = self.output_dist.sample(self.output_rng, total)
        arrival_s = start_s
        prompt = user
        if self.turn_dist is not None:
            added = user.astype(np.int64)
            added[1:] += np.where(turn[1:] > 0, output[:-1], 0)
            prompt = _within(added, first, turns)
            think = self.think_dist.sample(self.think_rng, total)
            think[first] = 0.0
            arrival_s = np.repeat(start_s, turns) + _within(think, first, turns)
        if self.system_tokens:
            prompt = prompt + self.system_tokens
        if int(np.max(prompt, initial=0)) > INT32_MAX:
            raise UserError(
                f"a session's context grows beyond {INT32_MAX} tokens (int32); "
                "use fewer --turns or shorter --prompt and --output"
            )
        columns = {
            "arrival_s": pa.array(arrival_s, pa.float64()),
            "prompt_tokens": pa.array(prompt, pa.int32()),
            "output_tokens": pa.array(output, pa.int32()),
        }
        for name, rng, shares in (
            ("tenant", self.tenant_rng, spec.tenants),
            ("tier", self.tier_rng, spec.tiers),
        ):
            if shares:
                names = _categorical(rng, shares, n)
                columns[name] = names if self.turn_dist is None else names.take(session)
        if self.turn_dist is not None:
            columns["session_id"] = pa.array(self.sessions + session, pa.int64())
            columns["turn"] = pa.array(turn, pa.int32())
        if spec.writes_prefixes:
            columns["prefix_hashes"] = self._hashes(np.asarray(prompt), session, first, turns)
        self.sessions += n
        return pa.table(columns)

    def _hashes(
        self, prompt: np.ndarray, session: np.ndarray, first: np.ndarray, turns: np.ndarray
    ) -> pa.Array:
        """One id per full block of each prompt (the module docstring of this class says how)."""
        n = len(turns)
        system = np.zeros(n, np.int64)
        if self.spec.system_prompts:
            system = np.searchsorted(self.popularity, self.system_rng.random(n), "right")
            system = np.minimum(system, self.spec.system_prompts - 1)
        full = prompt.astype(np.int64) // self.block
        longest = full[first + turns - 1]  # the last turn has the longest prompt
        own = np.maximum(longest - self.system_blocks, 0)
        base = self.next_block + np.cumsum(own) - own
        self.next_block += int(own.sum())
        offsets = np.zeros(len(full) + 1, np.int64)
        np.cumsum(full, out=offsets[1:])
        index = np.arange(offsets[-1]) - np.repeat(offsets[:-1], full)
        owner = np.repeat(session, full)
        ids = np.where(
            index < self.system_blocks,
            system[owner] * self.system_blocks + index,
            base[owner] + index - self.system_blocks,
        )
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids, pa.int64()))


def _within(values: np.ndarray, first: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at each group (groups are consecutive: first index, size)."""
    total = np.cumsum(values)
    return total - np.repeat(total[first] - values[first], counts)


def _categorical(rng: np.random.Generator, shares: dict[str, float], n: int) -> pa.Array:
    """`n` names drawn with the given shares, built in Arrow (no Python string per row)."""
    cumulative = np.cumsum(list(shares.values()))
    codes = np.minimum(
        np.searchsorted(cumulative / cumulative[-1], rng.random(n), "right"), len(shares) - 1
    )
    names = pa.array(list(shares), pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), names).dictionary_decode()


def _diurnal_inverse(spec: SynthSpec):
    """Map unit-rate time to seconds under rate(t) = r (1 + a cos(w t - theta)).

    With a = (ratio - 1) / (ratio + 1) the peak is `ratio` times the trough and the daily mean
    is r. The cumulative rate is r g(t), g(t) = t + (a / w)(sin(w t - theta) + sin theta), and
    g(t + day) = g(t) + day, so each target is split into whole days and a remainder inverted
    by table lookup plus Newton steps (g' >= 1 - a > 0, so they converge).
    """
    a = (spec.peak_trough - 1) / (spec.peak_trough + 1)
    w = 2 * math.pi / DAY_S
    theta = w * spec.peak_hour * 3600.0
    amp = a / w

    def g(t: np.ndarray) -> np.ndarray:
        return t + amp * (np.sin(w * t - theta) + math.sin(theta))

    grid_t = np.linspace(0.0, DAY_S, 8193)
    grid_g = g(grid_t)
    last = [0.0]  # the previous chunk's last arrival: rounding must never reorder arrivals

    def inverse(unit_time: np.ndarray) -> np.ndarray:
        target = unit_time / spec.rate_rps
        days = np.floor(target / DAY_S)
        rest = target - days * DAY_S
        t = np.interp(rest, grid_g, grid_t)
        for _ in range(3):
            t -= (g(t) - rest) / (1 + a * np.cos(w * t - theta))
            np.clip(t, 0.0, DAY_S, out=t)
        out = np.maximum.accumulate(np.maximum(days * DAY_S + t, last[0]))
        last[0] = float(out[-1])
        return out

    return inverse
