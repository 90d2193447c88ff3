"""gbmedia: a self-hosted, media-first conferencing server."""

__version__ = "0.1.0"
