"""The FastAPI application: routes, the optional API key, and JSON for every error (never a traceback).

Handlers are `async def` and answer from memory in microseconds, so they run on the event loop itself
rather than in a thread pool; the body is the bytes `Api` built, sent as they are."""

from __future__ import annotations

import hmac
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from marketlake.serve.api import Api, Reply, error

log = logging.getLogger("marketlake.serve")
API_KEY_HEADER = "x-api-key"
JSON = "application/json"


def respond(reply: Reply) -> Response:
    return Response(reply.body, status_code=reply.status, media_type=JSON)


def create_app(api: Api, api_key: str | None = None) -> FastAPI:
    """The app over `api`; with `api_key`, every endpoint but /health needs it in the X-API-Key header."""
    app = FastAPI(title="marketlake serve", version="1", docs_url="/docs", redoc_url=None)
    expected = api_key.encode() if api_key else None

    def denied(request: Request) -> Response | None:
        if expected is None:
            return None
        given = request.headers.get(API_KEY_HEADER, "").encode("utf-8", "surrogateescape")
        if hmac.compare_digest(given, expected):
            return None
        return respond(error(401, "missing or wrong API key (header X-API-Key)"))

    @app.get("/recommendations/{user_id:path}")
    async def recommendations(user_id: str, request: Request) -> Response:
        """The user's recommendations: `source` is realtime, daily, or popular (a user the tables do not know)."""
        return denied(request) or respond(api.recommendations(user_id, request.query_params.get("n")))

    @app.get("/similar/{item_id:path}")
    async def similar(item_id: str, request: Request) -> Response:
        """The item's look-alikes (404 when the item or the similar-items table is unknown)."""
        return denied(request) or respond(api.similar(item_id, request.query_params.get("n")))

    @app.get("/segments/{user_id:path}")
    async def segments(user_id: str, request: Request) -> Response:
        """The user's segment (404 for a user the segments table does not know)."""
        return denied(request) or respond(api.segments(user_id))

    @app.get("/health")
    async def health() -> Response:
        """Each table's served version, its commit's age in seconds, and the newest version seen."""
        return respond(api.health())

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        message = {404: "no such endpoint", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        return respond(error(exc.status_code, message))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        return respond(error(422, "bad request"))

    @app.exception_handler(Exception)
    async def failure(request: Request, exc: Exception) -> Response:
        log.error("serve: %s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return respond(error(500, "internal error"))

    return app
