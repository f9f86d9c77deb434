"""The `agentline-registry` command line: serve, migrate, and the operator's set-up commands.

Set-up commands write to the database directly (their `agent.changed` events go to the outbox, which
the running server publishes) and print their result as JSON on the last line, for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from agentline_common.auth import Role
from agentline_common.logging import configure_logging
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from agentline_registry import service
from agentline_registry.credentials import new_password
from agentline_registry.database import create_engine, migrate, session_factory
from agentline_registry.schemas import AgentCreate, OrgCreate, PhoneNumberCreate
from agentline_registry.settings import RegistrySettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentline-registry", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP API, look-up responder and consumers")
    serve.add_argument("--host", help="listen address (default: HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: PORT or 8101)")

    commands.add_parser("migrate", help="bring the database schema up to date")

    org = commands.add_parser("create-org", help="create an organisation")
    org.add_argument("--name", required=True)
    org.add_argument("--owner", type=uuid.UUID, help="user id of its first owner")

    user = commands.add_parser("create-user", help="create a user (optionally a member of an org)")
    user.add_argument("--email", required=True)
    user.add_argument("--password", help="default: a random one, printed once")
    user.add_argument("--name", default="")
    user.add_argument("--org", type=uuid.UUID, help="make the user a member of this org")
    user.add_argument("--role", choices=[role.value for role in Role], default=Role.OWNER.value)

    member = commands.add_parser(
        "add-member", help="add an existing account to an org, even one another org manages"
    )
    member.add_argument("--org", type=uuid.UUID, required=True)
    member.add_argument("--email", required=True)
    member.add_argument("--role", choices=[role.value for role in Role], default=Role.MEMBER.value)
    member.add_argument(
        "--reset-password",
        action="store_true",
        help="give the account a new random password (printed once); needed when another org manages it",
    )

    agent = commands.add_parser("create-agent", help="create an agent")
    agent.add_argument("--org", type=uuid.UUID, required=True)
    agent.add_argument("--name", required=True)
    agent.add_argument("--instructions", default="")
    agent.add_argument("--first-message", default="")
    agent.add_argument("--language")
    agent.add_argument("--voice")
    agent.add_argument("--stt-model")
    agent.add_argument("--llm-model")
    agent.add_argument("--tts-model")
    agent.add_argument("--temperature", type=float)
    agent.add_argument("--tools", type=Path, help="a JSON file with a list of webhook tools")
    agent.add_argument("--inactive", action="store_true")

    number = commands.add_parser("assign-number", help="bind an E.164 number to an agent")
    number.add_argument("--agent", type=uuid.UUID, required=True)
    number.add_argument("--number", required=True)

    demo = commands.add_parser("seed-demo", help="create (or find) the demo org, user and agent")
    demo.add_argument("--password", help="default: a new random one (printed)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    settings = RegistrySettings()
    configure_logging(service=settings.service_name, json=settings.json_logs, level=settings.log_level)
    if args.command == "serve":
        _serve(settings, host=args.host, port=args.port)
        return
    if args.command == "migrate":
        migrate(settings.database_url)
        _print({"migrated": True})
        return
    commands: dict[str, Callable[[AsyncSession, argparse.Namespace], Awaitable[dict[str, Any]]]] = {
        "create-org": _create_org,
        "create-user": _create_user,
        "add-member": _add_member,
        "create-agent": _create_agent,
        "assign-number": _assign_number,
        "seed-demo": _seed_demo,
    }
    try:
        result = asyncio.run(_in_transaction(settings, commands[args.command], args))
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc'])}: {issue['msg']}" for issue in error.errors()
        )
        _refuse(f"invalid input: {problems}")
    except (service.NotFound, service.Conflict, service.Forbidden, ValueError) as error:
        _refuse(f"error: {error}")
    _print(result)


def _refuse(message: str) -> NoReturn:
    """Exit with status 2, as argparse does for bad usage: the input, not the system, is at fault."""
    print(message, file=sys.stderr)
    sys.exit(2)


def _serve(settings: RegistrySettings, *, host: str | None, port: int | None) -> None:
    from agentline_common.http import serve

    from agentline_registry.app import create_app

    serve(create_app(settings), host=host or settings.host, port=port or settings.port)


async def _in_transaction(
    settings: RegistrySettings,
    command: Callable[[AsyncSession, argparse.Namespace], Awaitable[dict[str, Any]]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    engine = create_engine(settings.database_url)
    try:
        async with session_factory(engine)() as db:
            result = await command(db, args)
            await db.commit()
            return result
    finally:
        await engine.dispose()


async def _create_org(db: AsyncSession, args: argparse.Namespace) -> dict[str, Any]:
    name = OrgCreate.model_validate({"name": args.name}).name
    if args.owner is None:
        raise ValueError("--owner: give the user id of the organisation's first owner")
    org = await service.create_org(db, owner=args.owner, name=name)
    return {"org_id": str(org.id), "name": org.name}


async def _create_user(db: AsyncSession, args: argparse.Namespace) -> dict[str, Any]:
    password = args.password or new_password()
    if len(password) < 8:
        raise ValueError("--password: at least 8 characters")
    user = await service.create_user(db, email=args.email, password=password, name=args.name)
    result: dict[str, Any] = {"user_id": str(user.id), "email": user.email}
    if args.org is not None:
        await service.add_membership(db, org_id=args.org, user_id=user.id, role=Role(args.role))
        result |= {"org_id": str(args.org), "role": args.role}
    if args.password is None:
        result["password"] = password
    return result


async def _add_member(db: AsyncSession, args: argparse.Namespace) -> dict[str, Any]:
    password = new_password() if args.reset_password else None
    user = await service.add_member_as_operator(
        db, org_id=args.org, email=args.email, role=Role(args.role), new_password=password
    )
    result: dict[str, Any] = {"user_id": str(user.id), "org_id": str(args.org), "role": args.role}
    if password is not None:
        result["password"] = password
    return result


async def _create_agent(db: AsyncSession, args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": args.name,
        "instructions": args.instructions,
        "first_message": args.first_message,
        "active": not args.inactive,
    }
    for option in ("language", "voice", "stt_model", "llm_model", "tts_model", "temperature"):
        if getattr(args, option) is not None:
            fields[option] = getattr(args, option)
    if args.tools is not None:
        fields["tools"] = json.loads(args.tools.read_text())
    agent = await service.create_agent(
        db, actor=None, org_id=args.org, spec=AgentCreate.model_validate(fields)
    )
    return {"agent_id": str(agent.id), "org_id": str(agent.org_id), "name": agent.name}


async def _assign_number(db: AsyncSession, args: argparse.Namespace) -> dict[str, Any]:
    number = PhoneNumberCreate.model_validate({"number": args.number}).number
    row = await service.assign_number(db, actor=None, agent_id=args.agent, number=number)
    return {"number": row.number, "agent_id": str(row.agent_id)}


async def _seed_demo(db: AsyncSession, args: argparse.Namespace) -> dict[str, Any]:
    return await service.seed_demo(db, password=args.password or new_password())


def _print(result: dict[str, Any]) -> None:
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
