"""The explorer of notebook 00: widget values -> contract JSON query -> answer, route, explanation, CSV.

Owns the explorer's choices (groupings, measures, the country / advertiser / publisher filters),
turning one selection into the contract's JSON query (`explorer_query`), everything shown for
one answer (`answer`: chart, route and rows line, compute time, the router's explanation, the
query's JSON and a CSV download link) and the ipywidgets form (`Explorer`) that the notebook
only displays. Must not plan, compile or run SQL itself: answers come from `Workbench`.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import json
from typing import Any, Sequence

from analytics.query.model import parse_query
from analytics.query.results import to_csv_text
from analytics.query.schema import COUNTRIES, EVENT_TYPES, N_ADVERTISERS, N_PUBLISHERS
from analytics.reports.notebooks import figure_output, run_query

EXPLORER_GROUPINGS: tuple[str, ...] = ("day", "week", "hour", "country", "advertiser_id", "publisher_id")
EXPLORER_MEASURES: tuple[str, ...] = ("COUNT(*)", "SUM(bid_price)", "AVG(bid_price)", "SUM(total_price)",
                                      "AVG(total_price)")
TIME_GROUPINGS = frozenset({"day", "week", "hour"})
ENTITY_TOP = 50
TABLE_ROWS = 50  # rows of the answer shown as a table (the CSV link has them all)
ALL = "all"  # the country dropdown's "no filter"
ID_RANGES: dict[str, int] = {"advertiser_id": N_ADVERTISERS, "publisher_id": N_PUBLISHERS}


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
                   publisher_id: str | int | Sequence[int] | None = None, top: int = ENTITY_TOP) -> dict[str, Any]:
    """The contract JSON query for one explorer selection.

    Time groupings come in time order; entity groupings are ranked by the measure (largest
    first), advertisers and publishers cut to the `top` ones. `country` (None or `all`: every
    country) and the id filters (see `parse_ids`) narrow the rows before grouping.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"event type must be one of {', '.join(EVENT_TYPES)}, got {event_type!r}")
    if grouping not in EXPLORER_GROUPINGS:
        raise ValueError(f"grouping must be one of {', '.join(EXPLORER_GROUPINGS)}, got {grouping!r}")
    if measure not in EXPLORER_MEASURES:
        raise ValueError(f"measure must be one of {', '.join(EXPLORER_MEASURES)}, got {measure!r}")
    if country not in (None, "", ALL, *COUNTRIES):
        raise ValueError(f"country must be one of {', '.join(COUNTRIES)} or {ALL!r}, got {country!r}")
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
        if grouping != "country":
            q["limit"] = top
    return q


def explorer_figure(frame: Any, grouping: str, measure: str, event_type: str) -> Any:
    """A line over time for time groupings, bars for entities (ids as categories)."""
    import plotly.express as px
    import plotly.graph_objects as go

    title = f"{measure} of {event_type} events by {grouping}"
    if len(frame) == 0:
        return go.Figure(layout={"title": {"text": title + " (no rows)"}})
    if grouping in TIME_GROUPINGS:
        return px.line(frame, x=grouping, y=measure, markers=len(frame) <= 60, title=title)
    fig = px.bar(frame, x=frame[grouping].astype(str), y=measure, labels={"x": grouping}, title=title)
    fig.update_xaxes(type="category")
    return fig


def csv_link(query: dict[str, Any], table: Any, filename: str = "answer.csv") -> str:
    """An HTML link that downloads the answer as the contract's CSV (a data: URI, no server needed)."""
    text = to_csv_text(parse_query(query), table)
    data = base64.b64encode(text.encode("utf-8")).decode("ascii")
    return (f'<a download="{html.escape(filename)}" href="data:text/csv;charset=utf-8;base64,{data}">'
            f"Download the answer as CSV ({table.num_rows:,} rows)</a>")


def status_line(result: dict[str, Any]) -> str:
    """`N row(s) via route R in T ms`: what the explorer shows above the chart."""
    return f"{result['rows']:,} row(s) via route {result['route']} in {result['ms']:.1f} ms"


