"""Tether as a service: the decision API over HTTP (``pip install "tether[serve]"``)."""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('the decision API needs FastAPI and uvicorn: pip install "tether[serve]"') from exc
