"""HTTP routes for the console (under /api/v1) and the operational endpoints.

Each route parses its input, calls the service, commits the unit of work when it changed something,
and shapes the answer. Who may do what is decided in the service, from the database (not from the
token's `orgs` claim, which may be up to 15 minutes old).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

import jwt
from agentline_common.auth import ALGORITHM, UserClaims
from agentline_common.http import metrics_response
from agentline_common.rooms import E164_PATTERN
from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from agentline_registry import repository, service
from agentline_registry.database import UnitOfWork
from agentline_registry.runtime import Runtime
from agentline_registry.schemas import (
    MAX_PAGE,
    AgentCreate,
    AgentRead,
    AgentUpdate,
    LoginRequest,
    MemberCreate,
    MemberRead,
    MeRead,
    OrgCreate,
    OrgRead,
    Page,
    PhoneNumberCreate,
    PhoneNumberRead,
    SessionRead,
    TokenRead,
)

READINESS_TIMEOUT = 2.0


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_unit_of_work(runtime: RuntimeDep) -> AsyncIterator[UnitOfWork]:
    """One transaction per request; closed without a commit, everything it wrote is rolled back."""
    async with runtime.sessions() as session:
        yield UnitOfWork(session, after_commit=runtime.relay.wake)


UnitOfWorkDep = Annotated[UnitOfWork, Depends(get_unit_of_work)]

_bearer = HTTPBearer(auto_error=False, description="An access token from POST /api/v1/auth/login")


class NotAuthenticated(Exception):
    """No bearer token, or one the registry did not sign or that expired. Maps to 401."""


@dataclass(frozen=True)
class Actor:
    user_id: uuid.UUID
    claims: UserClaims


async def get_actor(
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Actor:
    if credentials is None:
        raise NotAuthenticated("missing bearer token")
    try:
        payload = jwt.decode(
            credentials.credentials,
            key=runtime.signing_key.private_key.public_key(),
            algorithms=[ALGORITHM],
            audience=runtime.settings.jwt_audience,
            issuer=runtime.settings.jwt_issuer,
            options={"require": ["exp", "iat", "sub", "jti"]},
        )
        claims = UserClaims.model_validate(payload)
    except jwt.ExpiredSignatureError as error:
        raise NotAuthenticated("token expired") from error
    except (jwt.PyJWTError, ValidationError) as error:
        raise NotAuthenticated("invalid token") from error
    return Actor(user_id=claims.user_id, claims=claims)


ActorDep = Annotated[Actor, Depends(get_actor)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="page size")]
Offset = Annotated[int, Query(ge=0, le=1_000_000_000, description="items to skip")]
NumberPath = Annotated[
    str,
    Path(pattern=f"^{E164_PATTERN}$", max_length=16, description="E.164, URL-encoded (%2B...)"),
]

router = APIRouter(prefix="/api/v1")
operations = APIRouter()


@router.post("/auth/login", response_model=TokenRead, tags=["auth"])
async def login(body: LoginRequest, uow: UnitOfWorkDep, runtime: RuntimeDep) -> TokenRead:
    """Exchange email and password for a short-lived access token (RS256 JWT).

    An email with too many failed log-ins lately is answered 429 with Retry-After, even with the
    right password, until the window has passed.
    """
    token = await service.login(
        uow.session,
        email=body.email,
        password=body.password,
        failures=runtime.login_failures,
        key=runtime.signing_key,
        issuer=runtime.settings.jwt_issuer,
        audience=runtime.settings.jwt_audience,
        lifetime=timedelta(minutes=runtime.settings.access_token_minutes),
    )
    return TokenRead(access_token=token.token, expires_at=token.expires_at)


@router.get("/auth/me", response_model=MeRead, tags=["auth"])
async def who_am_i(actor: ActorDep, uow: UnitOfWorkDep) -> MeRead:
    """The signed-in user and their organisations."""
    return await service.me(uow.session, actor=actor.user_id)


async def _jwks(runtime: RuntimeDep) -> dict[str, Any]:
    """The public keys that verify users' access tokens."""
    return runtime.signing_key.jwks()


router.add_api_route("/.well-known/jwks.json", _jwks, methods=["GET"], tags=["auth"])
operations.add_api_route("/.well-known/jwks.json", _jwks, methods=["GET"], tags=["auth"])


@router.get("/orgs", response_model=list[OrgRead], tags=["orgs"])
async def list_orgs(actor: ActorDep, uow: UnitOfWorkDep) -> list[OrgRead]:
    """The organisations the user belongs to, with their role in each."""
    return await service.list_orgs(uow.session, actor=actor.user_id)


