"""`python -m analytics` is the `analytics` console script."""
import sys

from .cli import main

sys.exit(main())
