"""The one error a benchmark stops on."""


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why (and usually quotes a log)."""
