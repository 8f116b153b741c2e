"""The project's error classes, grouped by what the caller should do about them."""


class RevetlError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigurationError(RevetlError):
    """A setting or an input from the user is wrong; fix it and run again."""


class RetriableError(RevetlError):
    """A server is down or busy; the same call may succeed later."""


class DeadLetterError(RevetlError):
    """One event is malformed; record it in a dead-letter table and go on."""


class FatalError(RevetlError):
    """Something is broken in a way that retrying will not fix."""
