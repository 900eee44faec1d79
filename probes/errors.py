"""The one exception type users see.

Every bad-input path (SPEC §11) raises :class:`StrataError` with a single line that says what
is wrong and what to do. The pytest plugins turn it into a one-line error and a non-zero exit;
notebook users get an ordinary exception with the same message.
"""


class StrataError(Exception):
    """A user-facing error: the message is one line, names the problem and the fix."""

    def __init__(self, message: str):
        if "\n" in message:
            message = " ".join(part.strip() for part in message.splitlines() if part.strip())
        super().__init__(message)


class NotApplicable(Exception):
    """A statistic cannot be computed here (family absent, phase too small, zero norm, NaN).

    Probes raise it with the reason; the verdict fixture records N/A with that reason.
    """
