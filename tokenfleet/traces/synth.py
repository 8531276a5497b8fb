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
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from tokenfleet.atomic import refuse_clobber
from tokenfleet.errors import UserError
from tokenfleet.traces.paths import require_trace_suffix
from tokenfleet.traces.reader import read_trace_batches
from tokenfleet.traces.schema import INT32_MAX
from tokenfleet.traces.writer import TraceWriter

CHUNK_ROWS = 1 << 20
DAY_S = 86_400.0
SYNTH_METADATA_KEY = b"tokenfleet.synth"
# Defaults resemble the Azure 2023 conversation trace: mean rate 5.53 req/s; prompt mean 1,155
# and median 1,020 tokens (lognormal sigma 0.5); output median 129 and, after the trace's cap
# of 1,000 tokens, mean 211 (lognormal mean 229 before the cap, sigma 1.07).
DEFAULT_RATE_RPS = 5.5
DEFAULT_PROMPT = "lognormal:1155,0.5"
DEFAULT_OUTPUT = "lognormal:229,1.07,1000"
ARRIVALS = ("poisson", "gamma", "diurnal")


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
        return self

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
    if not spec.lengths_from:
        provenance |= {
            "prompt": spec.prompt or DEFAULT_PROMPT,
            "output": spec.output or DEFAULT_OUTPUT,
        }
    meta = json.dumps(provenance, sort_keys=True)
    rows, last_arrival_s = 0, 0.0
    with (
        TraceWriter(dst, metadata={SYNTH_METADATA_KEY: meta}) as writer,
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


def _batches(
    spec: SynthSpec, resample: tuple[np.ndarray, np.ndarray] | None
) -> Iterator[pa.RecordBatch]:
    arrival_rng, prompt_rng, output_rng, tenant_rng, tier_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(5)
    )
    prompt_dist = parse_length(spec.prompt or DEFAULT_PROMPT, "--prompt")
    output_dist = parse_length(spec.output or DEFAULT_OUTPUT, "--output")
    warp = _diurnal_inverse(spec) if spec.arrivals == "diurnal" else None
    shape = 1.0 / spec.gap_cv**2
    clock = 0.0  # unit-rate time of the last arrival drawn
    done = 0
    while True:
        n = CHUNK_ROWS if spec.requests is None else min(CHUNK_ROWS, spec.requests - done)
        if n <= 0:
            return
        if spec.gap_cv == 1.0:
            gaps = arrival_rng.exponential(1.0, size=n)
        else:
            gaps = arrival_rng.standard_gamma(shape, size=n) / shape
        unit_time = clock + np.cumsum(gaps)
        clock = float(unit_time[-1])
        arrival_s = warp(unit_time) if warp else unit_time / spec.rate_rps
        if spec.duration_s is not None:
            n = int(np.searchsorted(arrival_s, spec.duration_s, "left"))
            arrival_s = arrival_s[:n]
        if resample is not None:
            picks = prompt_rng.integers(0, len(resample[0]), size=n)
            prompt, output = resample[0][picks], resample[1][picks]
        else:
            prompt, output = prompt_dist.sample(prompt_rng, n), output_dist.sample(output_rng, n)
        columns = {
            "arrival_s": pa.array(arrival_s, pa.float64()),
            "prompt_tokens": pa.array(prompt, pa.int32()),
            "output_tokens": pa.array(output, pa.int32()),
        }
        if spec.tenants:
            columns["tenant"] = _categorical(tenant_rng, spec.tenants, n)
        if spec.tiers:
            columns["tier"] = _categorical(tier_rng, spec.tiers, n)
        if n:
            yield pa.RecordBatch.from_pydict(columns)
        done += n
        if spec.duration_s is not None and n < len(unit_time):
            return


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
