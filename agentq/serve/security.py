"""What keeps a page that shows untrusted text (task ids, model answers, round names) and holds a token safe.

* Security headers on every response: a strict Content-Security-Policy (scripts and styles only from this
  service, no inline script or style, nothing may frame the page), nosniff, no referrer, same-origin opener
  and resource policies. The page builds its DOM from text nodes, so a hostile task id is text; the CSP is
  the second wall.
* The token: `Authorization: Bearer` on every request; a WebSocket, which a browser cannot give headers,
  sends it as its first message. Never in a URL, so never in an access log, a proxy's log or the history.
* DNS rebinding: a page on a hostile name that resolves to this service would be same-origin with it. In
  open mode (no token) the Host header must be an IP literal, `localhost`, or a name given with
  `--allowed-host`; with a token the token already refuses such a page, and Host is checked only against
  names given. A request that carries an Origin (every WebSocket, any cross-site fetch) must come from this
  service's own origin or an allowed host.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), interest-cohort=()"),
]
LOOPBACK_NAMES = ("localhost",)


def token_matches(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def bearer(header: str | None) -> str | None:
    if not header or not header.startswith("Bearer "):
        return None
    return header.removeprefix("Bearer ").strip()


def hostname(host: str) -> str:
    """The name in a Host header (`name:port`, `[v6]:port`), lower-cased."""
    return (urlsplit(f"//{host}").hostname or "").lower()


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostPolicy:
    """Which Host and Origin headers are served. `allowed` are names (`*` for any) beyond IP literals and
    localhost; `check_host` is off only for a service with a token and no names given."""

    def __init__(self, allowed: Iterable[str] = (), check_host: bool = True) -> None:
        self.allowed = {a.strip().lower() for a in allowed if a.strip()}
        self.check_host = check_host and "*" not in self.allowed

    def host_ok(self, host: str) -> bool:
        if not self.check_host:
            return True
        name = hostname(host)
        return bool(name) and (is_ip(name) or name in LOOPBACK_NAMES or name in self.allowed)

    def origin_ok(self, origin: str, host: str) -> bool:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False
        return parts.netloc.lower() == host.lower() or "*" in self.allowed or \
            (parts.hostname or "").lower() in self.allowed

    def refusal(self, headers: dict[str, str]) -> str | None:
        """Why a request is refused, or None."""
        host = headers.get("host", "")
        if not self.host_ok(host):
            return (f"Host {hostname(host) or host!r} is not served here: open the dashboard by its address, or "
                    "start it with --allowed-host NAME")
        origin = headers.get("origin")
        if origin is not None and not self.origin_ok(origin, host):
            return "a page from another origin may not use this dashboard"
        return None


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Guard:
    """ASGI middleware: refuse what HostPolicy refuses (HTTP 403, or a WebSocket closed before it opens) and
    put the security headers on every HTTP response."""

    def __init__(self, app: Any, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        why = self.policy.refusal(headers)
        if why is not None:
            if scope["type"] == "websocket":
                await receive()  # websocket.connect
                await send({"type": "websocket.close", "code": 4403, "reason": why[:120]})
                return
            body = json.dumps({"detail": why}).encode()
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"application/json"), *HEADERS]})
            await send({"type": "http.response.body", "body": body})
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in HEADERS if h[0] not in present)]
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)
