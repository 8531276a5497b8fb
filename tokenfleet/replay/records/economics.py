"""Money and goodput by group (the fleet, each tier, each tenant), summed a batch of
requests.parquet at a time in file order (the same sums run to run).

Cost per Mtoken is over the tokens of finished requests; its input part is the cost of the
prefill GPU time. Utilisation is busy GPU time over the fleet's charged GPU time. Each group's
TTFT percentiles come from its own distribution (quantiles.py: every value, or a sketch).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tokenfleet.replay.records.quantiles import distribution
from tokenfleet.replay.request import Status
from tokenfleet.replay.tiers import TOKENS_PER_MTOKEN

GROUP_KEYS = ("fleet", "tier", "tenant")
# The columns the sums read.
ECONOMICS_COLUMNS = [
    "tier",
    "tenant",
    "status",
    "prompt_tokens",
    "output_tokens",
    "cached_tokens",
    "gpu_s",
    "prefill_gpu_s",
    "cost_usd",
    "revenue_usd",
    "cached_input_usd",
    "slo_met",
    "ttft_s",
]


def economics_parts(batch: pa.RecordBatch) -> dict[str, np.ndarray | None]:
    """Per request of a batch, what each summed figure adds (None: one per request)."""
    status = batch.column("status")
    done = pc.equal(status, Status.FINISHED.value).to_numpy(zero_copy_only=False)
    slo = batch.column("slo_met").to_numpy(zero_copy_only=False)
    prompt = batch.column("prompt_tokens").to_numpy().astype(np.float64)
    output = batch.column("output_tokens").to_numpy().astype(np.float64)
    gpu = batch.column("gpu_s").to_numpy()
    cost = batch.column("cost_usd").to_numpy()
    share = np.divide(
        batch.column("prefill_gpu_s").to_numpy(), gpu, out=np.zeros_like(gpu), where=gpu > 0
    )
    return {
        "requests": None,
        "finished": done,
        "rate_limited": pc.equal(status, Status.RATE_LIMITED.value).to_numpy(zero_copy_only=False),
        "expired": pc.equal(status, Status.EXPIRED.value).to_numpy(zero_copy_only=False),
        "too_long": pc.equal(status, Status.TOO_LONG.value).to_numpy(zero_copy_only=False),
        "timed_out": pc.equal(status, Status.TIMED_OUT.value).to_numpy(zero_copy_only=False),
        "goodput_requests": slo,
        "goodput_tokens": np.where(slo, prompt + output, 0.0),
        "gpu_s": gpu,
        "cost_usd": cost,
        "revenue_usd": batch.column("revenue_usd").to_numpy(),
        "cached_input_usd": batch.column("cached_input_usd").to_numpy(),
        "cached_tokens": np.where(done, batch.column("cached_tokens").to_numpy(), 0.0),
        "cache_hit": done & (batch.column("cached_tokens").to_numpy() > 0),
        "prefill_gpu_s": batch.column("prefill_gpu_s").to_numpy(),
        "cost_in_usd": cost * share,
        "tokens_in": np.where(done, prompt, 0.0),
        "tokens_out": np.where(done, output, 0.0),
    }


class Groups:
    """Running sums per group of one key (a tier, a tenant; "fleet": one group of all)."""

    def __init__(self, key: str, exact: bool = True) -> None:
        self.key = key
        self.exact = exact
        self.names: dict[str, int] = {"(all)": 0} if key == "fleet" else {}  # name -> code
        self.sums: dict[str, np.ndarray] = {}
        self.ttft: list = []  # by group code: the finished requests' TTFTs

    def add(self, batch: pa.RecordBatch, parts: dict, done: np.ndarray, ttft: np.ndarray) -> None:
        """Add a batch: `parts` (economics_parts), `done` (finished), and `ttft`, the finished
        requests' TTFTs in batch order."""
        if self.key == "fleet":
            codes = np.zeros(batch.num_rows, dtype=np.int32)
        else:
            column = batch.column(self.key).cast(pa.string()).fill_null("(none)")
            column = column.dictionary_encode()
            names = column.dictionary.to_pylist()
            lookup = np.array([self.names.setdefault(n, len(self.names)) for n in names], np.int32)
            codes = lookup[column.indices.to_numpy(zero_copy_only=False)]
        groups = len(self.names)
        for name, weights in parts.items():  # the same order of sums run to run
            if groups == 1:  # one group (the fleet, or a trace with one tier): a plain sum
                total = np.array([len(codes) if weights is None else weights.sum()], np.float64)
            else:
                total = np.bincount(codes, weights=weights, minlength=groups).astype(np.float64)
            old = self.sums.get(name)
            if old is not None:
                total[: len(old)] += old
            self.sums[name] = total
        while len(self.ttft) < groups:
            self.ttft.append(distribution(self.exact))
        if groups == 1:
            self.ttft[0].add(ttft)
            return
        finished = codes[done]
        order = np.argsort(finished, kind="stable")  # each group's TTFTs, in batch order
        bounds = np.searchsorted(finished[order], np.arange(groups + 1))
        for code in np.flatnonzero(np.diff(bounds)).tolist():
            self.ttft[code].add(ttft[order[bounds[code] : bounds[code + 1]]])

    def figures(self, charged_gpu_s: float, cost_usd: float | None = None) -> dict[str, dict]:
        """Each group's figures, by group name in sorted order; $/Mtoken over `cost_usd` if
        given, else over its requests' cost."""
        out = {}
        for name, code in sorted(self.names.items()):
            sums = defaultdict(float)  # a file with no rows: every sum is zero
            sums.update({k: float(v[code]) for k, v in self.sums.items() if code < len(v)})
            times = self.ttft[code] if code < len(self.ttft) else distribution(self.exact)
            n = int(sums["requests"])
            revenue, cost, gpu_s = sums["revenue_usd"], sums["cost_usd"], sums["gpu_s"]
            figures = {
                "requests": n,
                "finished": int(sums["finished"]),
                "rate_limited": int(sums["rate_limited"]),
                "expired": int(sums["expired"]),
                "too_long": int(sums["too_long"]),
                "timed_out": int(sums["timed_out"]),
                "goodput_requests": int(sums["goodput_requests"]),
                "goodput_tokens": int(sums["goodput_tokens"]),
                "goodput_frac": sums["goodput_requests"] / n if n else None,
                "gpu_hours": gpu_s / 3600.0,
                "utilisation": gpu_s / charged_gpu_s if charged_gpu_s > 0 else None,
                "cost_usd": cost,
                "revenue_usd": revenue,
                "margin_usd": revenue - cost,
                "cached_tokens": int(sums["cached_tokens"]),
                "cached_input_revenue_usd": sums["cached_input_usd"],
                "ttft_s": times.figures((50, 99), mean=False),
                "usd_per_mtoken": _per_mtoken(
                    cost if cost_usd is None else cost_usd,
                    sums["cost_in_usd"],
                    int(sums["tokens_in"]),
                    int(sums["tokens_out"]),
                ),
            }
            out[name] = figures
        return out


