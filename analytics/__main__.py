"""`python -m analytics` is the `analytics` console script.

This file is also what spark-submit runs (it takes a script, not `-m`):

    spark-submit --master spark://HOST:7077 --executor-memory 8g \
        "$(python -c 'import analytics.__main__ as m; print(m.__file__)')" \
        prepare --engine spark --raw /shared/raw --lake /shared/lake

The session then takes its master and settings from spark-submit (see docs/spark.md).
"""
import sys

from analytics.cli import main

if __name__ == "__main__":
    sys.exit(main())
