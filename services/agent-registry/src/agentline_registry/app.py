"""The registry's FastAPI app: factory, lifespan, error mapping, the shared HTTP edge."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from agentline_common.http import ObservedRequests
from agentline_common.rate_limits import RateLimitUnavailable
from agentline_common.rooms import InvalidPhoneNumber
from fastapi import FastAPI, Request, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from agentline_registry import service
from agentline_registry.api import NotAuthenticated, operations, router
from agentline_registry.metrics import RegistryMetrics
from agentline_registry.runtime import RemovalNotNoted, bootstrap, shutdown
from agentline_registry.settings import RegistrySettings

log = structlog.get_logger()

DATABASE_UNAVAILABLE = "the database is unavailable; retry shortly"
DATABASE_RETRY_AFTER_SECONDS = 5


def create_app(settings: RegistrySettings | None = None) -> FastAPI:
    settings = settings or RegistrySettings()
    metrics = RegistryMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await bootstrap(settings, metrics=metrics)
        app.state.runtime = runtime
        try:
            yield
        finally:
            await shutdown(runtime)

    app = FastAPI(
        title="Agentline agent registry",
        version="0.1.0",
        description="Organisations, users, agents, phone numbers and the call log.",
        lifespan=lifespan,
    )
    app.include_router(router)
    app.include_router(operations)
    _map_errors(app)
    app.add_middleware(ObservedRequests, latency=metrics.request_seconds)
    return app


def _detail(status_code: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


def integrity_detail(error: Exception) -> str:
    """What a constraint the service's own checks did not foresee means to the client: a row it
    refers to was deleted meanwhile (foreign key), or a concurrent change took the same value."""
    if "foreign key" in str(getattr(error, "orig", error)).lower():
        return "the change refers to something deleted meanwhile; reload and retry"
    return "the change conflicts with a concurrent one; retry"


def _map_errors(app: FastAPI) -> None:
    async def not_found(_: Request, error: Exception) -> Response:
        return _detail(status.HTTP_404_NOT_FOUND, str(error))

    async def forbidden(_: Request, error: Exception) -> Response:
        return _detail(status.HTTP_403_FORBIDDEN, str(error))

    async def conflict(_: Request, error: Exception) -> Response:
        return _detail(status.HTTP_409_CONFLICT, str(error))

    async def unauthenticated(_: Request, error: Exception) -> Response:
        return _detail(status.HTTP_401_UNAUTHORIZED, str(error), headers={"WWW-Authenticate": "Bearer"})

    async def too_many_logins(_: Request, error: Exception) -> Response:
        assert isinstance(error, service.TooManyLogins)
        return _detail(
            status.HTTP_429_TOO_MANY_REQUESTS,
            str(error),
            headers={"Retry-After": str(error.retry_after_seconds)},
        )

    async def rate_limit_unavailable(_: Request, error: Exception) -> Response:
        log.warning("registry.rate_limit_unavailable", error=str(error))
        return _detail(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"{error}; retry shortly",
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )

    async def bad_number(_: Request, error: Exception) -> Response:
        return _detail(status.HTTP_422_UNPROCESSABLE_CONTENT, f"number: {error}")

    async def removal_not_noted(_: Request, error: Exception) -> Response:
        return _detail(status.HTTP_503_SERVICE_UNAVAILABLE, str(error), headers={"Retry-After": "5"})

    async def integrity(_: Request, error: Exception) -> Response:
        log.warning("registry.integrity_conflict", error=type(error).__name__)
        return _detail(status.HTTP_409_CONFLICT, integrity_detail(error))

    async def database_unavailable(request: Request, error: Exception) -> Response:
        # Any database failure that is not the request's fault (refused, timed out, dropped; asyncpg
        # raises a bare OSError or TimeoutError for those): a 503 the client can retry, not a 500.
        log.warning(
            "registry.database_unavailable",
            route=request.url.path,
            error=type(error).__name__,
            detail=str(error)[:300],
        )
        return _detail(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            DATABASE_UNAVAILABLE,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )

    app.add_exception_handler(service.NotFound, not_found)
    app.add_exception_handler(service.Forbidden, forbidden)
    app.add_exception_handler(service.Conflict, conflict)
    app.add_exception_handler(service.Unauthenticated, unauthenticated)
    app.add_exception_handler(NotAuthenticated, unauthenticated)
    app.add_exception_handler(service.TooManyLogins, too_many_logins)
    app.add_exception_handler(RateLimitUnavailable, rate_limit_unavailable)
    app.add_exception_handler(InvalidPhoneNumber, bad_number)
    app.add_exception_handler(IntegrityError, integrity)
    app.add_exception_handler(RemovalNotNoted, removal_not_noted)
    # OSError covers asyncpg's refused connections and every TimeoutError (one of its subclasses).
    for unavailable in (SQLAlchemyError, OSError):
        app.add_exception_handler(unavailable, database_unavailable)