@router.post("/orgs", response_model=OrgRead, status_code=status.HTTP_201_CREATED, tags=["orgs"])
async def create_org(body: OrgCreate, actor: ActorDep, uow: UnitOfWorkDep) -> OrgRead:
    """Create an organisation; its creator becomes its owner."""
    org = await service.create_org(uow.session, owner=actor.user_id, name=body.name)
    await uow.commit()
    return org


@router.get("/orgs/{org_id}", response_model=OrgRead, tags=["orgs"])
async def get_org(org_id: uuid.UUID, actor: ActorDep, uow: UnitOfWorkDep) -> OrgRead:
    """One organisation the user belongs to."""
    return await service.get_org(uow.session, actor=actor.user_id, org_id=org_id)


@router.get("/orgs/{org_id}/members", response_model=list[MemberRead], tags=["orgs"])
async def list_members(org_id: uuid.UUID, actor: ActorDep, uow: UnitOfWorkDep) -> list[MemberRead]:
    """The organisation's members and their roles."""
    return await service.list_members(uow.session, actor=actor.user_id, org_id=org_id)


@router.post(
    "/orgs/{org_id}/members",
    response_model=MemberRead,
    status_code=status.HTTP_201_CREATED,
    tags=["orgs"],
)
async def add_member(
    org_id: uuid.UUID, body: MemberCreate, actor: ActorDep, uow: UnitOfWorkDep
) -> MemberRead:
    """Add a member (owner or admin only); a password creates the account for a new email."""
    member = await service.add_member(uow.session, actor=actor.user_id, org_id=org_id, member=body)
    await uow.commit()
    return member