def _per_mtoken(cost: float, cost_in: float, tokens_in: int, tokens_out: int) -> dict:
    """$ per million input, output and all tokens of finished requests; the input part is the
    cost of the prefill GPU time."""

    def per(usd: float, tokens: int) -> float | None:
        return usd / tokens * TOKENS_PER_MTOKEN if tokens else None

    return {
        "input": per(cost_in, tokens_in),
        "output": per(cost - cost_in, tokens_out),
        "blended": per(cost, tokens_in + tokens_out),
    }


def prefix_cache_figures(groups: dict[str, Groups], pools: list[dict]) -> dict:
    """What the prefix cache did for finished requests: hit rates, the prefill it saved and an
    estimate of that prefill's GPU time and cost (the saved tokens at this run's own prefill
    GPU-seconds per computed prompt token, priced at the fleet's attributed cost per GPU
    second), and the revenue their cached-input price brought."""
    fleet = groups["fleet"]
    sums = {k: float(v[0]) for k, v in fleet.sums.items()} if fleet.sums else {}
    cached = sums.get("cached_tokens", 0.0)
    prompt = sums.get("tokens_in", 0.0)
    computed = prompt - cached
    gpu_s_per_token = sums.get("prefill_gpu_s", 0.0) / computed if computed > 0 else 0.0
    usd_per_gpu_s = sums["cost_usd"] / sums["gpu_s"] if sums.get("gpu_s") else 0.0
    saved_gpu_s = cached * gpu_s_per_token
    return {
        "enabled": any(p.get("prefix_caching") for p in pools),
        "hit_rate_tokens": cached / prompt if prompt else None,
        "hit_rate_requests": sums.get("cache_hit", 0.0) / sums["finished"]
        if sums.get("finished")
        else None,
        "prefill_tokens_saved": int(cached),
        "prefill_gpu_hours_saved_est": saved_gpu_s / 3600.0,
        "prefill_usd_saved_est": saved_gpu_s * usd_per_gpu_s,
        "cached_input_revenue_usd": sums.get("cached_input_usd", 0.0),
    }


def fleet_economics(groups: dict[str, Groups], pools: list[dict], end_s: float):
    """The fleet's, each tier's and each tenant's figures. The fleet's $/Mtoken is over the
    pools' whole cost, idle time included."""
    charged_gpu_s = sum(p["charged_gpu_s"] for p in pools)
    cost = sum(p["cost_usd"] for p in pools)
    fleet = groups["fleet"].figures(charged_gpu_s, cost)["(all)"]
    fleet.update(
        cost_usd=cost,
        margin_usd=fleet["revenue_usd"] - cost,
        margin_frac=(fleet["revenue_usd"] - cost) / fleet["revenue_usd"]
        if fleet["revenue_usd"]
        else None,
        # A pool that served nothing has no requests to carry its cost.
        unattributed_usd=sum(p["cost_usd"] for p in pools if not p["busy_gpu_s"]),
        gpu_hours_charged=charged_gpu_s / 3600.0,
        run_s=end_s,
    )
    return {
        "fleet": fleet,
        "tiers": groups["tier"].figures(charged_gpu_s),
        "tenants": groups["tenant"].figures(charged_gpu_s),
    }
