"""The Spark engine: `prepare`, `build` and lake-routed queries on Apache Spark (PySpark).

For data that outgrows one machine. It executes the shared definitions and writes exactly the
files the DuckDB engine writes, so `lake.prepare` / `views.build_view` stage, check, promote and
record them the same way and the router and DuckDB serve them unchanged:

- remediation: `lake.REMEDIATION_RULES` expanded with `spark_sql.SPARK_FUNCTIONS`, Spark SQL that gives
  DuckDB's TRY_CAST results (Spark's own casts differ: no `7.5` -> 8, no `1e3`, no `1_000`, no
  `0x10`, `7d` is a double ...); the CSV is split into fields as DuckDB's reader does (quotes,
  `""` = NULL, trailing empty fields ignored, empty lines skipped, other field counts rejected
  with their line number). A line whose quoting DuckDB resolves across lines or leniently (an
  unbalanced quote, text after a closing quote) is refused with a `PrepareError`, never guessed;
  so is a part with a line `lake.rawfile` diverts (not UTF-8, over `rules.MAX_LINE_BYTES`, a
  hostile field count): Spark's text reader would replace its bytes rather than quarantine it.
- lake files: one Parquet file per segment and type (gathered by a shuffle on (segment, type),
  sorted by `ts`, ZSTD, the same row group size), UTC-naive TIMESTAMP_NTZ / DATE / INT / BIGINT /
  DOUBLE / STRING columns in the lake's order; the part files Spark writes are moved into place.
- views: `ViewDef.aggregate_sql` runs as Spark SQL; one file per version (deltas are the same SQL over new segments).
- queries: the `Query` compiled by `compiler.compile_query` to Spark SQL over a temp view of the
  committed files; every value is a bound `?` parameter (times bound as ISO text and cast to the
  lake's type, so no process or JVM time zone can shift them); NULLs sort last as in DuckDB.

Only JVM code runs on executors (no Python UDFs), so executors need Spark but not this package.
Raw CSVs and the lake must be at the same path on the driver and every executor (a local disk
in `local[*]`, a shared POSIX mount such as NFS on a cluster): paths are passed as `file://` URIs.
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import threading
import time
import uuid
from functools import reduce
from pathlib import Path
from typing import Any, Mapping, Sequence

import pyarrow as pa
from tqdm.auto import tqdm

from analytics.engines.spark_sql import (
    LAKE_PROJECTION,
    QTOKEN,
    QUOTED_LINE,
    SPARK_TYPES,
    UNPARSEABLE_QUOTES,
    Conversions,
    spark_str,
)
from analytics.lake.prepare import PrepareError
from analytics.lake.rawfile import first_diverted
from analytics.lake.rules import WRONG_FIELD_COUNT, reason_case_sql
from analytics.lake.state import DEFAULT_ROW_GROUP_SIZE, EVENTS_DIR, QUARANTINE_DIR, Lake, RejectedPart, SegmentEntry
from analytics.query.compiler import compile_query
from analytics.query.model import Query
from analytics.query.schema import EVENT_TYPES, LAKE_TYPES, RAW_HEADER
from analytics.views.catalog import ViewDef
from analytics.views.day_ranges import Piece

DEFAULT_MASTER = "local[*]"
# Settings the engine's semantics depend on; a user's --spark-conf cannot turn these off.
REQUIRED_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.ansi.enabled": "true",
    "spark.sql.ansi.doubleQuotedIdentifiers": "true",  # compiler.ident quotes with "..."
    "spark.sql.parquet.inferTimestampNTZ.enabled": "true",  # lake TIMESTAMP (UTC-naive) <-> TIMESTAMP_NTZ
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",  # type=... stays a string
    "spark.sql.parquet.compression.codec": "zstd",
}
# The remediation casts make whole-stage code whose methods pass HotSpot's 8000-byte limit for JIT
# compilation; interpreted, the classify step ran 3x slower (measured on 5M rows).
JIT_HUGE_METHODS = "-XX:-DontCompileHugeMethods"
DEFAULT_CONF: dict[str, str] = {
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.adaptive.enabled": "true",
    "spark.executor.extraJavaOptions": JIT_HUGE_METHODS,
}
# Only where this process starts the JVM itself (not under spark-submit, which sizes the driver).
LOCAL_DEFAULT_CONF: dict[str, str] = {
    "spark.driver.memory": "4g",
    "spark.ui.enabled": "false",
    "spark.driver.extraJavaOptions": JIT_HUGE_METHODS,  # in local mode the driver runs the tasks
}
ROW_GROUP_ROWS = "parquet.block.row.count.limit"


def _uri(path: Path) -> str:
    """`file://` + the absolute path, unescaped (Hadoop reads `type=x` literally, not `type%3Dx`), so
    a cluster whose default file system is HDFS still reads the shared mount."""
    return "file://" + Path(path).resolve().as_posix()


def _move_single_part(out_dir: Path, dest: Path) -> None:
    """Spark wrote `out_dir` for one partition; move its one Parquet part file to `dest`."""
    parts = sorted(out_dir.glob("part-*.parquet"))
    if len(parts) != 1:
        raise RuntimeError(f"expected one Parquet part file in {out_dir}, found {len(parts)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(parts[0], dest)


def spark_session(master: str | None = None, conf: Mapping[str, str] | None = None) -> Any:
    """The process's SparkSession with REQUIRED_CONF. Under spark-submit, its master and settings
    apply (an explicit `master` still wins); otherwise `master` or local[*] with LOCAL_DEFAULT_CONF."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    builder = SparkSession.builder.appName("analytics")
    if master or not under_submit:
        builder = builder.master(master or DEFAULT_MASTER)
    settings = dict(DEFAULT_CONF)
    if not under_submit:
        settings.update(LOCAL_DEFAULT_CONF)
    for key, value in (conf or {}).items():
        if key.endswith(".extraJavaOptions") and JIT_HUGE_METHODS in settings.get(key, ""):
            value = f"{value} {JIT_HUGE_METHODS}".strip()  # a user's options come on top of the flag
        settings[key] = value
    settings.update(REQUIRED_CONF)
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    for key, value in {**(conf or {}), **REQUIRED_CONF}.items():  # an existing session: its SQL settings
        if key.startswith("spark.sql.") and spark.conf.get(key, None) != value:
            try:
                spark.conf.set(key, value)
            except Exception:  # a static one of an already running context cannot change
                pass
    spark.sparkContext.setLogLevel(os.environ.get("ANALYTICS_SPARK_LOG_LEVEL", "ERROR"))
    return spark


