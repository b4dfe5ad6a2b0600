"""The one exception users see: a one-line message that names the input and what is wrong."""


class GraftlineError(Exception):
    """Bad input or a failed gate. The command line prints the message as one line, then any
    `details` (a short table, the path of a report) below it, and exits non-zero."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message, details)  # both in args: the error survives pickling between processes
        self.message, self.details = message, details

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:  # what Prefect logs: the one line, not the details under it
        return f"{type(self).__name__}({self.message!r})"


class DataError(GraftlineError):
    """A dataset is missing, unreadable, or unusable for training."""


class ValidationFailed(GraftlineError):
    """Great Expectations found the data below the configured quality bar."""


class BackboneError(GraftlineError):
    """A backbone name is unknown, or its files cannot be loaded."""
