"""The routes of ``cauldron-zmq web``: two pages, the JSON API and its event stream.

Built on starlette; every route is a thin layer over :class:`.gateway.Gateway`,
which does the talking to ZeroMQ.  API errors are JSON,
``{"error": CODE, "message": ...}``, with the project's error codes.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, AsyncIterator, Dict

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import protocol
from .gateway import Gateway, GatewayError
from .pages import error_page, service_page, status_page

__all__ = ["create_app", "KEEPALIVE"]

STATIC = Path(__file__).resolve().parent / "static"
KEEPALIVE = 15.0          # seconds between SSE comments on a quiet stream
TICK = 0.5                # how often a quiet stream looks whether the server is stopping
MAX_BODY = 1 << 20        # a PUT body larger than this is refused
EXECUTOR_THREADS = 16     # concurrent blocking client calls


def _json(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, allow_nan=False, default=str).encode("utf-8")
    return Response(body, status_code=status, media_type="application/json",
                    headers={"Cache-Control": "no-store"})


def _error(exc: GatewayError) -> Response:
    return _json(exc.body(), exc.status)


def create_app(gateway: Gateway) -> Starlette:
    """The ASGI application serving ``gateway``; shutting it down closes the gateway."""

    async def index(request: Request) -> Response:
        try:
            book, error = await gateway.book(), None
        except GatewayError as exc:
            book, error = None, exc.message
        return HTMLResponse(status_page(book, error, gateway.config.router_address()))

    async def service(request: Request) -> Response:
        try:
            data = await gateway.describe_service(request.path_params["service"])
        except GatewayError as exc:
            return HTMLResponse(error_page(f"Service {request.path_params['service']}",
                                           exc.message), status_code=exc.status)
        return HTMLResponse(service_page(data))

    async def api_services(request: Request) -> Response:
        try:
            return _json(await gateway.book())
        except GatewayError as exc:
            return _error(exc)

    async def api_service(request: Request) -> Response:
        try:
            return _json(await gateway.describe_service(request.path_params["service"]))
        except GatewayError as exc:
            return _error(exc)

    async def api_keyword(request: Request) -> Response:
        service, keyword = request.path_params["service"], request.path_params["keyword"]
        try:
            if request.method == "PUT":
                return _json(await gateway.write(service, keyword, await _body(request)))
            return _json(await gateway.read(service, keyword))
        except GatewayError as exc:
            return _error(exc)

    async def api_events(request: Request) -> Response:
        try:
            view = await gateway.view(request.path_params["service"])
        except GatewayError as exc:
            return _error(exc)
        sub = view.subscribe()      # now, so the stream starts with the values of this moment

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 1000\n\n"
                idle = 0.0
                while not gateway.stopping:      # the server stopping ends the stream
                    try:
                        event = await asyncio.wait_for(sub.queue.get(), TICK)
                    except asyncio.TimeoutError:
                        idle += TICK
                        if idle >= KEEPALIVE:
                            idle = 0.0
                            yield b": keepalive\n\n"
                        continue
                    idle = 0.0
                    yield sse(event)
            finally:
                view.unsubscribe(sub)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store",
                                          "X-Accel-Buffering": "no"})

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", "") or "no such page"
        if request.url.path.startswith("/api/"):
            code = protocol.E_NOT_FOUND if status == 404 else protocol.E_REQUEST
            return _json({"error": code, "message": f"{request.method} {request.url.path}: "
                                                    f"{detail}"}, status)
        return HTMLResponse(error_page("Not found" if status == 404 else "Error", str(detail)),
                            status_code=status)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Blocking client calls (up to a timeout each) get threads of their own.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(EXECUTOR_THREADS, thread_name_prefix="cauldron_zmq.web"))
        yield
        await asyncio.get_running_loop().run_in_executor(None, gateway.close)

    routes = [
        Route("/", index),
        Route("/services/{service}", service),
        Route("/api/services", api_services),
        Route("/api/services/{service}", api_service),
        Route("/api/services/{service}/keywords/{keyword}", api_keyword, methods=["GET", "PUT"]),
        Route("/api/services/{service}/events", api_events),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: not_found})
    app.state.gateway = gateway
    return app


async def _body(request: Request) -> Any:
    chunks, size = [], 0
    async for chunk in request.stream():     # never more than MAX_BODY in memory
        size += len(chunk)
        if size > MAX_BODY:
            raise GatewayError(protocol.E_TOO_LARGE, f"the body is larger than {MAX_BODY} "
                                                     "bytes", status=413)
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise GatewayError(protocol.E_JSON, f"the body is not JSON: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def sse(event: Dict[str, Any]) -> bytes:
    """One Server-Sent Event: values as unnamed events, ``gap``/``restart`` named."""
    data = json.dumps(event, allow_nan=False, default=str)
    kind = event.get("type")
    head = "" if kind == "value" else f"event: {kind}\n"
    return f"{head}data: {data}\n\n".encode("utf-8")

