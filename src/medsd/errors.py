"""The one exception type users can cause; the CLI prints it as a single line and exits with code 2."""

from __future__ import annotations

import errno


class MedsdError(Exception):
    """A problem with the user's input (config, files, arguments) that they can fix.

    The message names the input, what was wrong and what to do about it.
    """


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, cut to `limit` characters (the exception's type when it has no
    message): what of a library's multi-line error fits into one `medsd: error:` line."""
    lines = str(err).strip().splitlines()
    return lines[0][:limit] if lines else type(err).__name__


# What to do about the file-system errors a user can cause, by errno.
_OS_ADVICE = {
    errno.EACCES: "check its permissions or choose another location",
    errno.EPERM: "check its permissions or choose another location",
    errno.EROFS: "the file system is read-only; choose another location",
    errno.ENOSPC: "the disk is full; free space or choose another location",
    errno.EDQUOT: "the disk quota is exhausted; free space or choose another location",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "it is a folder; pass a file",
    errno.ENOENT: "check the path",
    errno.EEXIST: "a file is in the way; remove it or choose another path",
    errno.ENAMETOOLONG: "shorten the path",
}


def describe_os_error(err: OSError, what: str | None = None) -> str | None:
    """One line for a file-system error a user can fix (permissions, full disk, a file in the way), naming
    the path; None when the error is not of that kind (then it is a bug and keeps its traceback)."""
    advice = _OS_ADVICE.get(err.errno or -1)
    if advice is None:
        return None
    path = err.filename if err.filename is not None else "a file"
    reason = err.strerror or type(err).__name__
    subject = f"{what} {path}" if what else str(path)
    return f"cannot use {subject}: {reason}; {advice}"
