"""The one convention of every command-line tool in ``tools/``.

* Arguments are parsed first, with nothing but ``argparse``: ``--help`` and usage
  errors answer at once, before torch and mmseg are imported. Only then does a tool
  import repseg (``--cfg-options`` are therefore collected as plain ``KEY=VALUE``
  strings and parsed by :func:`parse_cfg_options`).
* Exit status 0: done. 2: the user's to fix, printed as one ``error: ...`` paragraph
  naming the file or key and the fix, no traceback (a :class:`repseg.errors.UserError`,
  a missing file, or argparse's usage errors). 1: a bug (with its traceback) or a
  failed self-check (:class:`repseg.errors.VerificationError`, with its message). 130:
  interrupted (Ctrl-C); checkpoints and other model files are written atomically
  (:mod:`repseg.fileio`), so none is left half-written.
* Known-harmless third-party warnings (:mod:`repseg.logs`) are silenced; every other
  warning is kept.
* Outputs are never replaced silently: see :func:`repseg.fileio.claim_outputs`.

A tool's ``main`` therefore reads::

    def main(argv=None):
        args = parse_args(argv)          # argparse only
        from repseg.cli import run_tool
        run_tool(run, args)              # run(args) imports repseg and does the work
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any, Callable, Iterator, Optional, Sequence

from .errors import InvalidArgumentError, UserError, VerificationError

EXIT_BUG = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

#: Exceptions printed without traceback and exit status 2. A missing file is the user's
#: (a path given on the command line); other OS errors (disk full, permissions) keep
#: their traceback.
USER_ERRORS = (UserError, FileNotFoundError)


def _report(message: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(f'error: {message}\n')
    sys.stderr.flush()


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Run a tool's work under the exit-status convention of this module.

    User errors and failed self-checks print ``error: <message>`` on stderr and exit
    with 2 and 1; Ctrl-C exits with 130; any other exception propagates with its
    traceback (Python then exits with 1). Known-harmless third-party warnings are
    silenced first (:func:`repseg.logs.silence_known_warnings`).
    """
    from .logs import silence_known_warnings

    silence_known_warnings()
    try:
        yield
    except USER_ERRORS as error:
        _report(str(error))
        raise SystemExit(EXIT_USER_ERROR) from None
    except VerificationError as error:
        _report(str(error))
        raise SystemExit(EXIT_BUG) from None
    except KeyboardInterrupt:
        _report('interrupted (Ctrl-C)')
        raise SystemExit(EXIT_INTERRUPTED) from None


def run_tool(run: Callable[[Any], Any], args: Any) -> Any:
    """``run(args)`` under :func:`exit_on_user_error`: the whole ``main`` of a tool once
    its arguments are parsed."""
    with exit_on_user_error():
        return run(args)


def parse_cfg_options(items: Optional[Sequence[str]]) -> Optional[dict]:
    """``['model.backbone.arch=A0', 'train_cfg.max_iters=100']`` -> a dict of overrides,
    with values parsed as mmengine's ``DictAction`` parses them (numbers, ``None``,
    ``True``, lists ``[1,2]``, tuples, ``a,b``).

    Raises :class:`~repseg.errors.InvalidArgumentError` for an item without ``=`` or
    with unbalanced brackets.
    """
    if not items:
        return None
    from mmengine.config import DictAction

    parsed = argparse.Namespace()
    action = DictAction(option_strings=['--cfg-options'], dest='cfg_options')
    for item in items:
        key, sep, _ = item.partition('=')
        if not sep or not key:
            raise InvalidArgumentError(
                f'--cfg-options {item!r}: expected KEY=VALUE, e.g. '
                'train_cfg.max_iters=100 or model.backbone.arch=B1g2')
        try:
            action(None, parsed, [item])
        except (AssertionError, ValueError) as error:
            raise InvalidArgumentError(
                f'--cfg-options {item!r}: cannot parse the value ({error}); lists are '
                'written [1,2] and tuples (1,2)') from None
    return parsed.cfg_options
