"""Reports: executing the notebooks with papermill, exporting them to HTML, and the notebooks' helpers.

Owns how a notebook becomes a report (`reports/NN_name.ipynb`, `.html`, and the input-hidden
`.results.html`), written under temporary names and renamed into place only when the whole
notebook ran, so a failed run never leaves a report that passes for complete; the Jupyter
kernel the reports run on (`analytics`, always this interpreter); and the small helpers the
notebooks call so they stay thin shells (offline plotly, figures inside widgets, timed queries,
the lake summary; the explorer, the view registry and the guardrail report have modules of their
own beside this one). Must not hold query, lake or view logic: that is the rest of the package.

`analytics bench reports --lake LAKE [--raw RAW] [--out reports] [--only 01 ...]` is what
`make reports` and `make benchmark` run.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

ROOT = Path(__file__).resolve().parents[2]  # the checkout: analytics/reports/notebooks.py
NOTEBOOKS_DIR = ROOT / "notebooks"
KERNEL_NAME = "analytics"

# ---------------------------------------------------------------------------------------------
# Kernel and execution


def _kernel_runs_this_python(name: str) -> bool:
    """Whether the Jupyter kernel `name` exists and starts this very interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        return False
    return bool(spec.argv) and os.path.abspath(spec.argv[0]) == os.path.abspath(sys.executable)


def ensure_kernel(name: str = KERNEL_NAME) -> str:
    """Make the Jupyter kernel `name` run this very interpreter; returns the kernel name.

    `make setup` registers `analytics` inside `.venv`, but a kernel of that name in the user's
    Jupyter directory (an older checkout's setup) comes first on Jupyter's search path. When the
    spec found does not run `sys.executable`, the one in this environment's prefix (or, if there is
    none, a private spec written under the temp directory) is put first on `JUPYTER_PATH` for this
    process and the kernels it starts; nothing is written to the user's home.
    """
    if _kernel_runs_this_python(name):
        return name
    base = Path(sys.prefix) / "share" / "jupyter"
    if not _spec_runs_this_python(base / "kernels" / name / "kernel.json"):
        tag = hashlib.blake2b(sys.executable.encode(), digest_size=6).hexdigest()
        base = Path(tempfile.gettempdir()) / f"analytics-jupyter-{tag}"
        kdir = base / "kernels" / name
        kdir.mkdir(parents=True, exist_ok=True)
        spec_json = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                     "display_name": name, "language": "python", "metadata": {"debugger": True}}
        tmp = kdir / f".kernel.json.{os.getpid()}"
        tmp.write_text(json.dumps(spec_json, indent=1))
        os.replace(tmp, kdir / "kernel.json")
    paths = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p and p != str(base)]
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(base), *paths])
    return name


def _spec_runs_this_python(spec: Path) -> bool:
    try:
        argv = json.loads(spec.read_text())["argv"]
    except (OSError, ValueError, KeyError):
        return False
    return bool(argv) and os.path.abspath(argv[0]) == os.path.abspath(sys.executable)


def register_kernel(name: str = KERNEL_NAME, prefix: str | os.PathLike | None = None) -> bool:
    """`make kernel`: register the Jupyter kernel `name` to run this interpreter, inside `prefix`
    (default: this environment, `.venv`), never in the user's home: a kernel there would outlive
    the checkout, and a second checkout's setup would silently take it over.

    A no-op (returns False) when `prefix` already holds it; otherwise runs `ipykernel install --prefix`.
    """
    prefix = Path(prefix or sys.prefix)
    if _spec_runs_this_python(prefix / "share" / "jupyter" / "kernels" / name / "kernel.json"):
        return False
    import subprocess

    with tempfile.TemporaryDirectory() as scratch:
        # the installer imports IPython, which would create its profile directory ~/.ipython
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", name,
                        "--display-name", name], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "IPYTHONDIR": scratch})
    return True


def notebook_parameters(path: str | os.PathLike) -> list[str]:
    """Names declared in the notebook's `parameters` cell."""
    import papermill as pm

    return list(pm.inspect_notebook(str(path)))


def execute_notebook(src: str | os.PathLike, dst: str | os.PathLike, parameters: dict[str, Any] | None = None,
                     *, cwd: str | os.PathLike | None = None, kernel: str = KERNEL_NAME,
                     timeout: int | None = None, progress: bool = False) -> Path:
    """Run `src` with papermill into `dst` (parameters injected after the `parameters` cell).

    Runs in `cwd` (default: the notebook's folder, as Jupyter and nbval do). Raises
    `papermill.PapermillExecutionError` naming the failing cell and its error; `dst` then holds
    the notebook up to the failure.
    """
    import papermill as pm

    src = Path(src)
    ensure_kernel(kernel)
    pm.execute_notebook(str(src), str(dst), parameters=parameters or {}, kernel_name=kernel,
                        cwd=str(cwd or src.parent), progress_bar=progress, execution_timeout=timeout,
                        log_output=False)
    return Path(dst)


