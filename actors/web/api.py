"""The HTTP API of the web actor: OpenAI-compatible speech, the native narration API, health.

FastAPI on uvicorn (why: Kokoro-FastAPI and speaches, the servers people already point their
tools at, are FastAPI; it gives the OpenAPI schema at ``/openapi.json`` and docs at ``/docs`` for
free, runs streaming responses on asyncio, and cancels a response when its client disconnects).

Routes (``docs/http.md``)::

    POST /v1/audio/speech        OpenAI's speech API; streamed; a render, never played on the stage
    GET  /v1/models              the models /v1/audio/speech accepts
    GET  /v1/audio/voices        skald voices and OpenAI's voice names mapped to them
    GET  /healthz                200 when every actor is up, 503 while one restarts
    POST /v1/narration           speak on the stage: {"text", "voice", "priority", "barge_in"}
    POST /v1/narration/cancel    {"request_id": ID} or {"all": true}
    GET  /v1/events              skald's events as server-sent events (JSON), ?request_id= filters
    POST /whep, GET /, /v1/stage WebRTC listeners and the player page (``actors.web.listen``)

Every error is OpenAI-shaped, ``{"error": {"message", "type", "param", "code"}}``: 400 a missing
or malformed field (bad JSON, invalid UTF-8, a wrong type), 401 a missing or wrong key, 404 an
unknown voice or model, 413 a body over ``web.max_body_bytes`` or a text over the limit, 422 a
value out of range (speed, an unknown format, empty input), 429 more renders than
``web.max_renders``, 503 while the actors the request needs restart. The body is parsed by hand
(bounded read, then pydantic) so that each of these gets its own status; the OpenAPI schema still
shows the body models.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors import wire
from actors.web.encode import CONTENT_TYPES, make_encoder
from actors.web.renders import RenderEnd, RenderReader
from config.settings import OPENAI_VOICES, Settings

log = logging.getLogger("skald.web")

#: OpenAI's model names: each means "the configured engine".
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    TYPES: ClassVar[dict[int, str]] = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        413: "invalid_request_error",
        415: "invalid_request_error",
        422: "invalid_request_error",
        429: "rate_limit_error",
        503: "service_unavailable",
        500: "server_error",
    }

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}  # fmt: skip
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


class SpeechRequest(BaseModel):
    """OpenAI's ``POST /v1/audio/speech`` body."""

    model: str
    input: str
    voice: str
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"
    instructions: str | None = None  # accepted and ignored: neither Piper nor XTTS takes style prompts


class NarrationRequest(BaseModel):
    """``POST /v1/narration``: speak on the stage (the table's speakers, and its listeners)."""

    text: str
    voice: str = ""
    priority: int = Field(0, ge=-100, le=100)
    barge_in: Literal["queue", "interrupt"] = "queue"


class CancelRequest(BaseModel):
    request_id: str = ""
    all: bool = False


class Gateway(Protocol):
    """What the routes need from the web actor (``actors.web_gateway.WebGateway``)."""

    settings: Settings
    reader: RenderReader

    async def control(self, msg: wire.Message) -> wire.Message: ...

    async def actors_status(self) -> dict[str, Any]: ...

    def cancel_soon(self, request_id: str) -> None: ...

    async def offload(self, fn: Callable[..., _T], *args: Any) -> _T: ...

    def report_finished(self, request_id: str, audio_s: float, ttfb_ms: float) -> None: ...

    def subscribe(self) -> asyncio.Queue[wire.Message | None]: ...

    def unsubscribe(self, queue: asyncio.Queue[wire.Message | None]) -> None: ...


class BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """Key check and body bound before any route runs (plain ASGI: it never buffers a response)."""

    def __init__(self, app: ASGIApp, api_key: str, max_body: int) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else b""
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        public = scope.get("method") == "GET" and _is_public(scope.get("path", ""))
        given = headers.get(b"authorization", b"")
        if self.expected and not public and not secrets.compare_digest(given, self.expected):
            why = "a wrong API key" if b"authorization" in headers else "no API key"
            err = ApiError(401, f"{why}: send 'Authorization: Bearer <web.api_key>'", code="invalid_api_key")
            await err.response()(scope, receive, send)
            return
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            await _too_large(self.max_body).response()(scope, receive, send)
            return
        seen = 0

        async def bounded_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge()
            return message

        await self.app(scope, bounded_receive, send)


def _is_public(path: str) -> bool:
    """The player page and its files load without a key (the page then asks for one)."""
    return path == "/" or path.startswith("/player/")


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body is over {limit} bytes (web.max_body_bytes)", code="request_too_large")


async def _read_json(request: Request) -> dict[str, Any]:
    try:
        raw = await request.body()
    except BodyTooLarge:
        raise _too_large(request.app.state.max_body) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"request body is not valid UTF-8 (byte {exc.start})", code="invalid_utf8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    return data


_MISSING_OR_TYPE = ("missing", "string_type", "float_type", "int_type", "bool_type", "float_parsing",
                    "int_parsing", "bool_parsing", "model_type", "int_from_float", "string_unicode")  # fmt: skip


_Body = TypeVar("_Body", bound=BaseModel)
_T = TypeVar("_T")


def _parse(model: type[_Body], data: dict[str, Any]) -> _Body:
    """Validate ``data``: 400 for a missing field or a wrong type, 422 for a value out of range."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        status = 400 if first["type"] in _MISSING_OR_TYPE else 422
        raise ApiError(status, f"{param}: {first['msg']}", param=param, code=first["type"]) from None


def _from_wire_error(err: wire.Error | RenderEnd, param: str | None = None) -> ApiError:
    kind = err.kind
    message = err.message if isinstance(err, wire.Error) else err.reason
    if kind == "oversized":
        return ApiError(413, message, param or "input", code="input_too_long")
    if kind == "bad_request" and "voice" in message:
        return ApiError(404, message, "voice", code="voice_not_found")
    if kind in ("bad_request", "malformed"):
        return ApiError(422, message, param, code=kind)
    if kind in ("actor_crashed", "actor_failed"):
        return ApiError(503, message, code=kind)
    return ApiError(500, message or "the render failed", code=kind or "render_failed")


def _event_json(msg: wire.Message) -> str:
    data = msgspec.to_builtins(msg)
    data.pop("v", None)
    return json.dumps({"kind": msg.KIND.decode(), **data})


class SpeechRoutes:
    """``/v1/audio/speech`` and what it needs to resolve names (models, voices)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def engine_info(self) -> dict[str, Any]:
        actors = await self.gw.actors_status()
        return dict(actors.get(wire.Role.TTS_RENDER, {}).get("info") or {})

    async def resolve_model(self, model: str) -> str:
        engine = str((await self.engine_info()).get("engine") or self.gw.settings.tts.engine)
        if model in OPENAI_MODELS or model == engine:
            return engine
        known = ", ".join((*OPENAI_MODELS, engine))
        raise ApiError(404, f"model {model!r} is not served here; models: {known}", "model", "model_not_found")

    async def resolve_voice(self, voice: str) -> str:
        """An OpenAI voice name -> its configured skald voice ("" = the default); a skald voice as is."""
        if voice in OPENAI_VOICES:
            return str(getattr(self.gw.settings.web.voices, voice))
        known = list((await self.engine_info()).get("voices") or [])
        if voice in known or not known:
            return voice
        names = ", ".join([*OPENAI_VOICES, *known])
        raise ApiError(404, f"unknown voice {voice!r}; voices: {names}", "voice", "voice_not_found")

    async def speech(self, request: Request) -> StreamingResponse:
        body = _parse(SpeechRequest, await _read_json(request))
        if not body.input.strip():
            raise ApiError(422, "input is empty: nothing to speak", "input", "empty_input")
        await self.resolve_model(body.model)
        voice = await self.resolve_voice(body.voice)
        gw = self.gw
        if gw.reader.active() >= gw.settings.web.max_renders:
            raise ApiError(
                429, f"{gw.settings.web.max_renders} renders are in progress (web.max_renders); retry shortly",
                code="too_many_renders",
            )  # fmt: skip
        actors = await gw.actors_status()
        down = [role for role in (wire.Role.TTS_RENDER,) if not actors.get(role, {}).get("ready")]
        if down:
            raise ApiError(503, f"{', '.join(down)} is restarting; retry shortly", code="actor_restarting")
        request_id = f"web-{uuid.uuid4().hex[:12]}"
        stream = gw.reader.open(request_id, asyncio.get_running_loop())
        t_start = time.monotonic()
        reply = await gw.control(
            wire.Speak(request_id=request_id, text=body.input, voice=voice, output="render", speed=body.speed)
        )
        if isinstance(reply, wire.Error):
            gw.reader.forget(request_id)
            raise _from_wire_error(reply, "input")
        first = await stream.next_item()
        if isinstance(first, RenderEnd):
            gw.reader.forget(request_id)
            raise _from_wire_error(first)
        ttfb_ms = (time.monotonic() - t_start) * 1000.0
        encoder = make_encoder(body.response_format, gw.reader.ring.sample_rate)
        rate = gw.reader.ring.sample_rate

        async def audio() -> AsyncIterator[bytes]:
            finished = False
            frames = len(first)
            try:
                data = await gw.offload(encoder.encode, first)
                if data:
                    yield data
                while True:
                    item = await stream.next_item()
                    if isinstance(item, RenderEnd):
                        if item.status != "done":
                            # Headers are sent: the only way left to say "broken" is to cut the body.
                            raise RuntimeError(f"render {request_id} {item.status}: {item.reason}")
                        tail = await gw.offload(encoder.finish)
                        if tail:
                            yield tail
                        finished = True
                        gw.report_finished(request_id, frames / rate, ttfb_ms)
                        return
                    frames += len(item)
                    data = await gw.offload(encoder.encode, item)
                    if data:
                        yield data
            finally:
                gw.reader.forget(request_id)
                encoder.close()
                if not finished:
                    gw.cancel_soon(request_id)  # the client left (or the render broke): stop synthesis

        headers = {"X-Request-Id": request_id, "Cache-Control": "no-store"}
        if body.stream_format == "sse":
            return StreamingResponse(_sse_audio(audio()), media_type="text/event-stream", headers=headers)
        return StreamingResponse(audio(), media_type=CONTENT_TYPES[body.response_format], headers=headers)


