"""Tether as a service: the approvals page as an ASGI app (:mod:`.app`), the decision API over
HTTP (:mod:`.api`) and the uvicorn server that runs them within bounds (:mod:`.run`), which need
``tether[serve]``; and a client of the API (:mod:`.client`), which needs only ``tether[client]``."""
