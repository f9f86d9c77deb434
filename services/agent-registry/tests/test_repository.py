"""The data layer on both databases the registry supports: SQLite and PostgreSQL (real servers)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from agentline_common.auth import Role
from agentline_common.events import (
    SessionEnded,
    SessionEndedData,
    SessionRequested,
    SessionRequestedData,
    SessionStarted,
    SessionStartedData,
)
from agentline_common.rooms import new_test_room
from agentline_registry import repository, service
from agentline_registry.database import migrate
from agentline_registry.schemas import AgentCreate, AgentRead, AgentUpdate
from agentline_registry.tables import OUTBOX, PhoneNumber, User
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from .conftest import Database

pytestmark = pytest.mark.integration


def _email() -> str:
    return f"user-{secrets.token_hex(6)}@example.test"


def _number() -> str:
    return f"+1555{secrets.randbelow(10**7):07d}"


async def _owner_and_org(db: Database) -> tuple[User, uuid.UUID]:
    async with db.sessions() as session:
        user = await service.create_user(session, email=_email(), password="a-long-password")
        org = await service.create_org(session, owner=user.id, name="Org")
        await session.commit()
    return user, org.id


async def _org_with_agent(db: Database) -> tuple[User, uuid.UUID, AgentRead]:
    user, org_id = await _owner_and_org(db)
    async with db.sessions() as session:
        agent = await service.create_agent(session, actor=user.id, org_id=org_id, spec=AgentCreate(name="a"))
        await session.commit()
    return user, org_id, agent


async def _outbox_count(db: Database) -> int:
    async with db.engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(OUTBOX))).scalar_one())


async def test_migrating_twice_is_harmless(database: Database) -> None:
    await asyncio.to_thread(migrate, database.url)
    async with database.sessions() as session:
        await repository.ping(session)


async def test_agent_round_trip_with_tools_numbers_and_aware_times(database: Database) -> None:
    user, org_id = await _owner_and_org(database)
    number = _number()
    tool = {
        "name": "weather",
        "description": "The weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "url": "https://example.test/weather",
    }
    async with database.sessions() as session:
        created = await service.create_agent(
            session,
            actor=user.id,
            org_id=org_id,
            spec=AgentCreate.model_validate({"name": "Ana", "temperature": 0.1, "tools": [tool]}),
        )
        await service.assign_number(session, actor=user.id, agent_id=created.id, number=number)
        await session.commit()

    async with database.sessions() as session:
        read = await service.get_agent(session, actor=user.id, agent_id=created.id)
        config = await service.lookup_number(session, number)
    assert read.tools[0].name == "weather"
    assert read.phone_numbers == [number]
    assert read.created_at.tzinfo is not None
    assert abs(read.created_at - datetime.now(UTC)) < timedelta(minutes=1)
    assert config is not None and config.id == created.id and config.temperature == 0.1


async def test_email_is_unique_case_insensitively(database: Database) -> None:
    email = _email()
    async with database.sessions() as session:
        await service.create_user(session, email=email, password="a-long-password")
        await session.commit()
    async with database.sessions() as session:
        with pytest.raises(service.Conflict, match="email"):
            await service.create_user(session, email=email.upper(), password="a-long-password")


async def test_a_number_belongs_to_one_agent_and_the_database_enforces_it(database: Database) -> None:
    user, org_id = await _owner_and_org(database)
    number = _number()
    async with database.sessions() as session:
        first = await service.create_agent(
            session, actor=user.id, org_id=org_id, spec=AgentCreate(name="one")
        )
        second = await service.create_agent(
            session, actor=user.id, org_id=org_id, spec=AgentCreate(name="two")
        )
        await service.assign_number(session, actor=user.id, agent_id=first.id, number=number)
        await session.commit()
    async with database.sessions() as session:
        with pytest.raises(service.Conflict, match=str(first.id)):
            await service.assign_number(session, actor=user.id, agent_id=second.id, number=number)
    async with database.sessions() as session:
        with pytest.raises(IntegrityError):
            await repository.add(session, PhoneNumber(number=number, agent_id=second.id, org_id=org_id))


async def test_a_rolled_back_change_leaves_neither_data_nor_event(database: Database) -> None:
    user, org_id = await _owner_and_org(database)
    events_before = await _outbox_count(database)
    async with database.sessions() as session:
        agent = await service.create_agent(
            session, actor=user.id, org_id=org_id, spec=AgentCreate(name="ghost")
        )
        await session.rollback()
    async with database.sessions() as session:
        assert await repository.get_agent(session, agent.id) is None
    assert await _outbox_count(database) == events_before


async def test_every_agent_change_writes_one_event_in_its_transaction(database: Database) -> None:
    user, org_id = await _owner_and_org(database)
    before = await _outbox_count(database)
    async with database.sessions() as session:
        agent = await service.create_agent(session, actor=user.id, org_id=org_id, spec=AgentCreate(name="a"))
        await service.update_agent(session, actor=user.id, agent_id=agent.id, update=AgentUpdate(name="b"))
        await service.update_agent(session, actor=user.id, agent_id=agent.id, update=AgentUpdate(name="b"))
        await service.assign_number(session, actor=user.id, agent_id=agent.id, number=_number())
        await service.set_active(session, actor=user.id, agent_id=agent.id, active=False)
        await service.delete_agent(session, actor=user.id, agent_id=agent.id)
        await session.commit()
    # created, updated (name), number, deactivated, deleted; the no-op update announces nothing
    assert await _outbox_count(database) - before == 5


async def test_deleting_an_agent_releases_numbers_and_keeps_the_call_log(database: Database) -> None:
    user, org_id = await _owner_and_org(database)
    number = _number()
    session_id = uuid.uuid4()
    async with database.sessions() as session:
        agent = await service.create_agent(session, actor=user.id, org_id=org_id, spec=AgentCreate(name="a"))
        await service.assign_number(session, actor=user.id, agent_id=agent.id, number=number)
        await service.record_session_events(
            session,
            [
                SessionEnded(
                    session_id=session_id,
                    agent_id=agent.id,
                    org_id=org_id,
                    data=SessionEndedData(reason="completed"),
                )
            ],
        )
        await session.commit()
    async with database.sessions() as session:
        await service.delete_agent(session, actor=user.id, agent_id=agent.id)
        await session.commit()
    async with database.sessions() as session:
        assert await repository.get_number(session, number) is None
        assert (await service.get_session(session, actor=user.id, session_id=session_id)).status == "ended"


async def test_agents_page_in_creation_order(database: Database) -> None:
    user, org_id = await _owner_and_org(database)
    async with database.sessions() as session:
        for index in range(5):
            await service.create_agent(
                session, actor=user.id, org_id=org_id, spec=AgentCreate(name=f"agent {index}")
            )
        await session.commit()
    async with database.sessions() as session:
        page = await service.list_agents(session, actor=user.id, org_id=org_id, limit=2, offset=2)
    assert page.total == 5
    assert [agent.name for agent in page.items] == ["agent 2", "agent 3"]


async def test_session_log_out_of_order_and_expiry_sweep(database: Database) -> None:
    user, org_id, agent = await _org_with_agent(database)
    room = new_test_room(agent.id).name
    now = datetime.now(UTC)
    finished, stale, fresh = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ended = SessionEnded(
        session_id=finished,
        agent_id=agent.id,
        data=SessionEndedData(reason="completed", room_name=room),
    )
    started = SessionStarted(
        session_id=finished,
        agent_id=agent.id,
        data=SessionStartedData(room_name=room, worker="w", job="j"),
    )

    def requested(session_id: uuid.UUID, expires_at: datetime) -> SessionRequested:
        return SessionRequested(
            session_id=session_id,
            agent_id=agent.id,
            org_id=org_id,
            occurred_at=expires_at - timedelta(minutes=10),
            data=SessionRequestedData(kind="test", room_name=room, expires_at=expires_at),
        )

    async with database.sessions() as session:
        for event in (
            ended,
            started,
            requested(finished, now + timedelta(minutes=5)),
            requested(stale, now - timedelta(seconds=1)),
            requested(fresh, now + timedelta(minutes=5)),
        ):
            await service.record_session_events(session, [event])
            await session.commit()
        expired = await service.expire_stale_sessions(
            session, now=now, default_lifetime=timedelta(minutes=10)
        )
        await session.commit()
    assert expired == 1
    async with database.sessions() as session:
        statuses = {
            session_id: (await service.get_session(session, actor=user.id, session_id=session_id))
            for session_id in (finished, stale, fresh)
        }
        page = await service.list_sessions(session, actor=user.id, agent_id=agent.id, limit=10, offset=0)
    assert statuses[finished].status == "ended"
    assert statuses[finished].org_id == org_id  # filled in from the agent: `ended` had no org
    assert statuses[stale].status == "expired"
    assert statuses[stale].end_reason == "expired"
    assert statuses[fresh].status == "requested"
    assert page.total == 3


async def test_roles_decide_who_manages(database: Database) -> None:
    owner, org_id = await _owner_and_org(database)
    async with database.sessions() as session:
        member = await service.create_user(session, email=_email(), password="a-long-password")
        await service.add_membership(session, org_id=org_id, user_id=member.id, role=Role.MEMBER)
        outsider = await service.create_user(session, email=_email(), password="a-long-password")
        await session.commit()
    async with database.sessions() as session:
        assert (await service.get_org(session, actor=member.id, org_id=org_id)).role == Role.MEMBER
        with pytest.raises(service.Forbidden):
            await service.create_agent(session, actor=member.id, org_id=org_id, spec=AgentCreate(name="x"))
        with pytest.raises(service.NotFound):
            await service.get_org(session, actor=outsider.id, org_id=org_id)
        with pytest.raises(service.Conflict, match="last owner"):
            await service.remove_member(session, actor=owner.id, org_id=org_id, user_id=owner.id)


async def test_one_batch_folds_events_of_new_and_known_sessions_in_any_order(database: Database) -> None:
    _, org_id, agent = await _org_with_agent(database)
    room = new_test_room(agent.id).name
    now = datetime.now(UTC)
    known, new = uuid.uuid4(), uuid.uuid4()

    def requested(session_id: uuid.UUID) -> SessionRequested:
        return SessionRequested(
            session_id=session_id,
            agent_id=agent.id,
            org_id=org_id,
            occurred_at=now,
            data=SessionRequestedData(kind="test", room_name=room, expires_at=now + timedelta(minutes=10)),
        )

    def started(session_id: uuid.UUID) -> SessionStarted:
        return SessionStarted(
            session_id=session_id,
            agent_id=agent.id,
            data=SessionStartedData(room_name=room, worker="w", job="j"),
        )

    ended = SessionEnded(session_id=new, agent_id=agent.id, data=SessionEndedData(reason="completed"))
    async with database.sessions() as session:
        await service.record_session_events(session, [requested(known)])
        await session.commit()
    async with database.sessions() as session:
        await service.record_session_events(session, [ended, started(known), started(new), requested(new)])
        await session.commit()
    async with database.sessions() as session:
        rows = await repository.session_records(session, {known, new})
    fields = ("status", "requested_at", "org_id")
    assert tuple(rows[known][field] for field in fields) == ("active", now, org_id)
    assert tuple(rows[new][field] for field in fields) == ("ended", now, org_id)
    assert rows[new]["started_at"] is not None and rows[new]["end_reason"] == "completed"
