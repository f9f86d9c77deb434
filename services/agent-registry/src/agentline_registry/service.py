"""The registry's logic: who may do what, agents and numbers, the call log, look-ups.

Functions take the caller's database session and flush; the entry point (HTTP request, bus consumer,
command line) commits. Every change to an agent writes its `agent.changed` event to the outbox in the
same transaction, so the event exists exactly when the change does.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog
from agentline_common.agents import AgentConfig, WebhookTool
from agentline_common.auth import Role
from agentline_common.events import (
    AgentChanged,
    AgentChangedData,
    Event,
    SessionEnded,
    SessionRequested,
    SessionStarted,
)
from agentline_common.rate_limits import Attempt, RateLimitUnavailable
from agentline_common.rooms import InvalidRoomName, PhoneRoom, parse_room_name, require_e164
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from agentline_registry import repository
from agentline_registry.credentials import (
    AccessToken,
    SigningKey,
    hash_password_off_loop,
    issue_access_token,
    verify_password_off_loop,
)
from agentline_registry.schemas import (
    AgentCreate,
    AgentRead,
    AgentUpdate,
    MemberCreate,
    MemberRead,
    MembershipRead,
    MeRead,
    OrgRead,
    Page,
    PhoneNumberRead,
    SessionRead,
)
from agentline_registry.tables import Agent, CallSession, Membership, Org, PhoneNumber, User

log = structlog.get_logger()

MANAGERS = frozenset({Role.OWNER, Role.ADMIN})
FAILED_REASONS = frozenset({"error", "agent_unavailable", "call_failed"})
END_REASON_WEIGHT = {"expired": 0, "room_finished": 1}
"""How little an end says about a call: the sweep's expiry is a guess, and LiveKit's "room finished"
(the token-service's backstop for a worker that died) says only that the room closed. Every other
reason comes from whoever ended the call and weighs 2."""
TERMINAL_STATUSES = frozenset({"ended", "failed"})


class NotFound(Exception):
    """No such thing, or the caller may not know it exists (another organisation's data)."""


class Forbidden(Exception):
    """The caller is a member but their role does not allow this."""


class Conflict(Exception):
    """The change clashes with existing data; the message names what."""


class Unauthenticated(Exception):
    """Wrong email or password."""


class TooManyLogins(Exception):
    """The email has had too many failed log-ins lately. Maps to 429 with Retry-After."""

    def __init__(self, message: str, *, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class AttemptLimit(Protocol):
    """Counts attempts per subject in a sliding window (`agentline_common.rate_limits`)."""

    async def admit(self, subject: str) -> Attempt: ...

    async def forget(self, attempt: Attempt) -> None: ...


def normalise_email(email: str) -> str:
    return email.strip().lower()


# Who may do what


async def require_role(db: AsyncSession, *, actor: uuid.UUID, org_id: uuid.UUID, manage: bool) -> Role:
    """The actor's role in `org_id`. Non-members get NotFound (nothing about the org leaks);
    members without a managing role get Forbidden when `manage` is asked."""
    role = await repository.role_of(db, user_id=actor, org_id=org_id)
    if role is None:
        raise NotFound("organisation not found")
    granted = Role(role)
    if manage and granted not in MANAGERS:
        raise Forbidden("this needs the owner or admin role in the organisation")
    return granted


async def _agent_for(db: AsyncSession, *, actor: uuid.UUID, agent_id: uuid.UUID, manage: bool) -> Agent:
    agent = await repository.get_agent(db, agent_id)
    if agent is None:
        raise NotFound("agent not found")
    try:
        await require_role(db, actor=actor, org_id=agent.org_id, manage=manage)
    except NotFound as error:
        raise NotFound("agent not found") from error
    return agent


# Log-in and people


async def login(
    db: AsyncSession,
    *,
    email: str,
    password: str,
    failures: AttemptLimit,
    key: SigningKey,
    issuer: str,
    audience: str,
    lifetime: timedelta,
) -> AccessToken:
    """A token for the right email and password. Every attempt counts as a failure of its email
    until the password is found right, so concurrent guesses cannot slip past the limit together."""
    email = normalise_email(email)
    attempt = await failures.admit(login_subject(email))
    if not attempt.decision.allowed:
        wait = attempt.decision.retry_after_seconds
        raise TooManyLogins(
            f"too many failed log-ins for this email; try again in {wait} s", retry_after_seconds=wait
        )
    try:
        user = await _user_with_password(db, email=email, password=password)
    except Unauthenticated:
        raise
    except Exception:
        # Not a wrong password (the database or the hashing failed): the attempt must not count
        # against the person, who would be locked out after retrying through an outage.
        with contextlib.suppress(RateLimitUnavailable):
            await failures.forget(attempt)
        raise
    await failures.forget(attempt)
    orgs = {org.id: Role(role) for org, role in await repository.orgs_of_user(db, user.id)}
    log.info("auth.logged_in", user_id=str(user.id))
    return issue_access_token(
        key,
        user_id=user.id,
        email=user.email,
        orgs=orgs,
        issuer=issuer,
        audience=audience,
        lifetime=lifetime,
    )


async def _user_with_password(db: AsyncSession, *, email: str, password: str) -> User:
    user = await repository.user_by_email(db, email)
    # End the read before hashing, so that log-ins queued for the hashing thread do not hold every
    # pooled connection (look-ups then waited for one); nothing was written. The user is detached
    # first, so the rollback does not expire what was read.
    if user is not None:
        db.expunge(user)
    await db.rollback()
    if not await verify_password_off_loop(user.password_hash if user else None, password) or user is None:
        log.info("auth.login_failed")
        raise Unauthenticated("invalid email or password")
    return user


def login_subject(email: str) -> str:
    """What an email's failed log-ins are counted under: a digest, so Redis holds no addresses."""
    return hashlib.sha256(email.encode()).hexdigest()


async def me(db: AsyncSession, *, actor: uuid.UUID) -> MeRead:
    user = await repository.get_user(db, actor)
    if user is None:
        raise NotFound("user not found")
    memberships = [
        MembershipRead(org_id=org.id, org_name=org.name, role=Role(role))
        for org, role in await repository.orgs_of_user(db, actor)
    ]
    return MeRead(id=user.id, email=user.email, name=user.name, memberships=memberships)


async def create_user(
    db: AsyncSession, *, email: str, password: str, name: str = "", managed_by: uuid.UUID | None = None
) -> User:
    email = normalise_email(email)
    if await repository.user_by_email(db, email) is not None:
        raise Conflict(f"email: a user with email {email!r} already exists")
    user = User(
        email=email,
        name=name,
        password_hash=await hash_password_off_loop(password),
        managed_by_org_id=managed_by,
    )
    try:
        await repository.add(db, user)
    except IntegrityError as error:
        raise Conflict(f"email: a user with email {email!r} already exists") from error
    log.info("user.created", user_id=str(user.id))
    return user


async def set_password(db: AsyncSession, *, user: User, password: str) -> None:
    await repository.set_password_hash(db, user.id, await hash_password_off_loop(password))


async def create_org(db: AsyncSession, *, owner: uuid.UUID, name: str) -> OrgRead:
    """A new organisation with `owner` as its first owner; NotFound when no such user exists (said
    here, not left to the membership's foreign key, whose error names no culprit)."""
    if await repository.get_user(db, owner) is None:
        raise NotFound(f"no user with id {owner}")
    org = Org(name=name)
    await repository.add(db, org)
    await repository.add(db, Membership(org_id=org.id, user_id=owner, role=Role.OWNER.value))
    log.info("org.created", org_id=str(org.id))
    return OrgRead(id=org.id, name=org.name, role=Role.OWNER, created_at=org.created_at)


async def list_orgs(db: AsyncSession, *, actor: uuid.UUID) -> list[OrgRead]:
    return [
        OrgRead(id=org.id, name=org.name, role=Role(role), created_at=org.created_at)
        for org, role in await repository.orgs_of_user(db, actor)
    ]


async def get_org(db: AsyncSession, *, actor: uuid.UUID, org_id: uuid.UUID) -> OrgRead:
    role = await require_role(db, actor=actor, org_id=org_id, manage=False)
    org = await repository.get_org(db, org_id)
    if org is None:
        raise NotFound("organisation not found")
    return OrgRead(id=org.id, name=org.name, role=role, created_at=org.created_at)


async def list_members(db: AsyncSession, *, actor: uuid.UUID, org_id: uuid.UUID) -> list[MemberRead]:
    await require_role(db, actor=actor, org_id=org_id, manage=False)
    return [
        MemberRead(user_id=user.id, email=user.email, name=user.name, role=Role(role))
        for user, role in await repository.members_of_org(db, org_id)
    ]


async def add_member(
    db: AsyncSession, *, actor: uuid.UUID, org_id: uuid.UUID, member: MemberCreate
) -> MemberRead:
    """Add an existing user by email, or create the account when a password is given.

    An account made here is managed by this organisation: its admin chose the password, and nothing
    proves the email is the person's. So it is never added to another organisation this way, or an
    admin could make an account for someone else's colleague and wait for their organisation to add
    it (an operator can, with `agentline-registry add-member`, after resetting the password)."""
    actor_role = await require_role(db, actor=actor, org_id=org_id, manage=True)
    if member.role == Role.OWNER and actor_role != Role.OWNER:
        raise Forbidden("role: only an owner may make another owner")
    email = normalise_email(member.email)
    user = await repository.user_by_email(db, email)
    if user is None:
        if member.password is None:
            raise NotFound(f"email: no user with email {email!r}; give a password to create one")
        user = await create_user(
            db, email=email, password=member.password, name=member.name, managed_by=org_id
        )
    elif member.password is not None:
        raise Conflict(f"email: a user with email {email!r} already exists; leave out the password")
    elif user.managed_by_org_id not in (None, org_id):
        raise Conflict(
            f"email: {email!r} is an account another organisation made, and its admin chose the password;"
            " ask your platform operator to check it is this person's and add it"
        )
    if await repository.role_of(db, user_id=user.id, org_id=org_id) is not None:
        raise Conflict(f"email: {email!r} is already a member of this organisation")
    await repository.add(db, Membership(org_id=org_id, user_id=user.id, role=member.role.value))
    log.info("org.member_added", org_id=str(org_id), user_id=str(user.id), role=member.role.value)
    return MemberRead(user_id=user.id, email=user.email, name=user.name, role=member.role)


async def remove_member(db: AsyncSession, *, actor: uuid.UUID, org_id: uuid.UUID, user_id: uuid.UUID) -> None:
    actor_role = await require_role(db, actor=actor, org_id=org_id, manage=True)
    membership = await repository.get_membership(db, user_id=user_id, org_id=org_id)
    if membership is None:
        raise NotFound("member not found")
    if membership.role == Role.OWNER:
        if actor_role != Role.OWNER:
            raise Forbidden("only an owner may remove an owner")
        if await repository.count_owners(db, org_id) <= 1:
            raise Conflict("user_id: the organisation's last owner cannot be removed")
    await repository.delete_membership(db, user_id=user_id, org_id=org_id)
    log.info("org.member_removed", org_id=str(org_id), user_id=str(user_id))


# Agents


def agent_read(agent: Agent, numbers: list[str]) -> AgentRead:
    """The console's view: the look-up answer plus bookkeeping times."""
    return AgentRead(
        **dict(agent_config(agent, numbers)), created_at=agent.created_at, updated_at=agent.updated_at
    )


def agent_config(agent: Agent, numbers: list[str]) -> AgentConfig:
    """The look-up answer: what a worker or gateway needs to serve calls for this agent."""
    return AgentConfig(
        id=agent.id,
        org_id=agent.org_id,
        name=agent.name,
        active=agent.active,
        instructions=agent.instructions,
        first_message=agent.first_message,
        language=agent.language,
        voice=agent.voice,
        stt_model=agent.stt_model,
        llm_model=agent.llm_model,
        tts_model=agent.tts_model,
        temperature=agent.temperature,
        tools=[WebhookTool.model_validate(tool) for tool in agent.tools],
        phone_numbers=numbers,
    )


def _tools_json(tools: list[WebhookTool]) -> list[dict[str, Any]]:
    return [tool.model_dump(mode="json") for tool in tools]


def apply_update(agent: Agent, update: AgentUpdate, *, now: datetime) -> list[str]:
    """Apply the given fields to `agent`; returns the names of the fields whose value changed."""
    changed: list[str] = []
    for field in update.model_fields_set:
        value = getattr(update, field)
        if field == "tools":
            value = _tools_json(value)
        if getattr(agent, field) != value:
            setattr(agent, field, value)
            changed.append(field)
    if changed:
        agent.updated_at = now
    return sorted(changed)


async def _numbers(db: AsyncSession, agent_id: uuid.UUID) -> list[str]:
    return (await repository.numbers_of_agents(db, [agent_id]))[agent_id]


async def _announce(db: AsyncSession, agent: Agent, change: str, *, numbers: list[str]) -> None:
    await repository.enqueue_event(
        db,
        AgentChanged(
            org_id=agent.org_id,
            agent_id=agent.id,
            data=AgentChangedData(change=change, phone_numbers=sorted(set(numbers))),
        ),
    )


async def create_agent(
    db: AsyncSession, *, actor: uuid.UUID | None, org_id: uuid.UUID, spec: AgentCreate
) -> AgentRead:
    """Create an agent. `actor=None` is the operator's command line, which needs no membership."""
    if actor is not None:
        await require_role(db, actor=actor, org_id=org_id, manage=True)
    elif await repository.get_org(db, org_id) is None:
        raise NotFound("organisation not found")
    values = spec.model_dump(exclude={"tools"})
    agent = Agent(org_id=org_id, tools=_tools_json(spec.tools), **values)
    await repository.add(db, agent)
    await _announce(db, agent, "created", numbers=[])
    log.info("agent.created", agent_id=str(agent.id), org_id=str(org_id))
    return agent_read(agent, [])


async def get_agent(db: AsyncSession, *, actor: uuid.UUID, agent_id: uuid.UUID) -> AgentRead:
    agent = await _agent_for(db, actor=actor, agent_id=agent_id, manage=False)
    return agent_read(agent, await _numbers(db, agent.id))


async def list_agents(
    db: AsyncSession, *, actor: uuid.UUID, org_id: uuid.UUID, limit: int, offset: int
) -> Page[AgentRead]:
    await require_role(db, actor=actor, org_id=org_id, manage=False)
    agents, total = await repository.agents_of_org(db, org_id, limit=limit, offset=offset)
    numbers = await repository.numbers_of_agents(db, [agent.id for agent in agents])
    items = [agent_read(agent, numbers[agent.id]) for agent in agents]
    return Page[AgentRead](items=items, total=total, limit=limit, offset=offset)


async def update_agent(
    db: AsyncSession, *, actor: uuid.UUID, agent_id: uuid.UUID, update: AgentUpdate
) -> AgentRead:
    agent = await _agent_for(db, actor=actor, agent_id=agent_id, manage=True)
    changed = apply_update(agent, update, now=datetime.now(UTC))
    numbers = await _numbers(db, agent.id)
    if changed:
        await repository.add(db, agent)
        await _announce(db, agent, "updated", numbers=numbers)
        log.info("agent.updated", agent_id=str(agent.id), fields=changed)
    return agent_read(agent, numbers)


async def set_active(db: AsyncSession, *, actor: uuid.UUID, agent_id: uuid.UUID, active: bool) -> AgentRead:
    return await update_agent(db, actor=actor, agent_id=agent_id, update=AgentUpdate(active=active))


async def delete_agent(db: AsyncSession, *, actor: uuid.UUID, agent_id: uuid.UUID) -> None:
    agent = await _agent_for(db, actor=actor, agent_id=agent_id, manage=True)
    numbers = await _numbers(db, agent.id)
    await repository.delete_agent(db, agent.id)
    await _announce(db, agent, "deleted", numbers=numbers)
    log.info("agent.deleted", agent_id=str(agent.id))


# Phone numbers


async def assign_number(
    db: AsyncSession, *, actor: uuid.UUID | None, agent_id: uuid.UUID, number: str
) -> PhoneNumberRead:
    """Bind `number` to the agent. A number bound elsewhere is a Conflict that says so."""
    require_e164(number)
    if actor is None:
        agent = await repository.get_agent(db, agent_id)
        if agent is None:
            raise NotFound("agent not found")
    else:
        agent = await _agent_for(db, actor=actor, agent_id=agent_id, manage=True)
    existing = await repository.get_number(db, number)
    if existing is not None:
        if existing.agent_id == agent.id:
            raise Conflict(f"number: {number} is already assigned to this agent")
        if existing.org_id == agent.org_id:
            raise Conflict(f"number: {number} is already assigned to agent {existing.agent_id}")
        raise Conflict(f"number: {number} is already taken")
    row = PhoneNumber(number=number, agent_id=agent.id, org_id=agent.org_id)
    try:
        await repository.add(db, row)
    except IntegrityError as error:
        raise Conflict(f"number: {number} is already taken") from error
    await _announce(db, agent, "updated", numbers=[number, *await _numbers(db, agent.id)])
    log.info("number.assigned", agent_id=str(agent.id), number=number)
    return PhoneNumberRead(
        number=row.number, agent_id=row.agent_id, org_id=row.org_id, created_at=row.created_at
    )


async def release_number(db: AsyncSession, *, actor: uuid.UUID, agent_id: uuid.UUID, number: str) -> None:
    agent = await _agent_for(db, actor=actor, agent_id=agent_id, manage=True)
    existing = await repository.get_number(db, number)
    if existing is None or existing.agent_id != agent.id:
        raise NotFound(f"number: {number} is not assigned to this agent")
    numbers = await _numbers(db, agent.id)
    await repository.delete_number(db, number)
    await _announce(db, agent, "updated", numbers=numbers)
    log.info("number.released", agent_id=str(agent.id), number=number)


async def list_numbers(db: AsyncSession, *, actor: uuid.UUID, org_id: uuid.UUID) -> list[PhoneNumberRead]:
    await require_role(db, actor=actor, org_id=org_id, manage=False)
    return [
        PhoneNumberRead(
            number=row.number, agent_id=row.agent_id, org_id=row.org_id, created_at=row.created_at
        )
        for row in await repository.numbers_of_org(db, org_id)
    ]


# Look-ups (RPC)


async def lookup_agent(db: AsyncSession, agent_id: uuid.UUID) -> AgentConfig | None:
    agent = await repository.get_agent(db, agent_id)
    if agent is None:
        return None
    return agent_config(agent, await _numbers(db, agent.id))


async def lookup_number(db: AsyncSession, number: str) -> AgentConfig | None:
    row = await repository.get_number(db, number)
    if row is None:
        return None
    return await lookup_agent(db, row.agent_id)


# The call log


def session_read(row: CallSession) -> SessionRead:
    """The call-log row as the organisation's users see it. The detail of an `error` end is an
    exception's text from the worker, which can name internal hosts: it stays in the database and
    the worker's log, for operators; the other reasons' details are the worker's own sentences."""
    read = SessionRead.model_validate(row, from_attributes=True)
    if read.end_reason == "error":
        read.end_detail = None
    return read


async def list_sessions(
    db: AsyncSession, *, actor: uuid.UUID, agent_id: uuid.UUID, limit: int, offset: int
) -> Page[SessionRead]:
    agent = await _agent_for(db, actor=actor, agent_id=agent_id, manage=False)
    rows, total = await repository.sessions_of_agent(db, agent.id, limit=limit, offset=offset)
    items = [session_read(row) for row in rows if row.org_id in (None, agent.org_id)]
    return Page[SessionRead](items=items, total=total, limit=limit, offset=offset)


async def get_session(db: AsyncSession, *, actor: uuid.UUID, session_id: uuid.UUID) -> SessionRead:
    row = await repository.get_session(db, session_id)
    if row is None or row.org_id is None:
        raise NotFound("session not found")
    try:
        await require_role(db, actor=actor, org_id=row.org_id, manage=False)
    except NotFound as error:
        raise NotFound("session not found") from error
    return session_read(row)


def _kind_of_room(room_name: str | None) -> str | None:
    if room_name is None:
        return None
    try:
        return "phone" if isinstance(parse_room_name(room_name), PhoneRoom) else "test"
    except InvalidRoomName:
        return None


SessionRecord = dict[str, Any]
"""One call-log row as column name -> value (the `sessions` table's columns)."""


def merge_session_event(row: SessionRecord, event: Event) -> None:
    """Fold one session event into the log row, whatever order the events arrive in.

    Each event fills in what it knows without erasing what a later event already said: `ended` is
    final (a late `started` only fills in its start time); `started` overrides `requested` and an
    `expired` guess; `requested` sets the status only on a row nothing else has touched yet. Of two
    ends, the one that says more about the call gives the reason (`END_REASON_WEIGHT`), and the
    other only fills in what it lacks.
    """
    row["org_id"] = row["org_id"] or event.org_id
    row["agent_id"] = row["agent_id"] or event.agent_id
    if isinstance(event, SessionRequested):
        request = event.data
        row["kind"] = request.kind
        row["room_name"] = row["room_name"] or request.room_name
        row["requested_at"] = event.occurred_at
        row["expires_at"] = request.expires_at
        row["requested_by"] = request.requested_by
        if request.call is not None:
            row["call_sid"] = request.call.sid
            row["from_number"] = request.call.from_number
            row["to_number"] = request.call.to_number
        if not row["status"]:
            row["status"] = "requested"
    elif isinstance(event, SessionStarted):
        row["room_name"] = row["room_name"] or event.data.room_name
        row["started_at"] = row["started_at"] or event.occurred_at
        row["worker"] = event.data.worker[:200]
        if row["status"] not in TERMINAL_STATUSES:
            row["status"] = "active"
    elif isinstance(event, SessionEnded):
        _merge_end(row, event)
    row["kind"] = row["kind"] or _kind_of_room(row["room_name"])
    row["updated_at"] = datetime.now(UTC)


def _merge_end(row: SessionRecord, event: SessionEnded) -> None:
    data = event.data
    row["room_name"] = row["room_name"] or data.room_name
    if row["end_reason"] is None or _weight(data.reason) > _weight(row["end_reason"]):
        row["ended_at"] = event.occurred_at
        row["end_reason"] = data.reason
        row["end_detail"] = data.detail
        row["status"] = "failed" if data.reason in FAILED_REASONS else "ended"
    if row["duration_seconds"] is None:
        row["duration_seconds"] = data.duration_seconds
    if data.transcript and not row["transcript"]:
        row["transcript"] = [entry.model_dump(mode="json") for entry in data.transcript]
    if data.turns and not row["turns"]:
        row["turns"] = [turn.model_dump(mode="json") for turn in data.turns]


def _weight(reason: str) -> int:
    return END_REASON_WEIGHT.get(reason, 2)


def new_session_record(session_id: uuid.UUID) -> SessionRecord:
    """An empty log row: every column, none of them filled in yet."""
    now = datetime.now(UTC)
    return {
        **dict.fromkeys(repository.SESSION_COLUMNS),
        "id": session_id,
        "status": "",
        "transcript": [],
        "turns": [],
        "created_at": now,
        "updated_at": now,
    }


async def record_session_events(db: AsyncSession, events: Sequence[Event]) -> None:
    """Fold session.* events, in order, into the call log (creating a row on its first event): one
    read of the rows they name and one write for the new rows and one for the changed ones, however
    many events."""
    rows = await repository.session_records(
        db, {event.session_id for event in events if event.session_id is not None}
    )
    stored = set(rows)
    for event in events:
        if event.session_id is None:
            log.warning("session.event_without_id", event_id=str(event.id), event_type=event.type)
            continue
        row = rows.get(event.session_id)
        if row is None:
            row = rows[event.session_id] = new_session_record(event.session_id)
        merge_session_event(row, event)
    for row in rows.values():
        if row["org_id"] is None and row["agent_id"] is not None:
            agent = await repository.get_agent(db, row["agent_id"])
            row["org_id"] = agent.org_id if agent is not None else None
    await repository.save_session_records(
        db,
        new=[row for session_id, row in rows.items() if session_id not in stored],
        changed=[row for session_id, row in rows.items() if session_id in stored],
    )
    log.info("session.recorded", events=len(events), sessions=len(rows))


async def expire_stale_sessions(db: AsyncSession, *, now: datetime, default_lifetime: timedelta) -> int:
    """Sessions requested but never started within their token's lifetime become expired."""
    expired = await repository.expire_requested_sessions(db, now=now, default_deadline=now - default_lifetime)
    if expired:
        log.info("session.expired", count=expired)
    return expired


# Operator commands

DEMO_EMAIL = "demo@agentline.local"
DEMO_ORG = "Demo organisation"
DEMO_AGENT = "Demo agent"


async def add_member_as_operator(
    db: AsyncSession, *, org_id: uuid.UUID, email: str, role: Role, new_password: str | None
) -> User:
    """What an org admin may not do (`add_member`): add an account another organisation manages. The
    operator has checked whose it is; its password must be reset, as that organisation knows it. A
    `new_password` is always set, and leaves the account managed by no organisation."""
    user = await repository.user_by_email(db, normalise_email(email))
    if user is None:
        raise NotFound(f"no user with email {email!r}")
    if user.managed_by_org_id not in (None, org_id) and new_password is None:
        raise Conflict(
            f"{email!r} is an account another organisation made and knows the password of;"
            " add it with --reset-password"
        )
    if new_password is not None:
        await repository.release_account(db, user.id, await hash_password_off_loop(new_password))
    await add_membership(db, org_id=org_id, user_id=user.id, role=role)
    return user


async def add_membership(db: AsyncSession, *, org_id: uuid.UUID, user_id: uuid.UUID, role: Role) -> None:
    if await repository.get_org(db, org_id) is None:
        raise NotFound("organisation not found")
    if await repository.role_of(db, user_id=user_id, org_id=org_id) is not None:
        raise Conflict("the user is already a member of this organisation")
    await repository.add(db, Membership(org_id=org_id, user_id=user_id, role=role.value))


async def seed_demo(db: AsyncSession, *, password: str) -> dict[str, str]:
    """The demo organisation, user and an active agent; re-running finds them and resets the
    password to `password`, so the printed log-in always works."""
    user = await repository.user_by_email(db, DEMO_EMAIL)
    if user is None:
        user = await create_user(db, email=DEMO_EMAIL, password=password, name="Demo user")
    else:
        await set_password(db, user=user, password=password)
    orgs = [org for org, _ in await repository.orgs_of_user(db, user.id) if org.name == DEMO_ORG]
    org_id = orgs[0].id if orgs else (await create_org(db, owner=user.id, name=DEMO_ORG)).id
    agent = await repository.agent_by_name(db, org_id=org_id, name=DEMO_AGENT)
    if agent is None:
        created = await create_agent(
            db,
            actor=None,
            org_id=org_id,
            spec=AgentCreate(
                name=DEMO_AGENT,
                instructions=(
                    "You are Agentline's demo assistant. Be brief and friendly, and answer in "
                    "one or two sentences."
                ),
                first_message="Hello! I'm the Agentline demo agent. How can I help you today?",
            ),
        )
        agent_id = created.id
    else:
        agent_id = agent.id
        if not agent.active:
            await set_active(db, actor=user.id, agent_id=agent_id, active=True)
    return {
        "email": DEMO_EMAIL,
        "password": password,
        "user_id": str(user.id),
        "org_id": str(org_id),
        "agent_id": str(agent_id),
    }
