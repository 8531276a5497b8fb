"""Read CSV and JSON-lines sources in chunks, and sniff which kind a file is.

Each reader yields (first_line, batch): the 1-based file line of the batch's first row, so
that errors point at a line the user can open. Lines assume one record per line (no blank lines,
no newlines inside quoted CSV fields), which holds for every trace format converted here.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from tokenfleet.errors import UserError
from tokenfleet.traces.paths import require_regular_file

SNIFF_BYTES = 1 << 16
CSV_BLOCK_BYTES = 1 << 20  # Arrow reads ahead several blocks: larger ones cost RSS, not speed
JSON_CHUNK_BYTES = 4 << 20


@dataclass(frozen=True)
class Sniffed:
    """What the head of a file says: "csv" with its header, or "jsonl" with its first keys."""

    kind: str
    columns: tuple[str, ...]


def sniff(path: Path) -> Sniffed:
    """Look at the first bytes: Parquet and binary files are refused, JSON objects mean JSONL."""
    require_regular_file(path, "a CSV or JSON-lines trace")
    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            head = stream.read(SNIFF_BYTES)
    except (OSError, pa.ArrowInvalid) as err:
        raise UserError(f"{path}: cannot be read ({str(err).splitlines()[0]})") from None
    if head.startswith(b"PAR1"):
        raise UserError(
            f"{path}: is a Parquet file; convert reads CSV or JSON lines "
            "(check a Parquet trace with `tokenfleet traces validate`)"
        )
    if not head.strip():
        raise UserError(f"{path}: file is empty; expected a CSV header or JSON lines")
    if b"\x00" in head:
        raise UserError(f"{path}: not a CSV or JSON-lines file (it holds binary data)")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not just a character cut by the sniff window
            raise UserError(f"{path}: not a CSV or JSON-lines file (not UTF-8 text)") from None
        text = head[: err.start].decode("utf-8")
    first = text.lstrip("\ufeff").lstrip().split("\n", 1)[0].strip()
    if first.startswith("{"):
        try:
            record = json.loads(first)
        except json.JSONDecodeError:
            raise UserError(
                f"{path}: line 1: expected a JSON object per line, got {first[:60]!r}"
            ) from None
        return Sniffed("jsonl", tuple(record))
    if first.startswith("["):
        raise UserError(f"{path}: is a JSON array; expected JSON lines (one object per line)")
    header = next(csv.reader(io.StringIO(first)))
    return Sniffed("csv", tuple(name.strip() for name in header))


def csv_batches(path: Path, columns: list[str]) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Stream the named CSV columns as strings (parsed later, so a bad value has a row)."""
    try:
        reader = pacsv.open_csv(
            str(path),
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
            convert_options=pacsv.ConvertOptions(
                include_columns=columns,
                column_types={name: pa.string() for name in columns},
                strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, OSError) as err:
        if "Empty CSV file" in str(err):  # a header without a newline: no rows
            return
        raise UserError(f"{path}: not a readable CSV file ({_arrow_message(err)})") from None
    line = 2  # line 1 is the header
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as err:
            raise UserError(f"{path}: near line {line}: {_arrow_message(err)}") from None
        yield line, batch
        line += batch.num_rows


def jsonl_batches(
    path: Path, schema: pa.Schema | None = None
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Stream JSON lines in chunks cut at newlines; `schema` fixes the types of known fields."""
    options = (
        pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        if schema is not None
        else pajson.ParseOptions()
    )
    line = 1
    with pa.input_stream(str(path), compression="detect") as stream:
        rest = b""
        while True:
            block = stream.read(JSON_CHUNK_BYTES)
            data = rest + block
            if block:
                cut = data.rfind(b"\n") + 1
                data, rest = data[:cut], data[cut:]
            else:
                rest = b""
            if data.strip():
                try:
                    table = pajson.read_json(io.BytesIO(data), parse_options=options)
                except pa.ArrowInvalid as err:
                    raise UserError(_json_error(path, line, err)) from None
                for batch in table.to_batches():
                    yield line, batch
                    line += batch.num_rows
            if not block:
                return


def _json_error(path: Path, line: int, err: pa.ArrowInvalid) -> str:
    """Turn Arrow's "... in row N" (0-based within the chunk) into a file line, and its
    "Column(/x) changed from number to string" into the usual column/expected/got line."""
    message = _arrow_message(err)
    found = re.search(r"\s*in row (\d+)$", message)
    if found:
        where = f"line {line + int(found.group(1))}"
        message = message[: found.start()]
    else:
        where = f"near line {line}"
    changed = re.search(r"Column\(/?([^)]*)\) changed from (\w+) to (\w+)", message)
    if changed:
        column, expected, got = changed.groups()
        return f"{path}: column {column!r}, {where}: expected a {expected}, got a {got}"
    return f"{path}: {where}: {message}"


def _arrow_message(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
