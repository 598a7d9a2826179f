"""Token access for the dashboard's Flask server: ``?token=`` once, then a cookie, or a header.

Every request (pages, callbacks, assets, files) is checked before Dash sees it. The token is
compared in constant time and never echoed back.
"""

from __future__ import annotations

import hmac

from flask import Flask, Response, g, request

COOKIE = "cytotune_token"


def _given() -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.args.get("token") or request.cookies.get(COOKIE)


def require_token(server: Flask, token: str) -> None:
    """Refuse every request without ``token`` (401); remember a valid ``?token=`` in a cookie."""
    if not token:
        raise ValueError("--auth needs a non-empty token")
    expected = token.encode()

    @server.before_request
    def _check():
        given = _given()
        if given is None or not hmac.compare_digest(given.encode(), expected):
            return Response(
                "cytotune dashboard: this server needs its access token. Open the URL with "
                "?token=YOUR_TOKEN once, or send 'Authorization: Bearer YOUR_TOKEN'.\n",
                status=401,
                mimetype="text/plain",
                headers={"WWW-Authenticate": 'Bearer realm="cytotune"'},
            )
        g.cytotune_token_ok = True
        return None

    @server.after_request
    def _remember(response: Response) -> Response:
        fresh = request.args.get("token")
        if g.get("cytotune_token_ok") and fresh and request.cookies.get(COOKIE) != fresh:
            response.set_cookie(COOKIE, fresh, httponly=True, samesite="Strict")
        return response
