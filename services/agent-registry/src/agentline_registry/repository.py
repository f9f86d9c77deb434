"""All of the registry's SQL. Functions take the caller's session and flush; they never commit."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, cast

from agentline_common.events import Event
from agentline_common.outbox import add_to_outbox
from sqlalchemy import CursorResult, delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import SQLModel, col

from agentline_registry.tables import (
    OUTBOX,
    Agent,
    CallSession,
    Membership,
    Org,
    PhoneNumber,
    User,
)


async def ping(db: AsyncSession) -> None:
    await db.execute(text("SELECT 1"))


async def add(db: AsyncSession, row: Org | User | Membership | Agent | PhoneNumber | CallSession) -> None:
    db.add(row)
    await db.flush()


SESSIONS = SQLModel.metadata.tables["sessions"]
SESSION_COLUMNS = tuple(column.key for column in SESSIONS.columns)


async def session_records(
    db: AsyncSession, session_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, dict[str, Any]]:
    """The call-log rows of `session_ids` as plain column -> value records.

    The session log reads and writes its batches as records with Core statements, not as ORM objects:
    building a row object and flushing it through the unit of work cost about 0.3 ms per event more.
    """
    if not session_ids:
        return {}
    rows = await db.execute(select(SESSIONS).where(SESSIONS.c.id.in_(session_ids)))
    return {row.id: dict(row._mapping) for row in rows}


async def save_session_records(
    db: AsyncSession, *, new: Sequence[dict[str, Any]], changed: Sequence[dict[str, Any]]
) -> None:
    """Insert the `new` records and update the `changed` ones by id, one statement for each kind."""
    if new:
        await db.execute(insert(CallSession), list(new))
    if changed:
        await db.execute(update(CallSession), list(changed))


async def enqueue_event(db: AsyncSession, event: Event) -> None:
    await add_to_outbox(db, OUTBOX, event)


# Organisations and people


async def get_org(db: AsyncSession, org_id: uuid.UUID) -> Org | None:
    return await db.get(Org, org_id)


async def orgs_of_user(db: AsyncSession, user_id: uuid.UUID) -> list[tuple[Org, str]]:
    rows = await db.execute(
        select(Org, col(Membership.role))
        .join(Membership, col(Membership.org_id) == col(Org.id))
        .where(col(Membership.user_id) == user_id)
        .order_by(col(Org.created_at), col(Org.id))
    )
    return [(org, role) for org, role in rows.all()]


async def get_user(db: AsyncSession, user_id: uuid.UUID) -> User | None:
    return await db.get(User, user_id)


async def user_by_email(db: AsyncSession, email: str) -> User | None:
    rows = await db.execute(select(User).where(col(User.email) == email))
    return rows.scalar_one_or_none()


async def set_password_hash(db: AsyncSession, user_id: uuid.UUID, password_hash: str) -> None:
    await db.execute(update(User).where(col(User.id) == user_id).values(password_hash=password_hash))


async def release_account(db: AsyncSession, user_id: uuid.UUID, password_hash: str) -> None:
    """A new password no organisation knows, and so no organisation manages the account any more."""
    released = {"password_hash": password_hash, "managed_by_org_id": None}
    await db.execute(update(User).where(col(User.id) == user_id).values(**released))


async def role_of(db: AsyncSession, *, user_id: uuid.UUID, org_id: uuid.UUID) -> str | None:
    rows = await db.execute(
        select(col(Membership.role)).where(
            col(Membership.user_id) == user_id, col(Membership.org_id) == org_id
        )
    )
    return rows.scalar_one_or_none()


async def get_membership(db: AsyncSession, *, user_id: uuid.UUID, org_id: uuid.UUID) -> Membership | None:
    return await db.get(Membership, (org_id, user_id))


async def members_of_org(db: AsyncSession, org_id: uuid.UUID) -> list[tuple[User, str]]:
    rows = await db.execute(
        select(User, col(Membership.role))
        .join(Membership, col(Membership.user_id) == col(User.id))
        .where(col(Membership.org_id) == org_id)
        .order_by(col(Membership.created_at), col(User.email))
    )
    return [(user, role) for user, role in rows.all()]


async def count_owners(db: AsyncSession, org_id: uuid.UUID) -> int:
    rows = await db.execute(
        select(func.count()).where(col(Membership.org_id) == org_id, col(Membership.role) == "owner")
    )
    return int(rows.scalar_one())


async def delete_membership(db: AsyncSession, *, user_id: uuid.UUID, org_id: uuid.UUID) -> None:
    await db.execute(
        delete(Membership).where(col(Membership.user_id) == user_id, col(Membership.org_id) == org_id)
    )


# Agents and numbers


async def get_agent(db: AsyncSession, agent_id: uuid.UUID) -> Agent | None:
    return await db.get(Agent, agent_id)


async def agents_of_org(
    db: AsyncSession, org_id: uuid.UUID, *, limit: int, offset: int
) -> tuple[list[Agent], int]:
    total = await db.execute(select(func.count()).select_from(Agent).where(col(Agent.org_id) == org_id))
    rows = await db.execute(
        select(Agent)
        .where(col(Agent.org_id) == org_id)
        .order_by(col(Agent.created_at), col(Agent.id))
        .limit(limit)
        .offset(offset)
    )
    return list(rows.scalars().all()), int(total.scalar_one())


async def agent_by_name(db: AsyncSession, *, org_id: uuid.UUID, name: str) -> Agent | None:
    rows = await db.execute(
        select(Agent)
        .where(col(Agent.org_id) == org_id, col(Agent.name) == name)
        .order_by(col(Agent.created_at))
    )
    return rows.scalars().first()


async def delete_agent(db: AsyncSession, agent_id: uuid.UUID) -> None:
    await db.execute(delete(PhoneNumber).where(col(PhoneNumber.agent_id) == agent_id))
    await db.execute(delete(Agent).where(col(Agent.id) == agent_id))


async def numbers_of_agents(db: AsyncSession, agent_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
    numbers: dict[uuid.UUID, list[str]] = {agent_id: [] for agent_id in agent_ids}
    if not agent_ids:
        return numbers
    rows = await db.execute(
        select(col(PhoneNumber.agent_id), col(PhoneNumber.number))
        .where(col(PhoneNumber.agent_id).in_(agent_ids))
        .order_by(col(PhoneNumber.number))
    )
    for agent_id, number in rows.all():
        numbers[agent_id].append(number)
    return numbers


async def get_number(db: AsyncSession, number: str) -> PhoneNumber | None:
    return await db.get(PhoneNumber, number)


async def numbers_of_org(db: AsyncSession, org_id: uuid.UUID) -> list[PhoneNumber]:
    rows = await db.execute(
        select(PhoneNumber).where(col(PhoneNumber.org_id) == org_id).order_by(col(PhoneNumber.number))
    )
    return list(rows.scalars().all())


async def delete_number(db: AsyncSession, number: str) -> None:
    await db.execute(delete(PhoneNumber).where(col(PhoneNumber.number) == number))


# The call log


async def get_session(db: AsyncSession, session_id: uuid.UUID) -> CallSession | None:
    return await db.get(CallSession, session_id)


async def sessions_of_agent(
    db: AsyncSession, agent_id: uuid.UUID, *, limit: int, offset: int
) -> tuple[list[CallSession], int]:
    total = await db.execute(
        select(func.count()).select_from(CallSession).where(col(CallSession.agent_id) == agent_id)
    )
    rows = await db.execute(
        select(CallSession)
        .where(col(CallSession.agent_id) == agent_id)
        .order_by(col(CallSession.created_at).desc(), col(CallSession.id))
        .limit(limit)
        .offset(offset)
    )
    return list(rows.scalars().all()), int(total.scalar_one())


async def expire_requested_sessions(db: AsyncSession, *, now: datetime, default_deadline: datetime) -> int:
    """Mark as expired every session still `requested` past its deadline (its own expiry, or the
    default for rows whose event named none)."""
    result = await db.execute(
        update(CallSession)
        .where(
            col(CallSession.status) == "requested",
            (
                (col(CallSession.expires_at).is_not(None) & (col(CallSession.expires_at) < now))
                | (col(CallSession.expires_at).is_(None) & (col(CallSession.created_at) < default_deadline))
            ),
        )
        .values(status="expired", end_reason="expired", ended_at=now, updated_at=now)
    )
    return int(cast(CursorResult[Any], result).rowcount or 0)


async def count_sessions_with_status(db: AsyncSession, status: str) -> int:
    rows = await db.execute(
        select(func.count()).select_from(CallSession).where(col(CallSession.status) == status)
    )
    return int(rows.scalar_one())