async def _sse_audio(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """OpenAI's ``stream_format: "sse"``: ``speech.audio.delta`` events, then ``speech.audio.done``."""
    async for data in chunks:
        event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")}
        yield f"data: {json.dumps(event)}\n\n".encode()
    done = {"type": "speech.audio.done", "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}}
    yield f"data: {json.dumps(done)}\n\n".encode()


def build_app(gw: Gateway) -> FastAPI:
    """The FastAPI application of one web actor."""
    web = gw.settings.web
    app = FastAPI(title="skald", version="1", summary="Streaming narration: OpenAI-compatible speech and the stage")
    app.state.max_body = web.max_body_bytes
    speech = SpeechRoutes(gw)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(_request: Request, _exc: BodyTooLarge) -> JSONResponse:
        return _too_large(web.max_body_bytes).response()

    @app.exception_handler(404)
    async def not_found(request: Request, _exc: Exception) -> JSONResponse:
        return ApiError(404, f"no route {request.method} {request.url.path}", code="unknown_url").response()

    @app.exception_handler(405)
    async def bad_method(request: Request, _exc: Exception) -> JSONResponse:
        err = ApiError(400, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")
        return err.response()

    @app.post(
        "/v1/audio/speech",
        response_class=StreamingResponse,
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": SpeechRequest.model_json_schema()}}}},
    )  # fmt: skip
    async def create_speech(request: Request) -> StreamingResponse:
        """Stream speech for ``input`` (OpenAI's API): a render, never played on skald's stage."""
        return await speech.speech(request)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        engine = str((await speech.engine_info()).get("engine") or gw.settings.tts.engine)
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "skald"} for name in (*OPENAI_MODELS, engine)]
        return {"object": "list", "data": data}

    @app.get("/v1/audio/voices")
    async def voices() -> dict[str, Any]:
        info = await speech.engine_info()
        own = list(info.get("voices") or [])
        default = str(info.get("voice") or "")
        aliases = {name: (getattr(web.voices, name) or default) for name in OPENAI_VOICES}
        return {"voices": [*own, *OPENAI_VOICES], "skald": own, "openai": aliases, "default": default}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        """skald's Prometheus metrics (the supervisor's, as ``skald serve --metrics`` serves them)."""
        reply = await gw.control(wire.MetricsQuery())
        if not isinstance(reply, wire.MetricsText):
            raise ApiError(503, "the supervisor gave no metrics", code="metrics_unavailable")
        return PlainTextResponse(reply.text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        actors = await gw.actors_status()
        ready = {role: bool(a.get("ready")) for role, a in actors.items()}
        ok = bool(ready) and all(ready.values())
        return JSONResponse({"status": "ok" if ok else "degraded", "actors": ready}, status_code=200 if ok else 503)

    @app.post("/v1/narration", openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": NarrationRequest.model_json_schema()}}}})  # fmt: skip
    async def narration(request: Request) -> dict[str, Any]:
        """Speak ``text`` on the stage; answers the request id (follow it on ``/v1/events``)."""
        body = _parse(NarrationRequest, await _read_json(request))
        reply = await gw.control(
            wire.Speak(text=body.text, voice=body.voice, priority=body.priority, barge_in=body.barge_in)
        )
        if isinstance(reply, wire.Error):
            raise _from_wire_error(reply, "text")
        assert isinstance(reply, wire.Accepted)
        return {"request_id": reply.request_id, "status": "accepted"}

    @app.post("/v1/narration/cancel", openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": CancelRequest.model_json_schema()}}}})  # fmt: skip
    async def cancel(request: Request) -> dict[str, Any]:
        body = _parse(CancelRequest, await _read_json(request))
        if not body.all and not body.request_id:
            raise ApiError(400, 'give "request_id" or "all": true', "request_id", "missing_field")
        reply = await gw.control(wire.Cancel(request_id=body.request_id, all=body.all))
        if isinstance(reply, wire.Error):
            status = 404 if "no request" in reply.message else 422
            raise ApiError(status, reply.message, "request_id", reply.kind)
        return {"request_id": "*" if body.all else body.request_id, "status": "cancelled"}

    @app.get("/v1/events")
    async def events(request: Request, request_id: str = "") -> StreamingResponse:
        """skald's event stream as server-sent events: ``event: <kind>``, ``data: <JSON>``."""
        queue = gw.subscribe()

        async def lines() -> AsyncIterator[bytes]:
            try:
                yield b": skald events\n\n"
                while True:
                    msg = await queue.get()
                    if msg is None:
                        yield b": dropped: this client fell too far behind\n\n"
                        return
                    if request_id and getattr(msg, "request_id", None) != request_id:
                        continue
                    yield f"event: {msg.KIND.decode()}\ndata: {_event_json(msg)}\n\n".encode()
            finally:
                gw.unsubscribe(queue)

        return StreamingResponse(lines(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    # The last added is the outermost: CORS answers a browser's preflight before the key check.
    app.add_middleware(GuardMiddleware, api_key=web.api_key, max_body=web.max_body_bytes)
    if web.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        origins = [o.strip() for o in web.cors_origins.split(",") if o.strip()]
        # A WHEP client on another origin must read the session's Location.
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"],
                           expose_headers=["Location"])  # fmt: skip
    return app
