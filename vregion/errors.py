"""Errors reported to the user as a message, not a traceback (shared by every layer)."""


class RunDirectoryError(RuntimeError):
    """The run directory holds earlier work that this command would overwrite."""
