"""Each pool's cost and GPU time over the run, computed once, from the provisioned spans the
replicas' timeline recorders kept and the busy time the timeline writer summed."""

from __future__ import annotations

from tokenfleet.replay.cost import RentedPricing, pool_cost_usd
from tokenfleet.replay.records.timeline import TimelineWriter


def pool_costs(fleet, timeline: TimelineWriter, end_s: float) -> list[dict]:
    """Each pool's description with its cost over [0, end_s] (cost.py, from the provisioned
    spans; the timeline's cost column spreads the same money over the intervals) and its
    charged and busy GPU time."""
    out = []
    busy = dict(zip(timeline.pool_names, timeline.busy_s.tolist(), strict=True))
    provisioned = dict(zip(timeline.pool_names, timeline.provisioned_s.tolist(), strict=True))
    for pool in fleet.pools:
        name, tp = pool["name"], pool["tp"]
        members = [r.timeline.spans for r in fleet.replicas if r.pool == name]
        spans = [min(b, end_s) - a for member in members for a, b in member if a < end_s]
        pricing = fleet.pricing[name]
        on_demand = isinstance(pricing, RentedPricing) and pricing.commitment == "on_demand"
        charged = provisioned[name] if on_demand else len(members) * end_s
        scaler = (fleet.autoscalers or {}).get(name)
        out.append(
            {
                **pool,
                "cost_usd": pool_cost_usd(pricing, tp, len(members), spans, end_s, busy[name]),
                "charged_gpu_s": charged * tp,
                "busy_gpu_s": busy[name] * tp,
                "utilisation": busy[name] / charged if charged > 0 else None,
                "peak_replicas": _peak([(a, b) for member in members for a, b in member]),
                "scale_ups": scaler.scale_ups if scaler else 0,
                "scale_downs": scaler.scale_downs if scaler else 0,
            }
        )
    return out


def _peak(spans: list[tuple[float, float]]) -> int:
    """Most replicas provisioned at once."""
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: e)
    peak = n = 0
    for _, change in events:
        n += change
        peak = max(peak, n)
    return peak
