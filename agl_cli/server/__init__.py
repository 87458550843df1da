"""The daemon: a Starlette app over a store, served by uvicorn."""
