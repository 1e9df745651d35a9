"""Errors a user can cause and fix.

Every ``HarnessError`` carries one sentence that says what went wrong and what to do;
the CLI and the pytest plugin print it as is, never a traceback.
"""


class HarnessError(Exception):
    """A problem the user can fix; ``str(err)`` is one sentence that says what to do."""


class UnsupportedArchitecture(HarnessError):
    """The model's module tree matches no entry of the site table."""


class NonFiniteActivations(HarnessError):
    """A site produced NaN or inf values."""


class WeightsUnavailable(HarnessError):
    """The weights are neither cached nor downloadable from here (a test skips, not fails)."""
