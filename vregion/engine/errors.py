"""Errors the engine reports to the user as a message, not a traceback."""


class RunDirectoryError(RuntimeError):
    """The run directory holds earlier work that this command would overwrite."""
