"""analytics: ad-event analytics workbench.

Data flows one way: raw CSV parts -> `lake` (remediated Parquet) -> views -> `router` ->
`runner` -> reports. `Workbench` is the entry point for Python and notebooks.
"""
__version__ = "0.1.0"

from analytics.query.model import QueryError, parse_query  # noqa: E402
from analytics.serving.workbench import Workbench  # noqa: E402

__all__ = ["Workbench", "parse_query", "QueryError", "__version__"]
