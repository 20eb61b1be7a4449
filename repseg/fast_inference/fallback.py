"""How a fast path that cannot run says why: one line kept in its report."""


def error_summary(error: BaseException) -> str:
    """``'TypeName: first line of the message'`` of the error that made a path fall back."""
    lines = str(error).strip().splitlines()
    return f'{type(error).__name__}: {lines[0]}' if lines else type(error).__name__
