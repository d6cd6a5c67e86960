"""Real local receivers for the notification tests: an HTTP server and an SMTP server in threads.

with HttpReceiver() as hook:             # answers 200 to every POST
    hook.fail_next(3)                    # ... but 500 to the next three
    hook.hang = True                     # ... or never answers at all
    hook.url                             # http://127.0.0.1:<port>/hook
    hook.delivered                       # bodies it answered 2xx, in order
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller

from tests.live import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    raw: bytes
    at: float = field(default_factory=time.perf_counter)  # time-machine leaves perf_counter real

    @property
    def json(self) -> dict:
        return json.loads(self.raw)


@dataclass
class HttpReceiver:
    hang: bool = False
    attempts: list[Received] = field(default_factory=list)
    delivered: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._failures = 0
        self._release = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                got = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with receiver._lock:
                    receiver.attempts.append(got)
                    fail = receiver._failures > 0
                    receiver._failures -= fail
                if receiver.hang:
                    receiver._release.wait(60)  # a destination that never answers
                    return
                if not fail:
                    # Recorded before answering: the sender may act on the 2xx at once.
                    with receiver._lock:
                        receiver.delivered.append(got)
                self.send_response(500 if fail else 200)
                self.end_headers()
                self.wfile.write(b"down" if fail else b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"

    def fail_next(self, n: int) -> None:
        with self._lock:
            self._failures = n

    def __enter__(self) -> HttpReceiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()


class SmtpReceiver:
    """aiosmtpd on a free port; `messages` holds the parsed emails it accepted."""

    def __init__(self) -> None:
        self.messages: list = []
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:  # noqa: N802 - aiosmtpd hook
        self.messages.append(message_from_bytes(envelope.content))  # type: ignore[attr-defined]
        return "250 OK"

    def __enter__(self) -> SmtpReceiver:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()