class SparkEngine:
    name = "spark"

    def __init__(self, master: str | None = None, conf: Mapping[str, str] | None = None,
                 session: Any = None, persist: str | None = None) -> None:
        from py4j.protocol import Py4JError
        from pyspark.errors import PySparkException

        self.errors: tuple[type[BaseException], ...] = (PySparkException, Py4JError)
        self.spark = session if session is not None else spark_session(master, conf)
        self.master = self.spark.sparkContext.master
        # How prepare keeps the classified rows for its second pass over dirty parts (the quarantine):
        # a StorageLevel name, or NONE to re-read the CSVs. Measured on 5M rows in local[2], caching
        # cost more than it saved; clean parts take one pass anyway.
        self.persist = persist or os.environ.get("ANALYTICS_SPARK_PERSIST", "NONE")
        self._lock = threading.Lock()
        self._events: tuple[str, str] | None = None  # (lake version, temp view name) for queries
        self.timings: dict[str, float] = {}  # seconds per step of the last ingest
        self._current: tuple[str, float] | None = None

    def _step(self, bar: Any, name: str | None) -> None:
        now = time.perf_counter()
        if self._current is not None:
            self.timings[self._current[0]] = round(now - self._current[1], 3)
            bar.update(1)
        self._current = (name, now) if name else None
        if name:
            bar.set_postfix_str(name)

    # ---- lake relation -------------------------------------------------------------------------
    def lake_frame(self, lake: Lake, segments: set[str] | None = None) -> Any:
        """A DataFrame over exactly the committed event files (optionally some segments), `type`
        from the Hive path; an empty lake gives an empty frame of the lake's schema."""
        files = lake.event_files(segments=segments)
        if not files:
            cols = [c for c in LAKE_TYPES if c != "type"] + ["type"]
            ddl = ", ".join(f"{c} {SPARK_TYPES[LAKE_TYPES[c]]}" for c in cols)
            return self.spark.createDataFrame([], ddl)
        return (self.spark.read.option("basePath", _uri(lake.root / EVENTS_DIR))
                .parquet(*[_uri(f) for f in files]))

    def _temp_view(self, frame: Any) -> str:
        name = f"t_{uuid.uuid4().hex}"
        frame.createOrReplaceTempView(name)
        return name

    def _drop(self, *names: str) -> None:
        for name in names:
            self.spark.catalog.dropTempView(name)

    # ---- prepare -------------------------------------------------------------------------------
    def ingest(self, parts: Sequence[tuple[Path, str]], stage: Path, *, row_group_size: int,
               progress: bool) -> list[SegmentEntry | RejectedPart]:
        """All parts in one set of Spark jobs: number the lines, classify and write the accepted rows,
        the quarantined ones (a second pass, only if any), count what was written.

        A part with a line the raw-file pre-pass diverts (not UTF-8, too long, too many fields) is
        refused with a PrepareError: Spark's text reader would replace its bytes, not quarantine it."""
        from pyspark import StorageLevel
        from pyspark.sql import Observation
        from pyspark.sql import functions as F

        if not parts:
            return []
        for src, _ in parts:
            bad = first_diverted(src)
            if bad is not None:
                raise PrepareError(f"{src.name} line {bad.line}: {bad.reason}, which the Spark engine does not "
                                   f"quarantine; prepare this part with --engine duckdb")
        spark = self.spark
        work = stage / f"_spark-{uuid.uuid4().hex}"
        bar = tqdm(total=5, desc="prepare (spark)", unit="step", disable=not progress)
        self.timings, self._current = {}, None
        self._step(bar, "number lines")
        names = {seg: src.name for src, seg in parts}

        # 1. physical line numbers: count the lines of each input split, then offset its row ids
        lines = reduce(lambda a, b: a.unionByName(b), [
            spark.read.text(_uri(src)).select(
                F.lit(seg).alias("seg"), F.input_file_block_start().alias("blk"),
                F.monotonically_increasing_id().alias("mid"), "value")
            for src, seg in parts])
        blocks = lines.groupBy("seg", "blk").agg(F.count(F.lit(1)).alias("n"), F.min("mid").alias("mid0")).collect()
        offsets = []
        for seg in names:
            first = 1
            for b in sorted((b for b in blocks if b["seg"] == seg), key=lambda b: b["blk"]):
                offsets.append((seg, b["blk"], first - b["mid0"]))
                first += b["n"]
        offsets_df = spark.createDataFrame(offsets, "seg STRING, blk BIGINT, off BIGINT")

        # 2. fields as DuckDB's reader splits them; header (line 1) and empty lines are not rows
        numbered = (lines.join(F.broadcast(offsets_df), ["seg", "blk"])
                    .select("seg", (F.col("mid") + F.col("off")).alias("line"), "value")
                    .where("line > 1 AND value <> ''"))
        unquote = "t -> CASE WHEN t LIKE '\"%' THEN replace(substr(t, 2, length(t) - 2), '\"\"', '\"') ELSE t END"
        tokens = (f"CASE WHEN instr(value, '\"') = 0 THEN split(value, ',', -1) "
                  f"ELSE transform(regexp_extract_all(concat(',', value), {spark_str(QTOKEN)}, 1), {unquote}) END")
        # 9 fields, or more whose extra ones are all empty
        ok = ("CASE WHEN size(f) = 9 THEN true WHEN size(f) > 9 THEN concat_ws('', slice(f, 10, size(f) - 9)) = '' "
              "ELSE false END")
        raw = (numbered.selectExpr(
                   "seg", "line", "value", f"{tokens} AS f",
                   f"instr(value, '\"') > 0 AND NOT value RLIKE {spark_str(QUOTED_LINE)} AS bad_quotes")
               .selectExpr("*", f"{ok} AS ok")
               .selectExpr("seg", "line", "bad_quotes", "ok",
                           *[f"CASE WHEN ok THEN nullif(f[{i}], '') END AS {c}" for i, c in enumerate(RAW_HEADER)],
                           "CASE WHEN NOT ok THEN value END AS raw_line"))
        conv = Conversions()
        reason = (f"CASE WHEN bad_quotes THEN '{UNPARSEABLE_QUOTES}' WHEN NOT ok THEN '{WRONG_FIELD_COUNT}' "
                  f"ELSE {reason_case_sql(conv.functions)} END")
        lake_cols = [f"{conv.render(expr)} AS {col}" for col, expr in LAKE_PROJECTION]
        rows = (raw.selectExpr("*", *[f"{expr} AS {col}" for col, expr in conv.columns.items()])
                .selectExpr("seg", "line", "raw_line", *RAW_HEADER, *conv.columns, f"{reason} AS reason"))
        if self.persist != "NONE":
            rows = rows.persist(getattr(StorageLevel, self.persist))
        try:
            # 3. the accepted rows, one file per part and type; counting what is not accepted on the way
            self._step(bar, "write events")
            seen = Observation(f"prepare_{uuid.uuid4().hex}")
            (rows.observe(seen, F.count_if(F.col("reason").isNotNull()).alias("quarantined"),
                          F.count_if(F.col("reason") == UNPARSEABLE_QUOTES).alias("bad_quotes"))
             .where("reason IS NULL").selectExpr("seg", "type", *lake_cols)
             .repartition("seg", "type").sortWithinPartitions("seg", "type", "ts")
             .write.partitionBy("seg", "type").option(ROW_GROUP_ROWS, str(int(row_group_size)))
             .option("compression", "zstd").mode("overwrite").parquet(_uri(work / "events")))
            counts = seen.get
            if counts["bad_quotes"]:
                first = (rows.where(f"reason = '{UNPARSEABLE_QUOTES}'").orderBy("seg", "line")
                         .select("seg", "line").first())
                raise PrepareError(
                    f"{names[first['seg']]} line {first['line']}: quoting the Spark engine cannot split line by line "
                    f"(an unbalanced quote, a field spanning lines or text after a closing quote; "
                    f"{counts['bad_quotes']} such line(s)); prepare this part with --engine duckdb")

            # 4. the quarantined rows, one file per part (only when there are any: a second pass)
            self._step(bar, "write quarantine")
            if counts["quarantined"]:
                source_file = "CASE seg " + " ".join(f"WHEN {spark_str(seg)} THEN {spark_str(name)}"
                                                     for seg, name in names.items()) + " END"
                (rows.where("reason IS NOT NULL")
                 .selectExpr("seg", f"{source_file} AS source_file",
                             f"CAST(CASE WHEN reason = '{WRONG_FIELD_COUNT}' THEN line END AS BIGINT) AS line",
                             "reason", *RAW_HEADER, "raw_line")
                 .repartition("seg").sortWithinPartitions("seg", F.col("line").asc_nulls_first(), "reason")
                 .write.partitionBy("seg").option("compression", "zstd").mode("overwrite")
                 .parquet(_uri(work / "quarantine")))
        finally:
            rows.unpersist()

        # 5. the manifest's counts, from the files just written
        self._step(bar, "count")
        valid_types = ", ".join(spark_str(t) for t in EVENT_TYPES)
        kept = quarantined = []
        if any((work / "events").rglob("*.parquet")):
            kept = (spark.read.parquet(_uri(work / "events"))
                    .groupBy("seg", "type", F.date_format("day", "yyyy-MM-dd").alias("day")).count().collect())
        if any((work / "quarantine").rglob("*.parquet")):
            quarantined = (spark.read.parquet(_uri(work / "quarantine"))
                           .groupBy("seg", "reason", F.expr(f"CASE WHEN type IN ({valid_types}) THEN type "
                                                            f"ELSE '(invalid)' END").alias("type"))
                           .count().collect())
        if sum(r["count"] for r in quarantined) != counts["quarantined"]:
            raise RuntimeError(f"quarantine files hold {sum(r['count'] for r in quarantined)} rows, "
                               f"{counts['quarantined']} were quarantined")
        entries = self._entries(kept, quarantined, names, work, stage)
        self._step(bar, None)
        shutil.rmtree(work, ignore_errors=True)
        bar.close()
        return entries

    @staticmethod
    def _entries(kept: list[Any], quarantined: list[Any], names: dict[str, str], work: Path,
                 stage: Path) -> list[SegmentEntry]:
        """The manifest entry of each part, its files moved into `stage`."""
        entries = []
        for seg in names:
            lake_by_type: dict[str, int] = {}
            days: dict[str, set[str]] = {}
            for r in kept:
                if r["seg"] == seg:
                    lake_by_type[r["type"]] = lake_by_type.get(r["type"], 0) + r["count"]
                    days.setdefault(r["type"], set()).add(r["day"])
            files: dict[str, str] = {}
            for t in sorted(lake_by_type):
                files[t] = f"{EVENTS_DIR}/type={t}/{seg}.parquet"
                _move_single_part(work / "events" / f"seg={seg}" / f"type={t}", stage / files[t])
            by_reason: dict[str, int] = {}
            by_type: dict[str, int] = {}
            for r in quarantined:
                if r["seg"] == seg:
                    by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + r["count"]
                    by_type[r["type"]] = by_type.get(r["type"], 0) + r["count"]
            quarantine_file = None
            if by_reason:
                quarantine_file = f"{QUARANTINE_DIR}/{seg}.parquet"
                _move_single_part(work / "quarantine" / f"seg={seg}", stage / quarantine_file)
            entry = SegmentEntry.counted(seg, files=files, days={t: sorted(days[t]) for t in sorted(lake_by_type)},
                                         lake_by_type={t: lake_by_type[t] for t in sorted(lake_by_type)},
                                         quarantine_file=quarantine_file, quarantine_by_reason=by_reason,
                                         quarantine_by_type=by_type)
            entries.append(entry)
        return entries

    # ---- views ---------------------------------------------------------------------------------
    def aggregate_view(self, view: ViewDef, lake: Lake, out: Path, *, segments: set[str] | None = None,
                       pieces: Sequence[Piece] | None = None) -> None:
        del pieces  # Spark partitions the aggregation and spills by itself
        for leftover in out.parent.glob(".spark-*"):  # a killed build's; the caller holds the view lock
            shutil.rmtree(leftover, ignore_errors=True)
        work = out.parent / f".spark-{uuid.uuid4().hex}"
        source = self._temp_view(self.lake_frame(lake, segments))
        temps = [source]
        try:
            frame = self.spark.sql(view.aggregate_sql(source))
            (frame.select(*[c for c, _ in view.schema()]).repartition(1)
             .sortWithinPartitions(*view.sort_columns)
             .write.option(ROW_GROUP_ROWS, str(DEFAULT_ROW_GROUP_SIZE)).option("compression", "zstd")
             .parquet(_uri(work)))
            _move_single_part(work, out)
        finally:
            self._drop(*temps)
            shutil.rmtree(work, ignore_errors=True)

    def lake_totals(self, lake: Lake) -> pa.Table:
        from analytics.views.build import lake_totals_sql

        source = self._temp_view(self.lake_frame(lake))
        try:
            return self.spark.sql(lake_totals_sql(source)).toArrow()
        finally:
            self._drop(source)

    # ---- queries -------------------------------------------------------------------------------
    def events_view(self, lake: Lake) -> str:
        """A temp view over the lake's committed files, re-created when the lake version changes."""
        with self._lock:
            if self._events is None or self._events[0] != lake.version:
                if self._events is not None:
                    self._drop(self._events[1])
                name = f"events_{uuid.uuid4().hex[:12]}"
                self.lake_frame(lake).createOrReplaceTempView(name)
                self._events = (lake.version, name)
            return self._events[1]

    def query(self, lake: Lake, query: Query) -> pa.Table:
        sql, params = compile_spark(query, self.events_view(lake))
        return self.spark.sql(sql, args=params).toArrow()

    def close(self) -> None:
        if self._events is not None:
            try:
                self._drop(self._events[1])
            except Exception:
                pass
            self._events = None


def _bind(value: Any) -> tuple[str, Any]:
    """A placeholder and the value bound to it. Times travel as ISO text cast to the lake's type:
    PySpark turns a naive datetime into an instant in the *process's* time zone."""
    if isinstance(value, dt.datetime):
        return "CAST(? AS TIMESTAMP_NTZ)", value.isoformat(sep=" ")
    if isinstance(value, dt.date):
        return "CAST(? AS DATE)", value.isoformat()
    return "?", value


def compile_spark(query: Query, relation: str) -> tuple[str, list[Any]]:
    """`compiler.compile_query` for Spark SQL: values bound as `?` parameters (times cast, see `_bind`)
    and NULLS LAST made explicit (DuckDB's default order)."""
    return compile_query(query, relation, bind=_bind, nulls_last=True)