def export_html(ipynb: str | os.PathLike, html: str | os.PathLike, *, no_input: bool = False) -> Path:
    """The executed notebook as one self-contained HTML file (plotly.js inline, widget state kept)."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    if no_input:
        exporter.exclude_input = True
        exporter.exclude_input_prompt = True
        exporter.exclude_output_prompt = True
    with warnings.catch_warnings():
        # scrapbook's glued values have no visual form; nbconvert warns once per value
        warnings.filterwarnings("ignore", message=".*is not able to be represented", category=UserWarning)
        body, _ = exporter.from_notebook_node(nbformat.read(str(ipynb), as_version=4))
    Path(html).write_text(body, encoding="utf-8")
    return Path(html)


def report_paths(out_dir: str | os.PathLike, name: str) -> dict[str, Path]:
    out = Path(out_dir)
    return {"ipynb": out / f"{name}.ipynb", "html": out / f"{name}.html", "results_html": out / f"{name}.results.html"}


class ReportError(RuntimeError):
    """A notebook failed; the message names it, the failing cell and its error."""


def build_report(src: str | os.PathLike, out_dir: str | os.PathLike, parameters: dict[str, Any],
                 *, name: str | None = None, kernel: str = KERNEL_NAME, timeout: int | None = None,
                 progress: bool = False) -> dict[str, Path]:
    """Execute one notebook and export it: `out_dir/NAME.ipynb`, `.html`, `.results.html`.

    Only the parameters the notebook declares are passed. Everything is written under a
    temporary folder and renamed into place at the end; on failure the previous report of this
    notebook is removed (so no stale report passes for the current data), the partly executed
    notebook is kept as `NAME.FAILED.ipynb`, and `ReportError` carries the cell's error.
    """
    import papermill as pm

    src = Path(src)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = name or src.stem
    final = report_paths(out, name)
    failed = out / f"{name}.FAILED.ipynb"
    declared = set(notebook_parameters(src))
    params = {k: v for k, v in parameters.items() if k in declared}
    work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
    try:
        tmp = report_paths(work, name)
        try:
            execute_notebook(src, tmp["ipynb"], params, kernel=kernel, timeout=timeout, progress=progress)
        except pm.PapermillExecutionError as exc:
            for p in final.values():
                p.unlink(missing_ok=True)
            if tmp["ipynb"].exists():
                os.replace(tmp["ipynb"], failed)
            raise ReportError(f"{src.name} failed at cell In [{exc.exec_count}] with {exc.ename}: {exc.evalue}; "
                              f"partial notebook in {failed}{exc}") from None
        export_html(tmp["ipynb"], tmp["html"])
        export_html(tmp["ipynb"], tmp["results_html"], no_input=True)
        for key in ("html", "results_html", "ipynb"):  # the .ipynb last: its presence marks a complete report
            os.replace(tmp[key], final[key])
        failed.unlink(missing_ok=True)
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def list_notebooks(notebooks_dir: str | os.PathLike = NOTEBOOKS_DIR, only: Iterable[str] | None = None) -> list[Path]:
    """The numbered notebooks `NN_name.ipynb`, in order; `only` selects by prefix (`01`) or name."""
    found = sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = list(only)
        found = [p for p in found if any(p.stem == w or p.stem.startswith(w) for w in wanted)]
        if not found:
            raise ReportError(f"no notebook in {notebooks_dir} matches {', '.join(wanted)}")
    if not found:
        raise ReportError(f"no NN_name.ipynb notebooks in {notebooks_dir}")
    return found


def _param_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@contextlib.contextmanager
def _children_stderr_to(log: Path) -> Iterator[None]:
    """Processes started inside the block (the notebook's kernel) write their stderr to `log`, while
    this process's own `sys.stderr` stays where it was: a kernel's start-up warnings are not the
    user's business unless the notebook fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log, "ab") as f:
        os.dup2(f.fileno(), 2)
    own = sys.stderr
    sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding=getattr(own, "encoding", None) or "utf-8",
                           errors="backslashreplace")
    try:
        yield
    finally:
        sys.stderr.close()
        sys.stderr = own
        os.dup2(saved, 2)
        os.close(saved)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="analytics bench reports", description=(
        "execute the notebooks with papermill into OUT/NN_name.ipynb and export .html and "
        "input-hidden .results.html; one line per notebook (name, seconds, report); stops at the "
        "first failing notebook"))
    parser.add_argument("--lake", required=True, help="prepared lake directory (parameter `lake`)")
    parser.add_argument("--raw", default=None, help="raw CSV directory (parameter `raw`, for baseline comparisons)")
    parser.add_argument("--out", default="reports", help="output directory (default reports)")
    parser.add_argument("--notebooks", default=str(NOTEBOOKS_DIR), help="notebook directory (default: the repo's notebooks/)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="notebooks to run, by prefix (01) or name")
    parser.add_argument("--suffix", default="", help="appended to each report's name, e.g. -15000000")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="extra parameter (JSON value or plain text), passed to notebooks that declare it")
    parser.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default none)")
    args = parser.parse_args(argv)

    # `raw` is always passed: None tells a notebook there is no raw data to compare with, rather
    # than letting it fall back to its default (the small nbval data set)
    params: dict[str, Any] = {"lake": str(Path(args.lake).resolve()),
                              "raw": str(Path(args.raw).resolve()) if args.raw else None}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"reporting: error: --param expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        params[key] = _param_value(value)
    # a transient "running NAME" line only on a terminal; a pipe or a log gets the result lines alone
    live = sys.stderr.isatty()
    try:
        from analytics.lake.table import latest_version

        if latest_version(Path(args.lake)) is None:
            raise ReportError(f"{args.lake} is not a prepared lake (no Delta table in it); run `analytics prepare` first")
        notebooks = list_notebooks(args.notebooks, args.only)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        width = max(len(nb.stem + args.suffix) for nb in notebooks)
        for nb in notebooks:
            name = nb.stem + args.suffix
            log = Path(args.out) / f".{name}.stderr.log"
            log.unlink(missing_ok=True)
            if live:
                print(f"{name}: running ...", end="\r", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                with _children_stderr_to(log):
                    paths = build_report(nb, args.out, params, name=name, timeout=args.timeout)
            except ReportError as exc:
                kept = log.rename(Path(args.out) / f"{name}.FAILED.stderr.log") if log.stat().st_size else None
                log.unlink(missing_ok=True)
                raise ReportError(f"{exc}" + (f"\n(the kernel's stderr: {kept})" if kept else "")) from None
            finally:
                if live:
                    print("\033[K", end="", file=sys.stderr, flush=True)
            log.unlink(missing_ok=True)
            print(f"{name:<{width}}  {time.perf_counter() - t0:6.1f} s  {paths['html']}", flush=True)
    except ReportError as exc:
        print(f"reporting: error: {exc}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# Helpers the notebooks call


def plotly_offline() -> None:
    """Figures embed plotly.js in the output, so exported HTML renders with no network."""
    import plotly.io as pio

    pio.renderers.default = "plotly_mimetype+notebook"


def resolve(path: str | os.PathLike | None) -> Path | None:
    """A notebook parameter path, made absolute against the working directory."""
    return None if path in (None, "") else Path(path).expanduser().resolve()


def figure_output(fig: Any) -> dict[str, Any]:
    """A plotly figure as a notebook `display_data` output for the default renderers.

    For an `ipywidgets.Output`'s `outputs`: IPython's formatter gives plotly figures an empty
    bundle there. plotly.js itself must already be on the page (a `fig.show()` earlier puts it).
    """
    import plotly.io as pio

    data: dict[str, Any] = {"text/plain": f"<plotly figure: {fig.layout.title.text or ''}>"}
    # outside a notebook (no default renderer) the bare mimetype still renders in Jupyter
    for name in [n for n in str(pio.renderers.default).split("+") if n] or ["plotly_mimetype"]:
        data.update(pio.renderers[name].to_mimebundle(fig.to_dict()))
    return {"output_type": "display_data", "data": data, "metadata": {}}


def timed(fn: Any, *args: Any, repeats: int = 1) -> tuple[Any, list[float]]:
    """Call `fn(*args)` `repeats` times; the last result and each call's milliseconds."""
    times, result = [], None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        result = fn(*args)
        times.append((time.perf_counter() - t0) * 1000)
    return result, times


def run_query(wb: Any, query: dict[str, Any]) -> dict[str, Any]:
    """One explorer query: its table (pandas), the route actually taken, the lake and view versions the
    answer reflects and the compute time."""
    (table, plan), ms = timed(wb.execute, query)
    return {"query": query, "table": table, "frame": table.to_pandas(), "route": plan.route, "ms": ms[0],
            "rows": table.num_rows, "lake_version": plan.lake_version, "view_version": plan.view_version}


def lake_summary(lake_dir: str | os.PathLike) -> dict[str, Any]:
    """The lake as its newest version commits it: version, layout, and per segment its files and sizes."""
    from analytics.lake.state import Lake

    lake = Lake.open(lake_dir)
    m = lake.state
    segments = []
    for seg in m.get("segments", []):
        files = [lake.root / f for f in seg["files"].values()]
        qf = seg.get("quarantine_file")
        segments.append({
            "segment": seg["segment"], "source_file": seg.get("source", {}).get("file"),
            "rows_read": seg["rows_read"], "rows_lake": seg["rows_lake"], "rows_quarantined": seg["rows_quarantined"],
            "event_files": len(files), "event_bytes": sum(f.stat().st_size for f in files),
            "quarantine_bytes": (lake.root / qf).stat().st_size if qf else 0,
        })
    totals = m.get("totals") or {}
    return {
        "lake": str(lake.root), "lake_version": lake.version, "schema_version": m.get("schema_version"),
        "created_at": m.get("created_at"), "updated_at": m.get("updated_at"), "layout": m.get("layout", {}),
        "rows_read": totals.get("rows_read", 0), "rows_lake": totals.get("rows_lake", 0),
        "rows_quarantined": totals.get("rows_quarantined", 0), "lake_by_type": totals.get("lake_by_type", {}),
        "segments": segments, "size_bytes": lake.size_bytes(), "history": m.get("history", []),
    }

