"""A reproducible corpus of mixed text for the detector benchmarks: prose, JSON, logs and tables,
with sensitive values (emails, cards, IBANs, keys, phone numbers) sprinkled in at a realistic rate
and many near misses (order numbers, timestamps, hashes) that must not match."""

from __future__ import annotations

import base64
import json
import random

WORDS = (  # noqa: SIM905
    "the invoice for march was paid late because the supplier changed its bank details and the "
    "finance team asked for a confirmation before releasing the next payment run please review "
    "ticket customer order shipped delayed refund request account balance meeting agenda notes"
).split()


def _card(rng: random.Random) -> str:
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    total = sum(d if i % 2 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(reversed(digits)))
    digits.append((10 - total % 10) % 10)
    return "".join(map(str, digits))


def _paragraph(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(40, 120))).capitalize() + "."


def _record(rng: random.Random) -> str:
    record = {
        "id": rng.randrange(10**9),
        "order": f"ORD-{rng.randrange(10**12):012d}",
        "created": f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T10:{rng.randrange(60):02d}:00Z",
        "sha": "".join(rng.choice("0123456789abcdef") for _ in range(40)),
        "note": _paragraph(rng)[:200],
        "amount": round(rng.random() * 1000, 2),
    }
    if rng.random() < 0.1:
        record["email"] = f"user{rng.randrange(10**6)}@example.com"
    if rng.random() < 0.03:
        record["card"] = _card(rng)
    if rng.random() < 0.03:
        record["iban"] = "DE89370400440532013000"
    if rng.random() < 0.03:
        record["phone"] = f"+1 415 555 {rng.randrange(10**4):04d}"
    if rng.random() < 0.01:
        record["token"] = "ghp_" + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(36))
    if rng.random() < 0.01:
        record["blob"] = base64.b64encode(_paragraph(rng)[:90].encode()).decode()
    return json.dumps(record)


def _log(rng: random.Random) -> str:
    return (
        f"2026-11-24 10:{rng.randrange(60):02d}:{rng.randrange(60):02d},{rng.randrange(1000):03d} INFO "
        f"worker-{rng.randrange(16)} request {rng.randrange(10**8)} took {rng.randrange(1, 900)}ms "
        f"from 10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)} status=200"
    )


def corpus(size: int, seed: int = 7) -> str:
    """About ``size`` characters of mixed text."""
    rng = random.Random(seed)
    parts: list[str] = []
    total = 0
    makers = (_paragraph, _record, _log, _log)
    while total < size:
        part = rng.choice(makers)(rng)
        parts.append(part)
        total += len(part) + 1
    return "\n".join(parts)[:size]
