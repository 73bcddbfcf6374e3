"""Tether's web service (``tether serve``, needs ``tether[serve]``): the approvals page, as an
ASGI app (:mod:`.app`), and the uvicorn server that runs it within bounds (:mod:`.run`)."""
