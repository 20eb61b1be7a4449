"""The one base class of errors that are the user's to fix.

Command-line tools print such an error as one ``error: ...`` paragraph and exit with
status 2; any other exception is a bug and keeps its traceback (exit status 1). Each
concrete error also derives from the built-in type callers would expect (``ValueError``,
``KeyError``, ``FileNotFoundError``), so ``except ValueError`` keeps working.

This module imports nothing heavy, so a tool can name the class before torch is loaded.
"""


class UserError(Exception):
    """Bad input or an impossible request: the message names the file or key, what was
    found, what was expected and the fix."""
