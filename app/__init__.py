"""HTTP side of fusion-search: FastAPI app, routers, settings, CLI."""
