"""`replay --cells K`: one replay larger than a process (or a machine) as K independent cells.

The fleet is split into K cells, each a share of every pool's replicas (pool counts split as
evenly as they go, the first cells taking the remainder) with its own gateway and balancer.
Each session goes to one cell by a stable hash of its `session_id` (a request without one, by
its `request_id`), so a conversation's prefixes stay in one cell's caches; each cell's task
reads the trace and keeps its own rows (`CellRows`), and the cells replay in parallel on an executor
(executors.py: local processes or Ray). The merge makes one run directory:
`requests/cell=<c>/part-0.parquet` (a Parquet dataset partitioned by cell; readers such as
`pl.scan_parquet(dir / "requests")` and DuckDB see one table with a `cell` column),
`timeline.parquet` (cell by cell, each in interval then replica order), one `summary.json`
over all cells' requests and pools, and `scenario.toml` (the whole fleet).

What this changes against one process: no balancing across cells (a request can wait in a busy
cell while another idles); each cell's rate limits are the scenario's divided by K (its share
of hash-balanced traffic); each cell is billed to its own last event. Replica numbers are
global: cell 0's replicas first (its pools in order), then cell 1's, and so on. Autoscaled
pools are not split (refused).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import tomli_w

from tokenfleet.atomic import atomic_dir, check_replaceable_dir
from tokenfleet.errors import UserError
from tokenfleet.replay.fleet import build_fleet
from tokenfleet.replay.records import (
    REQUESTS_DIR,
    REQUESTS_FILE,
    SCENARIO_FILE,
    SUMMARY_FILE,
    TIMELINE_FILE,
)
from tokenfleet.replay.records.requests import ALL_RECORDS, RecordsPolicy, sample_requests
from tokenfleet.replay.records.summary import summarise, write_summary
from tokenfleet.replay.run import records_note, run_replay, trace_stats
from tokenfleet.replay.scenario import AUTO, Scenario, scenario_to_dict
from tokenfleet.study.executors import LocalExecutor

# Pool figures that add up over cells (the rest are the pool's description, the same in all).
ADDITIVE = (
    "replicas",
    "max_replicas",
    "cost_usd",
    "charged_gpu_s",
    "busy_gpu_s",
    "peak_replicas",
    "scale_ups",
    "scale_downs",
)


def run_cells(
    trace: str | os.PathLike[str],
    scenario: Scenario,
    out_dir: str | os.PathLike[str],
    cells: int,
    executor=None,
    *,
    step_by_step: bool = False,
    progress: bool = False,
    inputs: tuple = (),
    annotate: Callable[[Path, dict], None] | None = None,
    records: RecordsPolicy = ALL_RECORDS,
    pool_timeline: bool = False,
) -> dict:
    """Replay `trace` as `cells` cells (see the module docstring) into `out_dir`; return the
    merged summary. The signature is run_replay's with the cell count and the executor."""
    if cells < 1:
        raise UserError(f"--cells {cells}: expected at least 1")
    if cells == 1:
        return run_replay(
            trace,
            scenario,
            out_dir,
            step_by_step=step_by_step,
            progress=progress,
            inputs=inputs,
            annotate=annotate,
            records=records,
            pool_timeline=pool_timeline,
        )
    check_replaceable_dir(out_dir, SUMMARY_FILE, inputs=(trace, *inputs))
    stats, _ = trace_stats(trace, any(p.replicas == AUTO for p in scenario.pools))
    _, resolved = build_fleet(scenario, stats)  # the whole fleet: "auto" counts resolved
    parts = split_scenario(resolved, cells)
    executor = executor or LocalExecutor(min(cells, os.cpu_count() or 1))
    # Every record is kept in the cells (the merge reads them all); sketches where --records
    # does not keep them all, so no cell holds every latency in memory.
    kept = dataclasses.replace(ALL_RECORDS, sketch=not records.exact)
    with tempfile.TemporaryDirectory(prefix="tokenfleet-cells-", dir=_beside(out_dir)) as tmp:
        work = Path(tmp)
        tasks = []
        offset = 0
        for c, part in enumerate(parts):
            folder = str(work / f"cell-{c}")
            select = CellRows(c, cells)
            tasks.append((trace, part, folder, step_by_step, kept, offset, select, pool_timeline))
            offset += sum(p.replicas for p in part.pools)
        summaries: dict[int, dict] = {}
        for c, summary, error in executor.run(_replay_cell, tasks):
            if error is not None:
                if isinstance(error, UserError):
                    raise UserError(f"--cells {cells}: cell {c}: {error}") from None
                raise error
            summaries[c] = summary
        cell_summaries = [summaries[c] for c in range(cells)]
        with atomic_dir(out_dir, SUMMARY_FILE, inputs=(trace, *inputs)) as out:
            out = Path(out)
            summary = _merge(work, out, resolved, cell_summaries, records, trace)
            if annotate is not None:
                annotate(out, summary)
            write_summary(out / SUMMARY_FILE, summary)
    return summary


