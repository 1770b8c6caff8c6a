"""The package's loggers, made on first use.

Importing :mod:`logging` (which brings traceback, linecache and tokenize) was a fifth of
``import sqlstream``'s own time, and most programs never see a line logged by sqlstream.
So each module keeps a :class:`LazyLogger` under the logger name it always had, and the
real :class:`logging.Logger` is looked up at its first use; tests/test_startup.py checks
that ``import sqlstream`` leaves :mod:`logging` out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging

__all__ = ["LazyLogger"]


class LazyLogger:
    """``logging.getLogger(name)``, looked up when a method is first used.

    Attribute access returns the real logger's bound method, so a record's caller
    (``%(funcName)s``, ``%(lineno)d``) is the code that logged, as with a plain logger.
    """

    __slots__ = ("name", "_logger")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: logging.Logger | None = None

    @property
    def logger(self) -> logging.Logger:
        if self._logger is None:
            import logging  # the point of this class: on first use, not at import

            self._logger = logging.getLogger(self.name)
        return self._logger

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.logger, attribute)
