"""Errors the command line turns into one clear line and exit code 2."""


class UsageError(ValueError):
    """A bad command line, SPEC, variant name or config: the user's to fix, never a traceback.

    A ValueError, so Python callers of the API (vlmstress.evaluate) catch bad arguments the way they
    catch any other bad value.
    """
