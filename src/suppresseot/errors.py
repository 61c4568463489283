"""User-facing errors: the CLI prints their message as one line and exits 2 (``--debug`` shows the traceback)."""


class SuppressEOTError(Exception):
    """Bad input or an unusable environment; the message says what is wrong and what to do."""


class BackendUnavailable(SuppressEOTError):
    """The requested framework cannot run here (not installed, no compiler, CUDA mismatch, ...)."""
