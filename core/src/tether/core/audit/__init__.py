"""The tamper-evident audit: events, the store, and verification."""

from .events import AuditEvent, Kind, NewEvent
from .store import AuditStore, default_store_url
from .verify import Problem, Report, verify, verify_session

__all__ = [
    "AuditEvent",
    "AuditStore",
    "Kind",
    "NewEvent",
    "Problem",
    "Report",
    "default_store_url",
    "verify",
    "verify_session",
]
