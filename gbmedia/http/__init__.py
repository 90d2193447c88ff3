"""The HTTP application: factory, middlewares, health and metrics endpoints."""
