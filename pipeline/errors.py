import math
import numbers
import os


class VidretError(Exception):
    """A problem with the user's input or environment.

    The CLI prints its message as one line and exits non-zero, so the message
    must say what is wrong and where (a file, a line, an option).
    """


def shown_path(path) -> str:
    """``path`` as a message shows it: as it is, or quoted with escapes where a terminal would not show it
    as one line (a NUL byte, a newline)."""
    text = os.fsdecode(path) if isinstance(path, str | bytes | os.PathLike) else str(path)
    return text if text.isprintable() else repr(text)


def path_error(path, error: OSError | ValueError, what: str) -> VidretError:
    """One line for a ``path`` (the ``what``: "manifest", "frames directory") the system refused to open:
    a symlink loop, a NUL byte in its name, no permission, ..."""
    if isinstance(error, OSError):
        reason = error.strerror or first_line(error)
    else:  # os functions raise ValueError for a NUL byte in a path
        reason = "the path contains a NUL byte" if "null byte" in str(error) else first_line(error)
    return VidretError(f"{shown_path(path)}: cannot open the {what} ({reason})")


def check_path(path, what: str) -> None:
    """Refuse in one line a ``path`` the system cannot even look up (a NUL byte, a symlink loop, a file as a
    folder, no permission); a missing path passes, for the caller to say what belongs there."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return
    except (OSError, ValueError) as error:
        raise path_error(path, error, what) from None


def check_paths(*paths: tuple[object, str]) -> None:
    """``check_path`` for each (path, what) given; None paths (options left out) pass."""
    for path, what in paths:
        if path is not None:
            check_path(path, what)


def os_error_line(error: OSError) -> str:
    """``PATH: strerror`` for an OSError no check caught (the disk filled up, ...); the path where it names one."""
    reason = error.strerror or first_line(error)
    paths = [shown_path(path) for path in (error.filename, error.filename2) if path is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _shown_number(value) -> str:
    return str(value) if isinstance(value, numbers.Integral) else f"{value:g}"


def _bounds_phrase(at_least, above, at_most, below) -> str:
    """What follows "must be" for these bounds: "at least 1", "positive", "in [0, 1)", ..."""
    low = f"[{_shown_number(at_least)}" if at_least is not None else None
    low = f"({_shown_number(above)}" if above is not None else low
    high = f"{_shown_number(at_most)}]" if at_most is not None else None
    high = f"{_shown_number(below)})" if below is not None else high
    if low and high:
        return f"in {low}, {high}"
    if low:
        return "positive" if low == "(0" else f"{'at least' if low[0] == '[' else 'above'} {low[1:]}"
    if high:
        return f"{'at most' if high[-1] == ']' else 'below'} {high[:-1]}"
    return ""


def number_problem(value, *, integer=False, at_least=None, above=None, at_most=None, below=None) -> str | None:
    """What is wrong with ``value`` as a number within the bounds given, as "must be at least 1, got 0"; None
    when nothing is. A bool is no number (JSON's true is not 1), ``integer`` refuses floats, and a float must
    be finite (NaN and infinity pass no comparison the way they should)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real):
        return f"must be {'an integer' if integer else 'a number'}, got {value!r}"
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int too large for a float
        finite = False
    inside = finite and (
        (at_least is None or value >= at_least)
        and (above is None or value > above)
        and (at_most is None or value <= at_most)
        and (below is None or value < below)
    )
    if inside:
        return None
    bounds = _bounds_phrase(at_least, above, at_most, below)
    wanted = bounds if finite else f"finite and {bounds}" if bounds else "finite"
    return f"must be {wanted}, got {_shown_number(value)}"


def check_number(name: str, value, **bounds) -> None:
    """Raise "NAME must be ..., got VALUE" (see ``number_problem``) unless ``value`` is a number within ``bounds``."""
    problem = number_problem(value, **bounds)
    if problem:
        raise VidretError(f"{name} {problem}")
