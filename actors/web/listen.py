"""The listening routes of the web actor: WHEP sessions, the player page, the stage panel.

::

    POST   /whep             application/sdp offer → 201, Location: /whep/<id>, the answer SDP
    DELETE /whep/<id>        ends that session (200); 404 when unknown
    PATCH  /whep/<id>        405: no trickle ICE (the answer carries every candidate)
    GET    /                 the player page (static, no build step, no CDN); no key needed
    GET    /player/<file>    its script and style sheet; no key needed
    GET    /v1/stage         the live panel's figures: state, ring fill, underruns, listeners

The WHEP and API routes take the same bearer key as the rest of the gateway (``GuardMiddleware``);
the page itself is public so a browser can load it and then ask for the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from actors import wire
from actors.web.api import ApiError, BodyTooLarge
from actors.web.webrtc import ListenerError, Listeners

PLAYER_DIR = Path(__file__).parent / "player"
#: The page's files; nothing else under PLAYER_DIR is served.
PLAYER_FILES = {
    "player.js": "text/javascript; charset=utf-8",
    "player.css": "text/css; charset=utf-8",
}
#: Paths the key guard lets through: the page must load before it can ask for a key.
PUBLIC_PATHS = ("/", *(f"/player/{name}" for name in PLAYER_FILES))


def add_listen_routes(app: FastAPI, listeners: Listeners, gw: Any) -> None:
    """Add the WHEP, player and stage routes to the gateway's ``app``."""

    @app.post("/whep", status_code=201, response_class=Response)
    async def whep_offer(request: Request) -> Response:
        """WHEP: an SDP offer (``application/sdp``) → ``201 Created`` with the answer."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/sdp":
            raise ApiError(415, f"send the SDP offer as Content-Type: application/sdp (got {ctype or 'none'})",
                           code="unsupported_media_type")  # fmt: skip
        try:
            raw = await request.body()
        except BodyTooLarge:
            raise ApiError(413, "the SDP offer is over web.max_body_bytes", code="request_too_large") from None
        try:
            offer = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "the SDP offer is not valid UTF-8", code="invalid_sdp") from None
        try:
            session_id, answer = await listeners.create(offer)
        except ListenerError as exc:
            headers = {"Retry-After": "5"} if exc.status == 503 else None
            err = ApiError(exc.status, exc.message, code=exc.code)
            response = err.response()
            if headers:
                response.headers.update(headers)
            return response
        location = f"/whep/{session_id}"
        return Response(answer, status_code=201, media_type="application/sdp", headers={"Location": location})

    @app.delete("/whep/{session_id}")
    async def whep_delete(session_id: str) -> dict[str, Any]:
        """WHEP: end a session (the browser's encoder and track are freed)."""
        if not await listeners.delete(session_id):
            why = f"no WHEP session {session_id!r} (ended, timed out or never made)"
            raise ApiError(404, why, code="unknown_session")
        return {"session": session_id, "status": "ended"}

    @app.patch("/whep/{session_id}")
    async def whep_patch(session_id: str) -> Response:
        """No trickle ICE: every candidate is in the answer."""
        return Response(status_code=405, headers={"Allow": "DELETE"})

    @app.get("/", response_class=FileResponse)
    async def player_page() -> FileResponse:
        return FileResponse(PLAYER_DIR / "index.html", media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})  # fmt: skip

    @app.get("/player/{name}", response_class=FileResponse)
    async def player_file(name: str) -> FileResponse:
        if name not in PLAYER_FILES:
            raise ApiError(404, f"no player file {name!r}", code="unknown_url")
        return FileResponse(PLAYER_DIR / name, media_type=PLAYER_FILES[name], headers={"Cache-Control": "no-cache"})

    @app.get("/v1/stage")
    async def stage() -> JSONResponse:
        """What the player's live panel shows, read from the actors' last metrics."""
        actors = await gw.actors_status()
        consumer = (actors.get(wire.Role.AUDIO_CONSUMER) or {}).get("metrics") or {}
        body = {
            "state": consumer.get("state", "unknown"),
            "buffered_s": consumer.get("buffered_s"),
            "underruns": consumer.get("underruns"),
            "tee_dropped_frames": consumer.get("tee_dropped_frames"),
            **listeners.metrics(),
            "actors": {role: bool(a.get("ready")) for role, a in actors.items()},
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})
