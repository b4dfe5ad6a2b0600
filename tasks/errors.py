"""The one exception users see: a one-line message that names the input and what is wrong."""


class GraftlineError(Exception):
    """Bad input or a failed gate. The command line prints it as one line and exits non-zero."""


class DataError(GraftlineError):
    """A dataset is missing, unreadable, or unusable for training."""


class ValidationFailed(GraftlineError):
    """Great Expectations found the data below the configured quality bar."""


class BackboneError(GraftlineError):
    """A backbone name is unknown, or its files cannot be loaded."""