@router.delete("/orgs/{org_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["orgs"])
async def remove_member(
    org_id: uuid.UUID, user_id: uuid.UUID, actor: ActorDep, uow: UnitOfWorkDep, runtime: RuntimeDep
) -> Response:
    """Remove a member (owner or admin only; the last owner stays); their access tokens stop
    admitting test calls of the organisation at once, not when they expire."""
    await service.remove_member(uow.session, actor=actor.user_id, org_id=org_id, user_id=user_id)
    await runtime.note_removed_member(org_id, user_id)
    await uow.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/orgs/{org_id}/agents", response_model=Page[AgentRead], tags=["agents"])
async def list_agents(
    org_id: uuid.UUID, actor: ActorDep, uow: UnitOfWorkDep, limit: Limit = 20, offset: Offset = 0
) -> Page[AgentRead]:
    """The organisation's agents, oldest first, a page at a time."""
    return await service.list_agents(
        uow.session, actor=actor.user_id, org_id=org_id, limit=limit, offset=offset
    )


@router.post(
    "/orgs/{org_id}/agents",
    response_model=AgentRead,
    status_code=status.HTTP_201_CREATED,
    tags=["agents"],
)
async def create_agent(
    org_id: uuid.UUID, body: AgentCreate, actor: ActorDep, uow: UnitOfWorkDep
) -> AgentRead:
    """Create an agent (owner or admin only)."""
    agent = await service.create_agent(uow.session, actor=actor.user_id, org_id=org_id, spec=body)
    await uow.commit()
    return agent


@router.get("/agents/{agent_id}", response_model=AgentRead, tags=["agents"])
async def get_agent(agent_id: uuid.UUID, actor: ActorDep, uow: UnitOfWorkDep) -> AgentRead:
    """One agent with its configuration and phone numbers."""
    return await service.get_agent(uow.session, actor=actor.user_id, agent_id=agent_id)


@router.patch("/agents/{agent_id}", response_model=AgentRead, tags=["agents"])
async def update_agent(
    agent_id: uuid.UUID, body: AgentUpdate, actor: ActorDep, uow: UnitOfWorkDep
) -> AgentRead:
    """Change the fields given (owner or admin only)."""
    agent = await service.update_agent(uow.session, actor=actor.user_id, agent_id=agent_id, update=body)
    await uow.commit()
    return agent


@router.delete("/agents/{agent_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["agents"])
async def delete_agent(agent_id: uuid.UUID, actor: ActorDep, uow: UnitOfWorkDep) -> Response:
    """Delete an agent and release its numbers (owner or admin only); its call log stays."""
    await service.delete_agent(uow.session, actor=actor.user_id, agent_id=agent_id)
    await uow.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/agents/{agent_id}/activate", response_model=AgentRead, tags=["agents"])
async def activate_agent(agent_id: uuid.UUID, actor: ActorDep, uow: UnitOfWorkDep) -> AgentRead:
    """Let the agent take calls again (owner or admin only)."""
    agent = await service.set_active(uow.session, actor=actor.user_id, agent_id=agent_id, active=True)
    await uow.commit()
    return agent


@router.post("/agents/{agent_id}/deactivate", response_model=AgentRead, tags=["agents"])
async def deactivate_agent(agent_id: uuid.UUID, actor: ActorDep, uow: UnitOfWorkDep) -> AgentRead:
    """Stop the agent taking calls; every service refuses it within about a second."""
    agent = await service.set_active(uow.session, actor=actor.user_id, agent_id=agent_id, active=False)
    await uow.commit()
    return agent


@router.get("/orgs/{org_id}/phone-numbers", response_model=list[PhoneNumberRead], tags=["phone numbers"])
async def list_numbers(org_id: uuid.UUID, actor: ActorDep, uow: UnitOfWorkDep) -> list[PhoneNumberRead]:
    """The organisation's phone numbers and the agent each one reaches."""
    return await service.list_numbers(uow.session, actor=actor.user_id, org_id=org_id)


@router.post(
    "/agents/{agent_id}/phone-numbers",
    response_model=PhoneNumberRead,
    status_code=status.HTTP_201_CREATED,
    tags=["phone numbers"],
)
async def assign_number(
    agent_id: uuid.UUID, body: PhoneNumberCreate, actor: ActorDep, uow: UnitOfWorkDep
) -> PhoneNumberRead:
    """Bind a number to the agent (owner or admin only); a number taken elsewhere is a 409."""
    number = await service.assign_number(
        uow.session, actor=actor.user_id, agent_id=agent_id, number=body.number
    )
    await uow.commit()
    return number


@router.delete(
    "/agents/{agent_id}/phone-numbers/{number}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["phone numbers"],
)
async def release_number(
    agent_id: uuid.UUID, number: NumberPath, actor: ActorDep, uow: UnitOfWorkDep
) -> Response:
    """Release a number from the agent (owner or admin only)."""
    await service.release_number(uow.session, actor=actor.user_id, agent_id=agent_id, number=number)
    await uow.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/agents/{agent_id}/sessions", response_model=Page[SessionRead], tags=["sessions"])
async def list_sessions(
    agent_id: uuid.UUID,
    actor: ActorDep,
    uow: UnitOfWorkDep,
    limit: Limit = 20,
    offset: Offset = 0,
) -> Page[SessionRead]:
    """The agent's call log, newest first."""
    return await service.list_sessions(
        uow.session, actor=actor.user_id, agent_id=agent_id, limit=limit, offset=offset
    )


@router.get("/sessions/{session_id}", response_model=SessionRead, tags=["sessions"])
async def get_session(session_id: uuid.UUID, actor: ActorDep, uow: UnitOfWorkDep) -> SessionRead:
    """One call with its transcript and per-turn metrics."""
    return await service.get_session(uow.session, actor=actor.user_id, session_id=session_id)


@operations.get("/healthz", tags=["operations"])
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@operations.get("/readyz", tags=["operations"])
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """Readiness: the database and Redis answer within 2 s and the broker connection is open.

    Redis counts because the session-log consumer records the events it has processed there: without
    it every session event is retried, and the call log stops moving.
    """
    database, redis = await asyncio.gather(_database_check(runtime), _redis_check(runtime))
    checks = {
        "database": database,
        "redis": redis,
        "broker": "ok" if runtime.bus.is_connected else "unavailable",
    }
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE,
    )


async def _database_check(runtime: Runtime) -> str:
    try:
        async with asyncio.timeout(READINESS_TIMEOUT), runtime.sessions() as db:
            await repository.ping(db)
    except (TimeoutError, SQLAlchemyError, OSError):
        return "unavailable"
    return "ok"


async def _redis_check(runtime: Runtime) -> str:
    try:
        async with asyncio.timeout(READINESS_TIMEOUT):
            await runtime.redis.ping()
    except (RedisError, OSError):  # OSError includes TimeoutError
        return "unavailable"
    return "ok"


@operations.get("/metrics", tags=["operations"], response_class=Response)
async def metrics(runtime: RuntimeDep) -> Response:
    """Prometheus metrics."""
    await runtime.refresh_gauges()
    return metrics_response(runtime.metrics.registry)
