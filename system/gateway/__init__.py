"""Routing gateway: FastAPI + one shared aiohttp upstream session."""