def _replay_cell(task: tuple) -> dict:
    """One cell's replay (a worker process or a Ray task)."""
    trace, scenario, folder, step_by_step, records, offset, select, pool_timeline = task
    return run_replay(
        trace,
        scenario,
        folder,
        step_by_step=step_by_step,
        records=records,
        replica_offset=offset,
        select=select,
        pool_timeline=pool_timeline,
    )


def split_scenario(scenario: Scenario, cells: int) -> list[Scenario]:
    """The cells' scenarios: each pool's (resolved) replicas shared out, rate limits / K."""
    for pool in scenario.pools:
        if pool.autoscale.enabled:
            raise UserError(
                f"--cells {cells}: pool {pool.name!r} is autoscaled; cells split fixed pools "
                "only (run it with --cells 1)"
            )
        if pool.replicas < cells:
            raise UserError(
                f"--cells {cells}: pool {pool.name!r} has {pool.replicas} replicas, fewer than "
                f"the cells; give at most {pool.replicas} cells (each needs one of every pool)"
            )
    limits = tuple(
        dataclasses.replace(
            limit,
            requests_per_minute=limit.requests_per_minute / cells,
            tokens_per_minute=limit.tokens_per_minute / cells,
        )
        for limit in scenario.gateway.limits
    )
    gateway = dataclasses.replace(scenario.gateway, limits=limits)
    return [
        dataclasses.replace(
            scenario,
            gateway=gateway,
            pools=tuple(
                dataclasses.replace(p, replicas=p.replicas // cells + (c < p.replicas % cells))
                for p in scenario.pools
            ),
        )
        for c in range(cells)
    ]


def cell_of(ids: pa.Array, cells: int) -> np.ndarray:
    """The cell of each id: a stable hash (the same on every machine and run) modulo `cells`.
    Integers go through splitmix64's finaliser (consecutive ids spread evenly), text through
    CRC-32."""
    if pa.types.is_integer(ids.type):
        x = ids.to_numpy(zero_copy_only=False).astype(np.uint64)
        with np.errstate(over="ignore"):  # the mix is arithmetic modulo 2^64 on purpose
            x = x + np.uint64(0x9E3779B97F4A7C15)
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            x = x ^ (x >> np.uint64(31))
        return (x % np.uint64(cells)).astype(np.int64)
    return np.array([zlib.crc32(str(v).encode()) % cells for v in ids.to_pylist()], np.int64)


@dataclasses.dataclass(frozen=True)
class CellRows:
    """The trace rows of cell `cell` of `cells` (run_replay's `select`): each cell's task reads
    the whole trace and keeps its own rows, so there is no serial split pass (it took a
    tenth of a 2-cell replay's wall time) and no copy of the trace on disk. A batch with none
    of the cell's rows is passed on empty, so a cell that gets no request still runs (idle)."""

    cell: int
    cells: int
    columns: tuple[str, ...] = ("request_id", "session_id")

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield batch.filter(pa.array(cell_of(_routing_key(batch), self.cells) == self.cell))


def _routing_key(batch: pa.RecordBatch) -> pa.Array:
    """Each row's routing key: its session, else its request id (a session and a lone request
    of the same number share a cell, which is harmless: the key need only be stable)."""
    requests = batch.column("request_id")
    if "session_id" not in batch.schema.names:
        return requests
    sessions = batch.column("session_id")
    if sessions.null_count == 0:
        return sessions
    if sessions.null_count == len(sessions):
        return requests
    if pa.types.is_integer(sessions.type) and pa.types.is_integer(requests.type):
        return pc.coalesce(sessions, requests.cast(sessions.type))
    return pc.coalesce(sessions.cast(pa.string()), requests.cast(pa.string()))


def _merge(work, out, resolved, cell_summaries, records, trace) -> dict:
    """The cells' directories as one run directory in `out`; its summary."""
    cells = len(cell_summaries)
    folders = [work / f"cell-{c}" for c in range(cells)]
    _concat_parquet([f / TIMELINE_FILE for f in folders], out / TIMELINE_FILE)
    pools = merge_pools([s["pools"] for s in cell_summaries])
    end_s = max(s["economics"]["fleet"]["run_s"] for s in cell_summaries)
    fleet = {
        "gpus": sum(s["gpus"] for s in cell_summaries),
        "replicas": sum(s["replicas"] for s in cell_summaries),
    }
    files = [f / REQUESTS_FILE for f in folders]
    summary = summarise(out, fleet, pools, end_s, records.exact, request_files=files)
    first = cell_summaries[0]
    summary["run"] = {**first["run"], "trace": os.fspath(trace)}
    for name, figures in summary["economics"]["tiers"].items():  # labels, as run.py sets them
        for key in ("has_slo", "default_prices"):
            if key in first["economics"]["tiers"].get(name, {}):
                figures[key] = first["economics"]["tiers"][name][key]
    summary["gateway"] = {
        **first["gateway"],
        "retries": sum(s["gateway"]["retries"] for s in cell_summaries),
        "unknown_tiers": _sum_counts([s["gateway"]["unknown_tiers"] for s in cell_summaries]),
    }
    summary["seed"] = first["seed"]
    summary["step_by_step"] = first["step_by_step"]
    if "timeline" in first:
        summary["timeline"] = first["timeline"]
    summary["cells"] = {
        "count": cells,
        "routing": "stable hash of session_id (request_id where none)",
        "requests": [s["requests"] for s in cell_summaries],
        "replicas": [s["replicas"] for s in cell_summaries],
    }
    kept = 0
    for c, path in enumerate(files):
        if records.mode == "none":
            continue
        if records.mode == "sample":
            kept += sample_requests(path, records.fraction, resolved.seed + c)
        part = out / REQUESTS_DIR / f"cell={c}"
        part.mkdir(parents=True)
        shutil.move(path, part / "part-0.parquet")
    if not records.exact:
        summary["records"] = records_note(records, kept)
    (out / SCENARIO_FILE).write_text(tomli_w.dumps(scenario_to_dict(resolved)))
    return summary


def _concat_parquet(parts: list[Path], dst: Path) -> None:
    """The files one after the other, a row group at a time (a week's timeline of a large
    fleet does not fit in memory whole); the first one's schema and metadata."""
    schema = pq.read_schema(parts[0])
    with pq.ParquetWriter(dst, schema, use_dictionary=["pool"]) as writer:
        for part in parts:
            source = pq.ParquetFile(part, pre_buffer=False)
            for i in range(source.num_row_groups):
                writer.write_table(source.read_row_group(i))


def merge_pools(per_cell: list[list[dict]]) -> list[dict]:
    """Each pool over the cells: counts, money and time summed, utilisation recomputed."""
    merged = []
    for entries in zip(*per_cell, strict=True):
        pool = dict(entries[0])
        for key in ADDITIVE:
            pool[key] = sum(e[key] for e in entries)
        charged = pool["charged_gpu_s"]
        pool["utilisation"] = pool["busy_gpu_s"] / charged if charged > 0 else None
        merged.append(pool)
    return merged


def _sum_counts(maps: list[dict]) -> dict:
    total: dict = {}
    for m in maps:
        for k, v in m.items():
            total[k] = total.get(k, 0) + v
    return total


def _beside(out_dir) -> str:
    """The cells' work directory goes beside the output (the same file system: the requests
    files are moved into it, not copied)."""
    parent = Path(out_dir).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    return str(parent)
