"""`Workbench`: the Python face of the product, what notebooks and the CLI call.

Owns the warm serving state over one lake: a DuckDB database holding the `events` view over
the lake's committed files, each view's current version opened on first use by memory-mapping
its serving copy and those of its deltas (`views.serving_copy`, `views.delta`: opening reads no
data page; the first query of an event type checks that type's files against their checksums,
then a query touches only the pages of the rows it keeps, so a cold process pays for the types
it reads, not for whole views), a
second, single-threaded DuckDB database where a view's Parquet file becomes a SQL table for the
shapes the fast path leaves to SQL (a view answer is a small scan that gains nothing from
parallel workers), one cursor per thread on each, the health of every view, and the plan of
each query seen (a repeated query is not
routed again while nothing changed). Each query stats the Delta log directory and the view registry
(no file is opened) and reloads state, forgetting the plans, when either changed, so a
`prepare`, `build` or `ingest` by another process is picked up at once; a query whose files a
newer state swept meanwhile is planned again on that state. A damaged file never answers: a
view's or index's files are checked against their checksums when first opened in the process
(`core.checksum`), and a lake file before the first query that reads it; a damaged view or
index is marked unhealthy (noted in the damage register, `lake.damage`, named once on stderr)
and its queries planned again elsewhere, a damaged lake file fails its queries naming its raw
part (`lake.integrity`). Must stay a shell: validation
is `query.py`, SQL is `compiler.py`, the choice of source is `router.py`.
"""
from __future__ import annotations

import os
import sys
import threading
import weakref
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Iterable

import duckdb
import pyarrow as pa

from analytics.core import db
from analytics.core.checksum import ChecksumError, check
from analytics.core.closing import Closing
from analytics.core.memory import DEFAULT_MEMORY_LIMIT
from analytics.lake.damage import damage_path, load_damage, update_damage
from analytics.lake.index.keyfilter import KeyFilter
from analytics.lake.index.store import FILTER_ROWS, index_records
from analytics.lake.integrity import cheap_damage, check_segments
from analytics.lake.pruning import lake_files, lake_relation
from analytics.lake.state import Lake
from analytics.lake.table import LOG_DIR, STATE_DIR, take_lease
from analytics.query.compiler import ident
from analytics.query.model import Query, parse_query, types_selected
from analytics.query.shape import query_shape, shape_columns
from analytics.serving.router import LAKE, Plan, Router
from analytics.views.adaptive_catalog import adaptive_path, all_views, load_adaptive, usable_indexes
from analytics.views.answer.fastpath import ArrowView, RepeatedKeys
from analytics.views.answer.version import open_version
from analytics.views.delta import version_relation
from analytics.views.registry import ViewEntry, load_registry, registry_path, staleness
from analytics.views.serving_copy import ServingError, check_types

# Plans remembered per workbench; past this many distinct queries the memo starts afresh.
PLAN_MEMO_SIZE = 4096


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None


