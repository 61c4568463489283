"""The SuppressEOT method, written once against the backend interface (``suppresseot.backends.base``)."""
