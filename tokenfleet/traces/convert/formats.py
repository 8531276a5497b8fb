"""The source formats convert understands: which source column feeds which trace column.

Adding a format is adding one FormatSpec: the pipeline in convert/__init__.py is shared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from tokenfleet.errors import UserError
from tokenfleet.traces.convert.sources import Sniffed
from tokenfleet.traces.schema import (
    CANONICAL_COLUMNS,
    OPTIONAL_COLUMNS,
    PREFIX_BLOCK_SIZE_KEY,
    REQUIRED_COLUMNS,
)

TIME_UNITS_S = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


@dataclass(frozen=True)
class FormatSpec:
    """One source format.

    `columns` maps output column -> source column; `optional` output columns are used only
    when the source has them. `time_unit` is "datetime" for wall-clock strings, a key of
    TIME_UNITS_S for numbers, or "auto" (numbers in the --time-unit, otherwise wall clock).
    `failed_rows` marks formats whose zero-token rows are failed requests (--drop-failed).
    """

    name: str
    kind: str
    columns: dict[str, str]
    time_unit: str
    optional: frozenset[str] = frozenset()
    failed_rows: bool = False
    metadata: dict[bytes, bytes] = field(default_factory=dict)
    json_types: dict[str, pa.DataType] = field(default_factory=dict)


FORMATS: dict[str, FormatSpec] = {
    "azure": FormatSpec(
        "azure",
        "csv",
        {
            "arrival_s": "TIMESTAMP",
            "prompt_tokens": "ContextTokens",
            "output_tokens": "GeneratedTokens",
        },
        time_unit="datetime",
    ),
    "burstgpt": FormatSpec(
        "burstgpt",
        "csv",
        {
            "arrival_s": "Timestamp",
            "prompt_tokens": "Request tokens",
            "output_tokens": "Response tokens",
            "session_id": "Session ID",
            "model": "Model",
            "log_type": "Log Type",
        },
        time_unit="s",
        optional=frozenset({"session_id", "model", "log_type"}),
        failed_rows=True,
    ),
    "mooncake": FormatSpec(
        "mooncake",
        "jsonl",
        {
            "arrival_s": "timestamp",
            "prompt_tokens": "input_length",
            "output_tokens": "output_length",
            "prefix_hashes": "hash_ids",
        },
        time_unit="ms",
        optional=frozenset({"prefix_hashes"}),
        metadata={PREFIX_BLOCK_SIZE_KEY: b"512"},
        json_types={
            "timestamp": pa.float64(),
            "input_length": pa.int64(),
            "output_length": pa.int64(),
            "hash_ids": pa.list_(pa.int64()),
        },
    ),
    "vidur": FormatSpec(
        "vidur",
        "csv",
        {
            "arrival_s": "arrived_at",
            "prompt_tokens": "num_prefill_tokens",
            "output_tokens": "num_decode_tokens",
        },
        time_unit="s",
    ),
    "csv": FormatSpec(
        "csv", "csv", {c: c for c in CANONICAL_COLUMNS}, "auto", frozenset(OPTIONAL_COLUMNS)
    ),
    "jsonl": FormatSpec(
        "jsonl", "jsonl", {c: c for c in CANONICAL_COLUMNS}, "auto", frozenset(OPTIONAL_COLUMNS)
    ),
}
FORMAT_NAMES: tuple[str, ...] = ("auto", *FORMATS)


def detect_format(sniffed: Sniffed) -> str:
    """The named format whose required source columns the file has, else generic csv/jsonl."""
    present = set(sniffed.columns)
    for spec in FORMATS.values():
        if spec.kind != sniffed.kind or spec.time_unit == "auto":
            continue
        needed = {src for out, src in spec.columns.items() if out not in spec.optional}
        if needed <= present:
            return spec.name
    return sniffed.kind


def resolve_format(
    source: str, fmt: str, sniffed: Sniffed, mapping: dict[str, str] | None
) -> tuple[FormatSpec, dict[str, str]]:
    """The spec to use and the output -> source column mapping, checked against the header.

    A user `mapping` (from --columns) overrides or extends the spec's; non-canonical output
    names become extra string columns.
    """
    if fmt not in FORMAT_NAMES:
        raise UserError(
            f"{source}: unknown --format {fmt!r}; expected one of {', '.join(FORMAT_NAMES)}"
        )
    spec = FORMATS[detect_format(sniffed) if fmt == "auto" else fmt]
    if spec.kind != sniffed.kind:
        wanted = "a CSV file" if spec.kind == "csv" else "JSON lines"
        raise UserError(
            f"{source}: --format {spec.name} reads {wanted}, but this is {sniffed.kind}"
        )
    present = set(sniffed.columns)
    chosen = {
        out: src for out, src in spec.columns.items() if out not in spec.optional or src in present
    }
    if mapping:
        for out, src in mapping.items():
            chosen.pop(out, None)
            chosen[out] = src
            if src not in present:
                raise UserError(
                    f"{source}: --columns {out}={src}: the file has no column {src!r} "
                    f"(found: {', '.join(sniffed.columns)})"
                )
    for out in REQUIRED_COLUMNS:
        if out not in chosen or chosen[out] not in present:
            src = chosen.get(out, out)
            raise UserError(
                f"{source}: column {src!r} is missing; format {spec.name} needs it for {out} "
                f"(found: {', '.join(sniffed.columns)}; map another with --columns {out}=NAME)"
            )
    return spec, chosen


def parse_column_mapping(text: str) -> dict[str, str]:
    """ "arrival_s=ts,prompt_tokens=in" -> {"arrival_s": "ts", "prompt_tokens": "in"}."""
    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        out, sep, src = item.partition("=")
        if not sep or not out.strip() or not src.strip():
            raise UserError(
                f"--columns: {item!r} is not OUTPUT=SOURCE "
                "(example: --columns arrival_s=ts,prompt_tokens=input,output_tokens=output)"
            )
        if out.strip() in mapping:
            raise UserError(f"--columns: {out.strip()!r} is mapped twice; map each column once")
        mapping[out.strip()] = src.strip()
    return mapping
