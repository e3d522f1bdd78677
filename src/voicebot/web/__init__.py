"""The HTTP app (FastAPI, served by uvicorn in the bot's event loop): health, readiness, metrics."""
