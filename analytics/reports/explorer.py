"""The explorer of notebook 00: widget values -> contract JSON query -> answer, route, explanation, CSV.

Owns the explorer's choices (groupings, measures, the country / advertiser / publisher filters),
turning one selection into the contract's JSON query (`explorer_query`) or refusing one that
cannot mean anything (`Refused`: a price the event type does not carry, a reversed or empty date
range), everything shown for one answer (`answer`: chart, route and rows line with any top-N cut,
compute time, the router's explanation, the query's JSON, a styled table and a CSV download link)
and the ipywidgets form (`Explorer`) that the notebook only displays. Must not plan, compile or
run SQL itself: answers come from `Workbench`.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import json
from typing import Any, Sequence

from analytics.query.model import parse_query
from analytics.query.results import to_csv_text
from analytics.query.schema import COUNTRIES, EVENT_TYPES, N_ADVERTISERS, N_PUBLISHERS, PRICE_TYPES
from analytics.reports.notebooks import figure_output, run_query

EXPLORER_GROUPINGS: tuple[str, ...] = ("day", "week", "hour", "country", "advertiser_id", "publisher_id")
EXPLORER_MEASURES: tuple[str, ...] = ("COUNT(*)", "SUM(bid_price)", "AVG(bid_price)", "SUM(total_price)",
                                      "AVG(total_price)")
TIME_GROUPINGS = frozenset({"day", "week", "hour"})
ENTITY_TOP = 50  # advertisers or publishers shown by default: the bar chart stays readable
TOP_CHOICES: tuple[int, ...] = (10, 50, 100, 500, 0)  # the form's choice of top N; 0: all rows
TABLE_ROWS = 50  # rows of the answer shown as a table (the CSV link has them all)
ALL = "all"  # the country dropdown's "no filter"
ID_RANGES: dict[str, int] = {"advertiser_id": N_ADVERTISERS, "publisher_id": N_PUBLISHERS}
ENTITY_NAMES: dict[str, str] = {"advertiser_id": "advertisers", "publisher_id": "publishers"}
# The answer table's look, shipped with it: JupyterLab's default table style is not applied
# inside an ipywidgets HTML output (no borders, header out of line with its column, tall rows).
TABLE_CSS = """<style>
table.explorer-answer {border-collapse: collapse; font-size: 12px; line-height: 1.3; margin: 4px 0}
table.explorer-answer th, table.explorer-answer td {border: 1px solid #c8c8c8; padding: 2px 8px}
table.explorer-answer th {background: #f0f0f0; font-weight: 600}
table.explorer-answer td.num, table.explorer-answer th.num {text-align: right; font-variant-numeric: tabular-nums}
table.explorer-answer td.txt, table.explorer-answer th.txt {text-align: left}
</style>"""


class Refused(ValueError):
    """A well-formed selection that cannot mean anything; the form says why instead of running it."""


def _measure_column(measure: str) -> str:
    return measure[:-1].split("(")[1]


def measure_label(measure: str) -> str:
    """The measure as the form offers it, naming the only event type whose rows carry its price."""
    types = PRICE_TYPES.get(_measure_column(measure))
    return f"{measure} · {', '.join(t + 's' for t in types)} only" if types else measure


def check_selection(event_type: str, start: str | dt.date | None, end: str | dt.date | None, measure: str) -> None:
    """Refuse a selection whose answer could only be empty or all NULL, saying why."""
    if start in (None, "") or end in (None, ""):
        raise Refused("pick both dates: the date range is empty")
    if dt.date.fromisoformat(str(start)) > dt.date.fromisoformat(str(end)):
        raise Refused(f"the from-date {start} is after the to-date {end}: no day can match; swap them")
    column = _measure_column(measure)
    types = PRICE_TYPES.get(column)
    if types and event_type not in types:
        carriers = " and ".join(t + "s" for t in types)
        raise Refused(f"{event_type} events carry no {column}: only {carriers} do, so {measure} would be empty "
                      f"for every group; pick COUNT(*), or event type {types[0]}")


def parse_ids(text: str | int | Sequence[int] | None, column: str) -> list[int]:
    """An id filter as typed in the explorer: empty means all, else one id or several, comma-separated."""
    if column not in ID_RANGES:
        raise ValueError(f"no id filter on {column!r}; allowed: {', '.join(ID_RANGES)}")
    if text is None or text == "":
        return []
    if isinstance(text, str):
        items: list[Any] = [t.strip() for t in text.split(",") if t.strip()]
    elif isinstance(text, int):
        items = [text]
    else:
        items = list(text)
    ids = []
    for item in items:
        try:
            value = int(item)
        except (TypeError, ValueError):
            raise ValueError(f"{column}: {item!r} is not a whole number; allowed 1..{ID_RANGES[column]}, "
                             "several separated by commas, or empty for all") from None
        if not 1 <= value <= ID_RANGES[column]:
            raise ValueError(f"{column}: {value} is out of range; allowed 1..{ID_RANGES[column]}")
        ids.append(value)
    return ids


def explorer_query(event_type: str, start: str | dt.date, end: str | dt.date, grouping: str, measure: str, *,
                   country: str | None = None, advertiser_id: str | int | Sequence[int] | None = None,
                   publisher_id: str | int | Sequence[int] | None = None,
                   top: int | None = ENTITY_TOP) -> dict[str, Any]:
    """The contract JSON query for one explorer selection (`Refused` when it cannot mean anything).

    Time groupings come in time order; entity groupings are ranked by the measure (largest
    first), advertisers and publishers cut to the `top` ones (0 or None: all). `country` (None or
    `all`: every country) and the id filters (see `parse_ids`) narrow the rows before grouping.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"event type must be one of {', '.join(EVENT_TYPES)}, got {event_type!r}")
    if grouping not in EXPLORER_GROUPINGS:
        raise ValueError(f"grouping must be one of {', '.join(EXPLORER_GROUPINGS)}, got {grouping!r}")
    if measure not in EXPLORER_MEASURES:
        raise ValueError(f"measure must be one of {', '.join(EXPLORER_MEASURES)}, got {measure!r}")
    if country not in (None, "", ALL, *COUNTRIES):
        raise ValueError(f"country must be one of {', '.join(COUNTRIES)} or {ALL!r}, got {country!r}")
    check_selection(event_type, start, end, measure)
    func, col = measure[:-1].split("(")
    where: list[dict[str, Any]] = [{"col": "type", "op": "eq", "val": event_type},
                                   {"col": "day", "op": "between", "val": [str(start), str(end)]}]
    if country not in (None, "", ALL):
        where.append({"col": "country", "op": "eq", "val": country})
    for column, given in (("advertiser_id", advertiser_id), ("publisher_id", publisher_id)):
        ids = parse_ids(given, column)
        if len(ids) == 1:
            where.append({"col": column, "op": "eq", "val": ids[0]})
        elif ids:
            where.append({"col": column, "op": "in", "val": ids})
    q: dict[str, Any] = {"select": [grouping, {func: col}], "from": "events", "where": where, "group_by": [grouping]}
    if grouping in TIME_GROUPINGS:
        q["order_by"] = [{"col": grouping, "dir": "asc"}]
    else:
        q["order_by"] = [{"col": measure, "dir": "desc"}, {"col": grouping, "dir": "asc"}]
        if grouping != "country" and top:
            q["limit"] = top
    return q


def periods(grouping: str, start: str | dt.date, end: str | dt.date) -> int:
    """How many days, weeks (Monday-based) or hours the date range spans: what a dense series holds."""
    lo, hi = dt.date.fromisoformat(str(start)), dt.date.fromisoformat(str(end))
    days = (hi - lo).days + 1
    if grouping == "hour":
        return days * 24
    if grouping == "week":
        return ((hi - dt.timedelta(hi.weekday())) - (lo - dt.timedelta(lo.weekday()))).days // 7 + 1
    return days


def explorer_figure(frame: Any, grouping: str, measure: str, title: str, expected_periods: int | None = None) -> Any:
    """Bars for entities (ids as categories); over time a line when every period of the range has a
    row, else bars: a line would join the rows across the missing periods as if they held values."""
    import plotly.express as px
    import plotly.graph_objects as go

    if len(frame) == 0:
        return go.Figure(layout={"title": {"text": title + " (no rows)"}})
    if grouping in TIME_GROUPINGS:
        if expected_periods is not None and len(frame) < expected_periods:
            return px.bar(frame, x=grouping, y=measure,
                          title=f"{title} ({len(frame):,} of {expected_periods:,} {grouping}s have events)")
        return px.line(frame, x=grouping, y=measure, markers=len(frame) <= 60, title=title)
    fig = px.bar(frame, x=frame[grouping].astype(str), y=measure, labels={"x": grouping}, title=title)
    fig.update_xaxes(type="category")
    return fig


def _cell(value: Any, count: bool) -> str:
    import pandas as pd

    if pd.isna(value):
        return ""
    return f"{int(value):,}" if count else html.escape(str(value))


def table_html(frame: Any, measure: str | None = None, rows: int = TABLE_ROWS) -> str:
    """The first `rows` of the answer as a compact bordered table (class `explorer-answer`), numbers
    right-aligned under right-aligned headers, counts with thousands separators, NULL shown empty."""
    import pandas as pd

    head = frame.head(rows)
    align = {c: "num" if pd.api.types.is_numeric_dtype(head[c]) else "txt" for c in head.columns}
    counts = {c: c == measure and pd.api.types.is_integer_dtype(head[c]) for c in head.columns}
    header = "".join(f'<th class="{align[c]}">{html.escape(str(c))}</th>' for c in head.columns)
    body = "".join("<tr>" + "".join(f'<td class="{align[c]}">{_cell(v, counts[c])}</td>'
                                    for c, v in zip(head.columns, row)) + "</tr>"
                   for row in head.itertuples(index=False))
    more = f"<p>first {rows} of {len(frame):,} rows; the CSV has them all</p>" if len(frame) > rows else ""
    return f'{TABLE_CSS}<table class="explorer-answer"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>{more}'


def csv_link(query: dict[str, Any], table: Any, filename: str = "answer.csv") -> str:
    """An HTML link that downloads the answer as the contract's CSV (a data: URI, no server needed)."""
    text = to_csv_text(parse_query(query), table)
    data = base64.b64encode(text.encode("utf-8")).decode("ascii")
    # styled inline: JupyterLab's theme renders a bare <a> in a widget as plain black text
    return (f'<a class="explorer-download" style="color:#1565c0;text-decoration:underline;font-weight:600" '
            f'download="{html.escape(filename)}" href="data:text/csv;charset=utf-8;base64,{data}">'
            f"⬇ Download the answer as CSV ({table.num_rows:,} rows, {html.escape(filename)})</a>")


def csv_name(event_type: str, measure: str, grouping: str, top: int | None) -> str:
    """`click_sum_bid_price_by_advertiser_id_top50.csv`: the selection, and its cut when there is one."""
    slug = measure.lower().replace("(*)", "").replace("(", "_").replace(")", "")
    return f"{event_type}_{slug}_by_{grouping}" + (f"_top{top}" if top else "") + ".csv"


def cut_text(result: dict[str, Any]) -> str:
    """`top 50 of 1,654 advertisers` when a limit cut the answer, else empty."""
    top, groups = result.get("top"), result.get("groups")
    if not top or groups is None or groups <= result["rows"]:
        return ""
    return f"top {top} of {groups:,} {ENTITY_NAMES[result['grouping']]}"


def status_line(result: dict[str, Any]) -> str:
    """`N row(s) via route R (lake version L, view version V) in T ms`, then the top-N cut if any: what
    the explorer shows above the chart."""
    cut = cut_text(result)
    view = f", view version {result['view_version']}" if result.get("view_version") is not None else ""
    return (f"{result['rows']:,} row(s) via route {result['route']} (lake version {result.get('lake_version')}{view}) "
            f"in {result['ms']:.1f} ms"
            + (f" · {cut} by {result['measure']}" if cut else ""))


def answer(wb: Any, query: dict[str, Any]) -> dict[str, Any]:
    """Everything the explorer shows for `query`: `run_query`'s result plus the figure, the status
    line, the router's explanation (`Workbench.explain`), the query's JSON, the table and the CSV
    link (as HTML). When a limit cut the answer, the groups it was cut from are counted by the same
    query without the limit, so the status, the chart title and the CSV name can say top N of how many."""
    result = run_query(wb, query)
    grouping = query["group_by"][0]
    event_type = query["where"][0]["val"]
    start, end = query["where"][1]["val"]
    measure = next(f"{f}({c})" for item in query["select"] if isinstance(item, dict) for f, c in item.items())
    top = query.get("limit")
    groups = result["rows"]
    if top and result["rows"] == top:
        groups = wb.query({k: v for k, v in query.items() if k != "limit"}).num_rows
    result.update(grouping=grouping, measure=measure, top=top, groups=groups)
    cut = cut_text(result)
    title = f"{measure} of {event_type} events by {grouping}" + (f", {cut}" if cut else "")
    expected = periods(grouping, start, end) if grouping in TIME_GROUPINGS else None
    result.update(
        figure=explorer_figure(result["frame"], grouping, measure, title, expected),
        status=status_line(result), explain=wb.explain(query),
        csv_link=csv_link(query, result["table"], csv_name(event_type, measure, grouping, top if cut else None)),
        query_json=json.dumps(query, separators=(", ", ": ")), table_html=table_html(result["frame"], measure),
    )
    result["query_html"] = (f"<p>query: <code>{html.escape(result['query_json'])}</code></p>"
                            f"<p>{result['csv_link']}</p>")
    return result


def refusal_html(message: str) -> str:
    """A refused selection as the form and the notebook show it: a notice, not an error."""
    return f'<b class="explorer-refused" style="color:#8a4b00">{html.escape(message)}</b>'


class Explorer:
    """The explorer form: filters, grouping, measure and top N, a Run button, an explain toggle, and the answer.

    `widget` is what the notebook displays; `run()` (also the Run button) answers the current
    selection and keeps it in `last`. A refused selection (`Refused`: a price the event type lacks,
    a reversed or empty date range) is said in the status line, a bad one (e.g. a mistyped id) shown
    in red, instead of raising, so the form stays usable; neither leaves a chart or table behind.
    """

    def __init__(self, wb: Any, *, event_type: str, start: str | dt.date, end: str | dt.date, grouping: str,
                 measure: str, country: str | None = None, advertiser_id: str | int | None = None,
                 publisher_id: str | int | None = None, top: int = ENTITY_TOP, explain: bool = False) -> None:
        import ipywidgets as W

        self.wb = wb
        self.last: dict[str, Any] | None = None
        self.error: str | None = None
        wide = {"description_width": "initial"}
        self.event_type = W.Dropdown(options=EVENT_TYPES, value=event_type, description="event type", style=wide)
        self.grouping = W.Dropdown(options=EXPLORER_GROUPINGS, value=grouping, description="group by", style=wide)
        self.measure = W.Dropdown(options=[(measure_label(m), m) for m in EXPLORER_MEASURES], value=measure,
                                  description="measure", style=wide)
        self.top = W.Dropdown(options=[(f"top {n}" if n else "all rows", n) for n in TOP_CHOICES],
                              value=top if top in TOP_CHOICES else ENTITY_TOP, description="advertisers/publishers",
                              style=wide, tooltip="how many advertisers or publishers, largest first")
        self.country = W.Dropdown(options=(ALL, *COUNTRIES), value=country or ALL, description="country", style=wide)
        self.advertiser_id = W.Text(value="" if advertiser_id is None else str(advertiser_id), placeholder=ALL,
                                    description="advertiser id", continuous_update=False, style=wide)
        self.publisher_id = W.Text(value="" if publisher_id is None else str(publisher_id), placeholder=ALL,
                                   description="publisher id", continuous_update=False, style=wide)
        self.start = W.DatePicker(value=dt.date.fromisoformat(str(start)), description="from", style=wide)
        self.end = W.DatePicker(value=dt.date.fromisoformat(str(end)), description="to", style=wide)
        self.run_button = W.Button(description="Run", button_style="primary", icon="play")
        self.explain_toggle = W.ToggleButton(value=bool(explain), description="explain", icon="question",
                                             tooltip="why the router chose this route")
        self.status = W.HTML().add_class("explorer-status")
        self.chart = W.Output().add_class("explorer-chart")
        self.explain_box = W.HTML().add_class("explorer-explain")
        self.query_box = W.HTML().add_class("explorer-query")
        self.table = W.HTML().add_class("explorer-table")
        self.run_button.on_click(lambda _: self.run())
        self.explain_toggle.observe(lambda _: self._show_explain(), names="value")
        self.grouping.observe(lambda _: self._enable_top(), names="value")
        self._enable_top()
        self.widget = W.VBox([
            W.HBox([self.event_type, self.grouping, self.measure]),
            W.HBox([self.country, self.advertiser_id, self.publisher_id]),
            W.HBox([self.start, self.end, self.top, self.run_button, self.explain_toggle]),
            self.status, self.chart, self.explain_box, self.query_box, self.table,
        ]).add_class("explorer")

    def query(self) -> dict[str, Any]:
        """The JSON query for the widgets' current values (`Refused` or ValueError for a bad selection)."""
        return explorer_query(self.event_type.value, self.start.value, self.end.value, self.grouping.value,
                              self.measure.value, country=self.country.value, advertiser_id=self.advertiser_id.value,
                              publisher_id=self.publisher_id.value, top=self.top.value)

    def run(self) -> dict[str, Any] | None:
        """Answer the current selection and show it; None (and why, in the status line) when it fails."""
        # outputs are set on the widget rather than captured with `with self.chart:`, which can
        # deadlock a headless run (papermill/nbclient mirror captured outputs back into the busy kernel)
        # the status line changes last: the page shows every other part of an answer (or their
        # clearing) by the time the status says what happened
        self.chart.outputs = ()
        try:
            result = answer(self.wb, self.query())
        except Exception as exc:  # noqa: BLE001 - shown in the form; the explorer stays usable
            self.last = None
            self.explain_box.value = self.query_box.value = self.table.value = ""
            if isinstance(exc, Refused):
                self.error = str(exc)
                self.status.value = refusal_html(self.error)
            else:
                self.error = f"{type(exc).__name__}: {exc}"
                self.status.value = f'<b style="color:#c62828">error: {html.escape(self.error)}</b>'
            return None
        self.last, self.error = result, None
        self.chart.outputs = (figure_output(result["figure"]),)
        self.query_box.value = result["query_html"]
        self.table.value = result["table_html"]
        self._show_explain()
        self.status.value = f"<b>{html.escape(result['status'])}</b>"
        return result

    def _enable_top(self) -> None:
        # only advertisers and publishers are cut to a top N (days, weeks, hours and countries never are)
        self.top.disabled = self.grouping.value not in ID_RANGES

    def _show_explain(self) -> None:
        shown = self.explain_toggle.value and self.last is not None
        self.explain_box.value = f"<pre>{html.escape(self.last['explain'])}</pre>" if shown else ""
