"""The event log: append-only Parquet files, one folder per stream and UTC day.

    <location>/events/day=2026-12-03/part-<first stream id>_<last stream id>.parquet
    <location>/impressions/day=2026-12-03/part-<first stream id>_<last stream id>.parquet

`location` is a local folder or any URI pyarrow's filesystems understand (`s3://bucket/prefix`,
`gs://bucket/prefix`, `hdfs://…`; fsspec filesystems through `pyarrow.fs.PyFileSystem`). The
day is the UTC day of the stream entry's id (when Redis accepted the event), not the client's
clock, so a file never lands in a day that is already closed. `day=` folders are Hive-style
partitions: DuckDB, Polars and Spark read the whole log with one glob and filter on `day`.

A file is written under a temporary name, fsynced, renamed, and its folder fsynced (on an
object store the upload itself is atomic). Files are never rewritten: a name is derived from
the entries it holds, so a batch replayed after a crash produces the same name and is skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from services.feature_store.codec import unpack_stream_events

EVENT_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("user_id", pa.string()), ("item_id", pa.string()),
    ("type", pa.string()), ("timestamp", pa.float64()), ("watch_fraction", pa.float64()),
    ("request_id", pa.string()), ("position", pa.int32()),
    ("stream_id", pa.string()), ("received_at", pa.timestamp("ms", tz="UTC")),
])
IMPRESSION_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("user_id", pa.string()), ("experiment", pa.string()),
    ("arm", pa.string()), ("model_version", pa.string()), ("items", pa.list_(pa.string())),
    ("timestamp", pa.float64()), ("ctr_k", pa.int32()), ("forced", pa.bool_()),
    ("stream_id", pa.string()), ("received_at", pa.timestamp("ms", tz="UTC")),
])


def entry_ms(stream_id: str) -> int:
    return int(stream_id.split("-", 1)[0])


def entry_day(stream_id: str) -> str:
    return datetime.fromtimestamp(entry_ms(stream_id) / 1000, UTC).date().isoformat()


@dataclass
class Records:
    """Records from one stream entry that are claimed together (under one marker): a whole
    batch entry written "once", or a single record. `cols` holds the schema's columns except
    stream_id and received_at, one list each; `ids` the stream_id of each record."""

    marker: str
    entry: str
    ids: list[str]
    cols: dict[str, list[Any]]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class LogKind:
    """One stream's table: its folder, schema and the field that identifies a record.
    `batch_field`: a stream entry with this field holds many records as JSON columns
    (services/feature_store/codec.py); an entry without it is one record, one field each."""

    name: str
    schema: pa.Schema
    id_field: str
    batch_field: str | None = None

    def _typed(self, fields: dict[str, str]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for f in self.schema:
            if f.name in ("stream_id", "received_at"):
                continue
            value = fields.get(f.name)
            if value is None:
                row[f.name] = None
            elif f.type == pa.float64():
                row[f.name] = float(value)
            elif f.type == pa.int32():
                row[f.name] = int(value)
            elif f.type == pa.bool_():
                row[f.name] = value == "1"
            elif isinstance(f.type, pa.ListType):
                row[f.name] = orjson.loads(value)
            else:
                row[f.name] = value
        return row

    def split(self, stream_id: str, fields: dict[str, str],
              marker: Callable[[dict[str, str]], str], entry_marker: Callable[[str], str]
              ) -> list[Records]:
        """The entry's records, grouped by the marker that claims them: one group for the
        events of an entry written "once" (but its "replayed" ones, which may also sit in an
        older entry), else one group per record."""
        if self.batch_field is None or self.batch_field not in fields:
            typed = self._typed(fields)
            return [Records(marker(fields), stream_id, [stream_id],
                            {k: [v] for k, v in typed.items()})]
        cols, positions = unpack_stream_events(fields)
        ids = [f"{stream_id}-{p}" for p in positions]
        replayed = fields.get("replayed")
        again = {int(p) for p in replayed.split(",")} if replayed else set()
        once = fields.get("once") == "1"
        whole = [i for i, p in enumerate(positions) if once and p not in again]
        if len(whole) == len(positions):
            return [Records(entry_marker(stream_id), stream_id, ids, cols)]
        groups = [Records(entry_marker(stream_id), stream_id, [ids[i] for i in whole],
                          {k: [c[i] for i in whole] for k, c in cols.items()})] if whole else []
        in_whole = set(whole)
        groups += [Records(marker({"user_id": cols["user_id"][i],
                                   "event_id": cols["event_id"][i]}),
                           stream_id, [ids[i]], {k: [c[i]] for k, c in cols.items()})
                   for i in range(len(positions)) if i not in in_whole]
        return groups

    def table(self, groups: Sequence[Records]) -> pa.Table:
        """One Parquet table from record groups, column by column (no dict per row)."""
        arrays = []
        for f in self.schema:
            if f.name == "stream_id":
                values: list[Any] = [i for g in groups for i in g.ids]
            elif f.name == "received_at":
                values = [ms for g in groups for ms in [entry_ms(g.entry)] * len(g)]
            else:
                values = [v for g in groups for v in g.cols.get(f.name) or [None] * len(g)]
            arrays.append(pa.array(values, type=f.type))
        return pa.Table.from_arrays(arrays, schema=self.schema)


EVENTS = LogKind("events", EVENT_SCHEMA, "event_id", batch_field="events")
IMPRESSIONS = LogKind("impressions", IMPRESSION_SCHEMA, "request_id")


class EventLog:
    def __init__(self, location: str) -> None:
        if "://" in location and not location.startswith("file://"):
            self.fs, self.root = pafs.FileSystem.from_uri(location)
        else:
            path = location.removeprefix("file://")
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(path)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.location = location

    def part_path(self, kind: LogKind, day: str, first_id: str, last_id: str) -> str:
        return f"{self.root}/{kind.name}/day={day}/part-{first_id}_{last_id}.parquet"

    def exists(self, path: str) -> bool:
        return bool(self.fs.get_file_info(path).type == pafs.FileType.File)

    def write(self, kind: LogKind, path: str, rows: list[dict[str, Any]] | pa.Table) -> None:
        """Write `rows` (dicts, or a table of the kind's schema) to `path` durably; the file
        appears whole or not at all."""
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows,
                                                                             schema=kind.schema)
        folder = path.rsplit("/", 1)[0]
        self.fs.create_dir(folder, recursive=True)
        if not self.local:  # an object store's PUT is atomic and durable when it returns
            with self.fs.open_output_stream(path) as out:
                pq.write_table(table, out, compression="zstd")
            return
        tmp = f"{folder}/.{os.path.basename(path)}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as f:
                pq.write_table(table, f, compression="zstd")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        _fsync_dir(folder)

    def files(self, kind: LogKind) -> list[str]:
        base = f"{self.root}/{kind.name}"
        if self.fs.get_file_info(base).type != pafs.FileType.Directory:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True))
        return sorted(i.path for i in infos
                      if i.type == pafs.FileType.File and i.path.endswith(".parquet")
                      and not os.path.basename(i.path).startswith("."))

    def read(self, kind: LogKind, columns: Iterable[str] | None = None) -> pa.Table:
        """The whole log of one kind, oldest entry first (an empty table when there is none)."""
        paths = self.files(kind)
        cols = list(columns) if columns is not None else None
        if not paths:
            schema = kind.schema if cols is None else pa.schema([kind.schema.field(c)
                                                                 for c in cols])
            return schema.empty_table()
        tables = [pq.read_table(p, columns=cols, filesystem=self.fs) for p in paths]
        table = pa.concat_tables(tables)
        if "stream_id" in table.column_names:
            order = sorted(range(table.num_rows),
                           key=_stream_key(table.column("stream_id").to_pylist()))
            table = table.take(order)
        return table


def _stream_key(ids: list[str]) -> Callable[[int], tuple[int, int, int]]:
    """Arrival order: `<ms>-<seq>` of the stream entry, then `-<position>` in a batch entry."""
    def key(i: int) -> tuple[int, int, int]:
        parts = ids[i].split("-")
        return (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0,
                int(parts[2]) if len(parts) > 2 else -1)
    return key


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
