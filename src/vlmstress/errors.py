"""Errors the command line turns into one clear line and exit code 2."""


class UsageError(Exception):
    """A bad command line, SPEC, variant name or config: the user's to fix, never a traceback."""
