"""The approval page under hostile and broken clients, spoken to over raw sockets and
http.client: what holds here holds whatever serves the page."""

from __future__ import annotations

import http.client
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tether.core import AuditStore
from tether.core.service.app import approvals_app
from tether.core.service.run import Limits, serving

TOKEN = "alice-personal-token-0123456789"
WAIT = 10.0  # every read in these tests gives up after this long: a hung server fails, not hangs
LIMITS = Limits(idle=0.5, request=1.5, connections=3)


@pytest.fixture
def address(tmp_path: Path) -> Iterator[tuple[str, int]]:
    store = AuditStore(f"sqlite:///{tmp_path / 'a.db'}", key=b"k" * 32)
    with serving(approvals_app(store, {TOKEN: "alice"}), limits=LIMITS) as port:
        yield "127.0.0.1", port
    store.close()


def exchange(address: tuple[str, int], data: bytes, *, close: bool = False) -> bytes:
    """Send ``data`` as is, then read until the server closes the connection (within WAIT)."""
    with socket.create_connection(address, timeout=WAIT) as conn:
        conn.sendall(data)
        if close:
            conn.shutdown(socket.SHUT_WR)
        return read_all(conn)


def read_all(conn: socket.socket) -> bytes:
    chunks = []
    while chunk := conn.recv(65536):  # each recv is bounded by the socket's timeout
        chunks.append(chunk)
    return b"".join(chunks)


def status(response: bytes) -> int:
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", response)
    assert match, response[:200]
    return int(match.group(1))


def login_post(headers: str, body: bytes = b"") -> bytes:
    return f"POST /login HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode() + body


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ("Content-Length: -1\r\n", 400),  # read as "until the client closes": unbounded before sign-in
        ("Content-Length: abc\r\n", 400),
        ("Content-Length: 1e3\r\n", 400),
        ("Content-Length: 12\r\nContent-Length: 99\r\n", 400),  # two lengths: which one is the body?
        ("Content-Length: 999999999999\r\n", 413),
        ("Transfer-Encoding: chunked\r\n", 411),
        ("", 411),
    ],
    ids=["negative", "not-a-number", "float", "conflicting", "huge", "chunked", "missing"],
)
def test_a_form_with_a_bad_length_is_refused_before_its_body_is_read(
    address: tuple[str, int], headers: str, expected: int
) -> None:
    with socket.create_connection(address, timeout=WAIT) as conn:
        conn.sendall(login_post(headers, b"token=x&" + b"a" * 4096))  # and the connection stays open
        response = read_all(conn)
    assert status(response) == expected


HEAD = b"GET / HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/9.9\r\n\r\n", 505),
        (b"\xff\xfe\x00 / HTTP/1.1\r\n\r\n", 400),  # not a method token
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n", 431),
        (HEAD + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 900) for i in range(60)) + b"\r\n", 431),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431),
    ],
    ids=["no-version", "bad-version", "binary", "long-header", "many-headers", "big-head", "long-path"],
)
def test_malformed_requests_are_refused(address: tuple[str, int], request_bytes: bytes, expected: int) -> None:
    got = status(exchange(address, request_bytes))
    # A head over the limit is refused 431 once it is in, or 400 by the server's parser if it
    # passes the limit while still arriving (the split depends on the network).
    assert got == expected or (expected == 431 and got == 400)


def test_an_idle_connection_is_closed(address: tuple[str, int]) -> None:
    with socket.create_connection(address, timeout=WAIT) as conn:
        assert read_all(conn) == b""  # closed by the server, long before WAIT


def test_a_request_sent_a_byte_at_a_time_is_cut_off(address: tuple[str, int]) -> None:
    with socket.create_connection(address, timeout=WAIT) as conn:
        conn.sendall(b"GET /login HTTP/1.1\r\n")
        closed = threading.Event()

        def trickle() -> None:  # each byte within the idle timeout, so only a total bound stops it
            for _ in range(int(WAIT / 0.2)):
                if closed.wait(0.2):
                    return
                try:
                    conn.sendall(b"X")
                except OSError:
                    return

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            read_all(conn)  # returns once the server gives up on the request
        except ConnectionResetError:
            pass
        finally:
            closed.set()
        sender.join(WAIT)
        assert not sender.is_alive()


def test_a_body_that_never_comes_is_cut_off(address: tuple[str, int]) -> None:
    with socket.create_connection(address, timeout=WAIT) as conn:
        conn.sendall(login_post("Content-Length: 100\r\n", b"token="))
        read_all(conn)  # the server closes the connection instead of waiting for 94 more bytes


def test_connections_beyond_the_limit_are_turned_away_and_slots_come_back(address: tuple[str, int]) -> None:
    held = [socket.create_connection(address, timeout=WAIT) for _ in range(LIMITS.connections)]
    try:
        for conn in held:  # each is being served (idle, waiting for its request)
            conn.sendall(b"GET /login HTTP/1.1\r\n")
        assert status(exchange(address, b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n")) == 503
    finally:
        for conn in held:
            conn.close()
    for _ in range(50):  # the slots are released as those connections end
        if status(exchange(address, b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n")) == 200:
            return
        threading.Event().wait(0.1)
    raise AssertionError("the server never accepted a connection again")


def sign_in_form(connection: http.client.HTTPConnection) -> tuple[str, str]:
    """The login cookie and the form's CSRF token, as a browser gets them."""
    connection.request("GET", "/login")
    page = connection.getresponse()
    body = page.read().decode()
    cookie = (page.getheader("Set-Cookie") or "").split(";")[0]
    token = re.search(r'name="csrf" value="([^"]+)"', body)
    assert cookie.startswith("tether_login=") and token, body
    return cookie, token.group(1)


def test_the_sign_in_form_carries_a_csrf_token(address: tuple[str, int]) -> None:
    def post(form: dict[str, str], cookie: str = "") -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection(*address, timeout=WAIT)
        headers = {"Content-Type": "application/x-www-form-urlencoded", **({"Cookie": cookie} if cookie else {})}
        connection.request("POST", "/login", body=urlencode(form), headers=headers)
        response = connection.getresponse()
        response.read()
        connection.close()
        return response

    # A page elsewhere posts a sign-in with a valid token (login CSRF: the victim would be signed
    # in as the attacker): refused, whether it guesses a token or lacks the cookie.
    assert post({"token": TOKEN}).status == 403
    assert post({"token": TOKEN, "csrf": "0" * 64}, "tether_login=forged").status == 403
    connection = http.client.HTTPConnection(*address, timeout=WAIT)
    cookie, csrf = sign_in_form(connection)
    connection.close()
    other_cookie, _ = sign_in_form(http.client.HTTPConnection(*address, timeout=WAIT))
    assert post({"token": TOKEN, "csrf": csrf}, other_cookie).status == 403  # another browser's form
    assert post({"token": "wrong-token-00000000", "csrf": csrf}, cookie).status == 401
    signed_in = post({"token": TOKEN, "csrf": csrf}, cookie)
    assert signed_in.status == 303 and "tether_session=" in (signed_in.getheader("Set-Cookie") or "")