class Workbench(Closing):
    """Answers JSON queries over a prepared lake, from views where they are healthy.

    >>> wb = Workbench("data/lake")                                         # doctest: +SKIP
    >>> wb.query({"select": [{"COUNT": "*"}], "from": "events"})            # doctest: +SKIP
    """

    def __init__(self, lake: str | os.PathLike, *, use_views: bool = True, memory_limit: str = DEFAULT_MEMORY_LIMIT,
                 threads: int | None = None, fast_path: bool = True, as_of: int | str | None = None) -> None:
        self.root = Path(lake)
        # time travel: the lake as it stood at a version or time; views answer only where they hold
        # exactly its data. None follows the newest version.
        self.as_of = None if as_of is None else Lake.open(self.root, as_of).version
        # releases this process's lease on the version read: at close, at a new version, or at exit
        # (a notebook kernel seldom closes its workbench)
        self._lease: weakref.finalize | None = None
        self.use_views = use_views
        self.fast_path = fast_path  # answer view routes with Arrow (arrow_exec) before falling back to SQL
        self.memory_limit = memory_limit
        self.router = Router()
        self._con = db.connect(memory_limit=memory_limit, threads=threads)
        # footers read once per file, not per query: an index lookup 8 -> 4.8 ms at 15M
        self._con.execute("SET parquet_metadata_cache = true")
        # the views' SQL database, made on first use: the fast path answers nearly every view route
        # without it, and a connection costs ~30 ms of a new process here
        self._views_con: duckdb.DuckDBPyConnection | None = None
        self._local = threading.local()
        self._lock = threading.RLock()
        self._stamp: tuple[int | None, ...] | None = None
        self._ready_tables: set[str] = set()  # versions opened for the fast path
        self._sql_tables: set[str] = set()  # versions made SQL tables (over their Parquet)
        self._open_locks: dict[str, threading.Lock] = {}  # table name -> lock held while opening it
        self._load_errors: dict[str, str] = {}  # table name -> why it could not be loaded
        self._arrow: dict[str, ArrowView] = {}  # table name -> the view's fast path
        self._plans: dict[tuple[Query, bool], Plan] = {}
        self._filter_dirs: dict[str, Path] = {}  # usable row-group key filters -> their directory
        self._filters: dict[str, KeyFilter] = {}  # those opened (memory-mapped) so far
        self._index_records: dict[str, dict[str, Any]] = {}  # usable index -> its catalog record
        self._checked_indexes: set[tuple[str, int]] = set()  # (index, version) whose bytes were checked
        self._bad_indexes: dict[str, str] = {}  # index -> why it is damaged (this state)
        self._warned: set[str] = set()  # views and indexes named damaged on stderr by this process
        # plain strings: refresh runs on every query, and pathlib's joins cost more than the stats
        # a commit adds a file to the Delta log and then its state file: each changes its directory's mtime
        self._watched = (str(self.root / LOG_DIR), str(self.root / STATE_DIR), str(registry_path(self.root)), str(adaptive_path(self.root)),
                         str(damage_path(self.root)))
        self.lake: Lake
        self.registry: dict[str, ViewEntry] = {}
        self.health: dict[str, str | None] = {}
        self.views = all_views(self.root)  # the catalog and the lake's adaptive views
        self.refresh()

    # ---- state -------------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> None:
        """Reload lake, registry, adaptive catalog and damage register if one changed on disk since last
        time (five stat calls)."""
        stamp = tuple(_mtime(p) for p in self._watched)
        if stamp == self._stamp and not force:
            return
        with self._lock:
            if stamp == self._stamp and not force:
                return
            self.lake = Lake.open(self.root, self.as_of)
            self._renew_lease()
            try:
                self.lake.register(self._con, "events")
            except duckdb.IOException:
                # a committed file is missing: the views still answer; every lake statement checks its
                # files first (`_check_lake`, `check_lake`) and fails naming the file and its raw part
                self._con.execute("DROP VIEW IF EXISTS events")
            self.registry = load_registry(self.root)
            state = load_adaptive(self.root)  # read once: its views and its indexes
            self.views = all_views(self.root, state)
            self.damaged = load_damage(self.root)
            self._state_indexes = usable_indexes(self.lake, state)
            self._index_records = {ix.name: state["indexes"][ix.name] for ix, _ in self._state_indexes}
            self._bad_indexes = {}
            # (query, index) of lake plans whose files were checked on this state
            self._lake_checked: set[tuple[Query, str | None]] = set()
            self._route_indexes()
            self.health = {name: self._check(name) for name in self.views}
            for name, why in self.health.items():
                if why is not None and why.startswith("damaged"):
                    self._warn(f"view {name}", why)
            self._plans = {}
            self._stamp = stamp

    def _renew_lease(self) -> None:
        """Hold a lease on the version read, so that `analytics vacuum` keeps its files meanwhile."""
        old, path = self._lease, take_lease(self.root, self.lake.version)
        self._lease = None if path is None else weakref.finalize(self, path.unlink, missing_ok=True)
        if old is not None:  # released after the new one is taken: the versions read are never unleased
            old()

    def _route_indexes(self) -> None:
        """The router over the usable indexes not found damaged (the caller holds the lock)."""
        indexes = [(ix, rel) for ix, rel in self._state_indexes if ix.name not in self._bad_indexes]
        self.router = Router(tuple(self.views.values()), indexes, partial(lake_relation, self.lake))
        self._filter_dirs = {ix.name: self.root / self._index_records[ix.name]["dir"]
                             for ix, _ in indexes if ix.kind == "filter"}
        self._filters = {}
        self._plans = {}

    def _unhealthy(self, name: str, table: str, why: str, *, unload: bool = False) -> None:
        """Mark version `table` of view `name` unhealthy for this process and name it on stderr: the
        router no longer uses it and the plans made while it looked healthy are forgotten; with
        `unload`, its opened fast path is dropped too."""
        with self._lock:
            self._load_errors[table] = why
            self.health[name] = why
            if unload:
                self._ready_tables.discard(table)
                self._arrow.pop(table, None)
            self._plans = {}
        self._warn(f"view {name}", why)

    def _warn(self, what: str, why: str) -> None:
        """Name a damaged view or index on stderr, once per process."""
        if what not in self._warned:
            self._warned.add(what)
            print(f"analytics: warning: {what} is unhealthy ({why}); its queries are answered from another "
                  f"view or the lake; `analytics build` repairs it", file=sys.stderr)

    def _damaged(self, exc: ChecksumError) -> str:
        """Note a file found damaged in the register; the reason a view or index now gives."""
        path = Path(exc.path)
        rel = path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else exc.path
        update_damage(self.root, {rel: exc.why})
        return f"damaged: {rel}: {exc.why}"

    def _unusable(self, name: str, table: str, exc: ChecksumError | ServingError, *, unload: bool = False) -> None:
        """Mark a view version whose serving copy failed to open or to check unhealthy, naming the
        damaged file: the one whose bytes failed, or the first not matching its checksum when a
        structural check failed (a damaged file can fail those before its blocks are read)."""
        if isinstance(exc, ChecksumError):
            self._unhealthy(name, table, self._damaged(exc), unload=unload)
            return
        why = f"serving copy unusable: {str(exc).splitlines()[0]}"
        entry = self.registry[name]
        vdir = (self.root / entry.file).parent
        try:
            for version in entry.versions():
                if version.serving:
                    check_types(vdir, version.serving, version.serving["types"])
        except ChecksumError as damaged:
            why = self._damaged(damaged)
        self._unhealthy(name, table, why, unload=unload)

    def _check(self, name: str) -> str | None:
        why = staleness(self.views[name], self.lake, self.registry.get(name), self.damaged)
        return why if why is not None else self._load_errors.get(self.table_name(name))

    def table_name(self, name: str) -> str:
        return f"{name}__v{self.registry[name].version}"

    def _table_names(self) -> dict[str, str]:
        return {n: self.table_name(n) for n in self.registry if n in self.views}

    def _ensure_loaded(self, name: str) -> bool:
        """Open the view's current version once (memory-map its serving copy; no data page is read);
        on failure mark it unhealthy. Each version has its own lock, so opening one view never
        waits for another, and nothing is held while a query reads a view."""
        table = self.table_name(name)
        if table in self._ready_tables:
            return True
        if table in self._load_errors:
            return False
        with self._lock:
            lock = self._open_locks.setdefault(table, threading.Lock())
            entry, definition = self.registry[name], self.views.get(name)
        if definition is None:
            return False  # an adaptive view retired since the plan was made: plan again
        with lock:
            if table in self._ready_tables:
                return True
            try:
                # a type's files are opened on its first query, each batch's bytes checked as the
                # fast path first reads them (`views.batch_guard`)
                view = open_version(self.root, definition, entry, checked=False)
            except (ChecksumError, ServingError) as exc:
                self._unusable(name, table, exc)
                return False
            with self._lock:
                for old in [t for t in self._ready_tables if t.startswith(f"{name}__v")]:
                    self._arrow.pop(old, None)
                    self._ready_tables.discard(old)
                    self._sql_tables.discard(old)
                self._arrow[table] = view
                self._ready_tables.add(table)
            return True

    def _ensure_sql(self, name: str, cur: duckdb.DuckDBPyConnection) -> bool:
        """Make the view's current version a SQL table (over its Parquet file, whose zone maps prune
        by type and time) for the query shapes the fast path leaves to SQL; checked against the
        registry's schema on first use."""
        table = self.table_name(name)
        if table in self._sql_tables:
            return True
        entry = self.registry[name]
        try:
            for version in entry.versions():  # the Parquet files this SQL reads
                check(self.root / version.file, version.checksum)
            cur.execute(f"CREATE OR REPLACE VIEW {ident(table)} AS SELECT * FROM {version_relation(self.root, entry)}")
            schema = [[r[0], r[1]] for r in cur.execute(f"DESCRIBE {ident(table)}").fetchall()]
            if schema != entry.columns:
                raise ValueError(f"schema differs from the registry: {schema} vs {entry.columns}")
        except (duckdb.Error, ValueError) as exc:
            why = self._damaged(exc) if isinstance(exc, ChecksumError) else f"unreadable: {str(exc).splitlines()[0]}"
            self._unhealthy(name, table, why)
            return False
        with self._lock:
            self._sql_tables.add(table)
        return True

    def warm(self) -> dict[str, str | None]:
        """Load every healthy view now instead of on first use, each type's files opened (checked
        against the registry, head and footer against their checksums); returns the health of each."""
        self.refresh()
        for name, why in list(self.health.items()):
            if why is None and self._ensure_loaded(name):
                table = self.table_name(name)
                try:
                    self._arrow[table].slices  # noqa: B018 - opens the files a query opens on first use
                except (ChecksumError, ServingError) as exc:
                    self._unusable(name, table, exc, unload=True)
        return dict(self.health)

    def cursor(self, lake: bool = True) -> duckdb.DuckDBPyConnection:
        """This thread's cursor on the lake database, or on the views database."""
        attr = "lake_cursor" if lake else "views_cursor"
        cur = getattr(self._local, attr, None)
        if cur is None:
            cur = db.cursor(self._con if lake else self._views_db())
            setattr(self._local, attr, cur)
        return cur

    def _views_db(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._views_con is None:
                self._views_con = db.connect(memory_limit=self.memory_limit, threads=1)
            return self._views_con

    def set_memory_limit(self, memory_limit: str) -> None:
        """DuckDB's memory limit for lake statements from now on (e.g. `512MB`)."""
        self._con.execute("SET memory_limit = ?", [memory_limit])
        self.memory_limit = memory_limit

    # ---- queries -----------------------------------------------------------------------------
    @staticmethod
    def parse(query: dict[str, Any] | Query) -> Query:
        return query if isinstance(query, Query) else parse_query(query)

    def plan(self, query: dict[str, Any] | Query, use_views: bool | None = None) -> Plan:
        """The route for `query`: remembered from an earlier call unless the lake, the registry or a
        view's health changed since."""
        self.refresh()
        key = (self.parse(query), self.use_views if use_views is None else use_views)
        plans = self._plans
        plan = plans.get(key)
        if plan is None:
            plan = self.router.plan(key[0], self.registry, self.health, self._table_names(), key[1])
            plan = replace(plan, lake_version=self.lake.version,
                           view_version=self.registry[plan.route].version if plan.route != LAKE else None)
            if len(plans) >= PLAN_MEMO_SIZE:
                plans.clear()
            plans[key] = plan
        return plan

    def execute(self, query: dict[str, Any] | Query, use_views: bool | None = None,
                plan: Plan | None = None) -> tuple[pa.Table, Plan]:
        """The answer and the plan that produced it (route, candidates, fallback reason).

        A `plan` just made by `self.plan` for this query is used on the first attempt instead of
        planning again; if its view turns out unhealthy the query is planned afresh."""
        q = self.parse(query)
        given = plan
        for _ in range(3):
            plan, given = (given, None) if given is not None else (self.plan(q, use_views), None)
            if plan.route != LAKE and not self._ensure_loaded(plan.route):
                continue  # now marked unhealthy: plan again
            if plan.index is not None and not self._index_intact(plan.index):
                continue  # now left out of the router: plan again
            if plan.route == LAKE:
                self._check_lake(q, plan)
            view = self._arrow.get(self.table_name(plan.route)) if plan.route != LAKE else None
            if view is not None and self.fast_path:
                try:
                    table = view.answer(q)
                except RepeatedKeys as exc:  # a wrong answer, never returned: another route answers
                    self._unhealthy(plan.route, self.table_name(plan.route), f"answered wrongly ({exc})")
                    continue
                except (ChecksumError, ServingError) as exc:  # found before any damaged byte was used
                    self._unusable(plan.route, self.table_name(plan.route), exc, unload=True)
                    continue
                if table is not None:
                    return table, plan
            cur = self.cursor(plan.route == LAKE)
            try:
                if view is not None and not self._ensure_sql(plan.route, cur):
                    continue  # now marked unhealthy: plan again
                if plan.index in self._filter_dirs:
                    return self._through_filter(cur, q, plan), plan
                return db.fetch_arrow(cur, plan.sql, plan.params), plan
            except duckdb.CatalogException:
                if plan.route == LAKE:
                    raise
                continue  # a newer version replaced the table meanwhile: plan again
            except duckdb.IOException:
                continue  # a file of the state it read was swept by a newer prepare or build: plan again
        plan = self.plan(q, use_views=False)
        self._check_lake(q, plan)
        return db.fetch_arrow(self.cursor(), plan.sql, plan.params), plan

    def _index_intact(self, name: str) -> bool:
        """Whether the index's files match their checksums (read once per version and process); a
        damaged one is noted, named on stderr and left out of the router."""
        record = self._index_records.get(name)
        if record is None:
            return False
        key = (name, int(record.get("version", 0)))
        if key in self._checked_indexes:
            return True
        try:
            for rel, rec in index_records(record).items():
                check(self.root / rel, rec)
        except ChecksumError as exc:
            why = self._damaged(exc)
            with self._lock:
                self._bad_indexes[name] = why
                self._route_indexes()
            self._warn(f"index {name}", why)
            return False
        with self._lock:
            self._checked_indexes.add(key)
        return True

    def _check_lake(self, query: Query, plan: Plan) -> None:
        """Check the lake files a lake plan reads (`lake.integrity`: each once per process); a damaged
        one raises DamagedSegmentError naming it and its raw part. Only the columns the query reads and
        the footers are checked (`lake.integrity`). A sorted index reads no lake file; a row-group
        filter reads the lake files of its types."""
        key = (query, plan.index)
        if key in self._lake_checked:
            return
        columns = shape_columns(query_shape(query))  # only their chunks and the footers are read
        if plan.index is None:
            files = lake_files(self.lake, query)
        elif plan.index in self._filter_dirs:
            files = self.lake.event_files(self._index_records[plan.index]["types"])
            columns |= {self._index_records[plan.index]["key"]}
        else:
            files = []
        check_segments(self.lake, files, columns)
        with self._lock:
            self._lake_checked.add(key)

    def lake_damage(self, query: dict[str, Any] | Query) -> list[str]:
        """What a stat and the damage register say of the lake files a lake-routed `query` reads: one
        message per damaged file, naming its raw part (no file is read; for `explain`)."""
        q = self.parse(query)
        self.refresh()
        wanted = {f.relative_to(self.lake.root).as_posix() for f in lake_files(self.lake, q)}
        return [why for rel, why in cheap_damage(self.lake, self.damaged).items() if rel in wanted]

    def check_lake(self, queries: Iterable[Query]) -> None:
        """Check the lake a statement over `events` answering `queries` (a shared scan) reads: the files
        of their event types in every segment, the columns any of them reads."""
        qs = list(queries)
        types = set().union(*(types_selected(q.where) for q in qs))
        columns = set().union(*(shape_columns(query_shape(q)) for q in qs))
        check_segments(self.lake, self.lake.event_files(types), columns)

    def _through_filter(self, cur: duckdb.DuckDBPyConnection, query: Query, plan: Plan) -> pa.Table:
        """A lake query through a row-group key filter: the lake rows of the key's values from the
        row groups it names, registered on this thread's cursor for the plan's own statement."""
        kf = self._filters.get(plan.index)
        if kf is None:
            try:
                kf = self._filters[plan.index] = KeyFilter(self._filter_dirs[plan.index])
            except (OSError, ValueError, KeyError):  # changed on disk since it was checked: the lake
                lake_plan = self.plan(query, use_views=False)
                return db.fetch_arrow(cur, lake_plan.sql, lake_plan.params)
        cond = next(c for c in query.where if c.col == kf.key and c.op in ("eq", "in"))
        cur.register(FILTER_ROWS, kf.rows(self.root, cur, cond.values, shape_columns(query_shape(query))))
        try:
            return db.fetch_arrow(cur, plan.sql, plan.params)
        finally:
            cur.unregister(FILTER_ROWS)

    def query(self, query: dict[str, Any] | Query) -> pa.Table:
        """The answer as an Arrow table, columns named as the contract's CSV header."""
        return self.execute(query)[0]

    def explain(self, query: dict[str, Any] | Query) -> str:
        """The chosen route, every candidate view with its estimated cost or why it was rejected, the SQL."""
        return self.plan(query).describe()

    def close(self) -> None:
        if self._lease is not None:
            self._lease()
        self._con.close()
        if self._views_con is not None:
            self._views_con.close()
