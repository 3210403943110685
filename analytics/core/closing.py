"""The `with X(...) as x:` protocol for objects whose exit is their `close()`.

Owns nothing else: the workbench and the batch runner both hold connections or threads that
`close()` releases, and share this one definition of entering and leaving a `with` block.
"""
from __future__ import annotations

from typing import TypeVar

_T = TypeVar("_T", bound="Closing")


class Closing:
    """A base whose `__exit__` calls `close()`, which the subclass defines."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