def answer(wb: Any, query: dict[str, Any]) -> dict[str, Any]:
    """Everything the explorer shows for `query`: `run_query`'s result plus the figure, the status
    line, the router's explanation (`Workbench.explain`), the query's JSON and the CSV link (as HTML)."""
    result = run_query(wb, query)
    grouping = query["group_by"][0]
    measure = next(f"{f}({c})" for item in query["select"] if isinstance(item, dict) for f, c in item.items())
    result.update(
        grouping=grouping, measure=measure,
        figure=explorer_figure(result["frame"], grouping, measure, query["where"][0]["val"]),
        status=status_line(result), explain=wb.explain(query), csv_link=csv_link(query, result["table"]),
        query_json=json.dumps(query, separators=(", ", ": ")),
    )
    result["query_html"] = (f"<p>query: <code>{html.escape(result['query_json'])}</code></p>"
                            f"<p>{result['csv_link']}</p>")
    return result


class Explorer:
    """The explorer form: filters, grouping and measure, a Run button, an explain toggle, and the answer.

    `widget` is what the notebook displays; `run()` (also the Run button) answers the current
    selection and keeps it in `last`. A bad selection (e.g. a mistyped id) is shown in red in the
    status line instead of raising, so the form stays usable.
    """

    def __init__(self, wb: Any, *, event_type: str, start: str | dt.date, end: str | dt.date, grouping: str,
                 measure: str, country: str | None = None, advertiser_id: str | int | None = None,
                 publisher_id: str | int | None = None, explain: bool = False) -> None:
        import ipywidgets as W

        self.wb = wb
        self.last: dict[str, Any] | None = None
        self.error: str | None = None
        wide = {"description_width": "initial"}
        self.event_type = W.Dropdown(options=EVENT_TYPES, value=event_type, description="event type", style=wide)
        self.grouping = W.Dropdown(options=EXPLORER_GROUPINGS, value=grouping, description="group by", style=wide)
        self.measure = W.Dropdown(options=EXPLORER_MEASURES, value=measure, description="measure", style=wide)
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
        self.widget = W.VBox([
            W.HBox([self.event_type, self.grouping, self.measure]),
            W.HBox([self.country, self.advertiser_id, self.publisher_id]),
            W.HBox([self.start, self.end, self.run_button, self.explain_toggle]),
            self.status, self.chart, self.explain_box, self.query_box, self.table,
        ]).add_class("explorer")

    def query(self) -> dict[str, Any]:
        """The JSON query for the widgets' current values (ValueError for a bad selection)."""
        if self.start.value is None or self.end.value is None:
            raise ValueError("pick both dates")
        return explorer_query(self.event_type.value, self.start.value, self.end.value, self.grouping.value,
                              self.measure.value, country=self.country.value, advertiser_id=self.advertiser_id.value,
                              publisher_id=self.publisher_id.value)

    def run(self) -> dict[str, Any] | None:
        """Answer the current selection and show it; None (and the error in red) when it fails."""
        # outputs are set on the widget rather than captured with `with self.chart:`, which can
        # deadlock a headless run (papermill/nbclient mirror captured outputs back into the busy kernel)
        self.chart.outputs = ()
        try:
            result = answer(self.wb, self.query())
        except Exception as exc:  # noqa: BLE001 - shown in the form; the explorer stays usable
            self.last, self.error = None, f"{type(exc).__name__}: {exc}"
            self.status.value = f'<b style="color:#c62828">error: {html.escape(self.error)}</b>'
            self.explain_box.value = self.query_box.value = self.table.value = ""
            return None
        self.last, self.error = result, None
        self.status.value = f"<b>{html.escape(result['status'])}</b>"
        self.chart.outputs = (figure_output(result["figure"]),)
        self.query_box.value = result["query_html"]
        self.table.value = result["frame"].head(TABLE_ROWS).to_html(index=False, border=0, classes="explorer-answer")
        self._show_explain()
        return result

    def _show_explain(self) -> None:
        shown = self.explain_toggle.value and self.last is not None
        self.explain_box.value = f"<pre>{html.escape(self.last['explain'])}</pre>" if shown else ""
