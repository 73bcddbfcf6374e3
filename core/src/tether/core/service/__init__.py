"""Tether as a service (``tether serve``, needs ``tether[serve]``): the approvals page as an ASGI
app (:mod:`.app`), the decision API over HTTP (:mod:`.api`), and the uvicorn server that runs
them within bounds (:mod:`.run`)."""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('tether serve needs FastAPI and uvicorn: pip install "tether[serve]"') from exc
