"""The base classes of repseg's errors, by whose fault they are.

* :class:`UserError`: bad input or an impossible request, the user's to fix. Tools print
  it as one ``error: ...`` paragraph and exit with status 2 (see :mod:`repseg.cli`).
  Each concrete error also derives from the built-in type callers would expect
  (``ValueError``, ``KeyError``, ``FileNotFoundError``), so ``except ValueError`` keeps
  working.
* :class:`VerificationError`: a tool's own check of what it wrote failed (a fused model
  or an ONNX graph that does not reproduce the original). Not the user's input, so exit
  status 1 like a bug; but the message already says all a traceback would.
* Anything else is a bug and keeps its traceback (exit status 1).

:func:`first_few` is the one way messages name a long list (the first few, then a count).

This module imports nothing, so its classes can be named before torch is loaded.
"""


class UserError(Exception):
    """Bad input or an impossible request: the message names the file or key, what was
    found, what was expected and the fix."""


class InvalidArgumentError(UserError, ValueError):
    """An argument value a function or tool cannot take (an unknown arch name, a
    negative class count, a combination of options that does not go together)."""


class InvalidArgumentTypeError(UserError, TypeError):
    """An argument of the wrong type (a string where a model is expected, ...)."""


class OutputExistsError(UserError, FileExistsError):
    """A tool would replace existing outputs (or its own input) without ``--force``."""


class VerificationError(RuntimeError):
    """A tool's check of its own output failed; the output was not kept."""


def first_few(items, limit: int, sep: str = ', ') -> str:
    """``'a, b, c and 4 more'``: the first ``limit`` of ``items`` and a count of the rest,
    so that a message naming hundreds of files or keys stays one readable paragraph."""
    items = [str(item) for item in items]
    more = len(items) - limit
    return sep.join(items[:limit]) + (f' and {more} more' if more > 0 else '')
