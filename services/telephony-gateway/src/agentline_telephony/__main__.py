"""`agentline-telephony`: serve the webhooks (default), or `provision-sip` LiveKit's SIP trunk and rule."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict

from agentline_common.http import serve
from agentline_common.logging import configure_logging
from agentline_common.rooms import InvalidPhoneNumber
from livekit.api import LiveKitAPI, TwirpError

from agentline_telephony.app import create_app
from agentline_telephony.provisioning import OpenTrunkRefused, plan_from_settings, provision_sip
from agentline_telephony.settings import TelephonySettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentline-telephony", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve Twilio's webhooks (the default)")
    provision = commands.add_parser(
        "provision-sip",
        help="create or update LiveKit's SIP inbound trunk and dispatch rule (idempotent)",
    )
    provision.add_argument(
        "--number",
        action="append",
        default=[],
        help="an E.164 number the trunk accepts (repeatable; default SIP_TRUNK_NUMBERS)",
    )
    provision.add_argument(
        "--allowed-address",
        action="append",
        default=[],
        help="an address or CIDR allowed to send calls (repeatable; default SIP_ALLOWED_ADDRESSES)",
    )
    provision.add_argument(
        "--allow-open-trunk",
        action="store_true",
        help="allow a trunk with neither credentials nor allowed addresses, which accepts calls from "
        "anyone (a local machine only; default SIP_ALLOW_OPEN_TRUNK)",
    )
    return parser


async def _provision(settings: TelephonySettings, args: argparse.Namespace) -> int:
    key, secret = settings.livekit_api_key, settings.livekit_api_secret
    if not settings.livekit_configured or key is None or secret is None:
        missing = "set LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET"
        print(f"LiveKit is not configured: {missing}", file=sys.stderr)
        return 2
    try:
        plan = plan_from_settings(
            settings,
            numbers=args.number,
            allowed_addresses=args.allowed_address,
            allow_open=args.allow_open_trunk,
        )
    except InvalidPhoneNumber as error:
        print(f"--number: {error}", file=sys.stderr)
        return 2
    try:
        async with LiveKitAPI(settings.livekit_url, key.get_secret_value(), secret.get_secret_value()) as api:
            result = await provision_sip(api, plan)
    except OpenTrunkRefused as error:
        print(error, file=sys.stderr)
        return 2
    except (OSError, TwirpError) as error:  # unreachable or timed out (OSError), or refused by LiveKit
        print(f"LiveKit at {settings.livekit_url} did not provision the SIP trunk: {error}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(result)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = TelephonySettings()
    if args.command == "provision-sip":
        configure_logging(service=settings.service_name, json=settings.json_logs, level=settings.log_level)
        return asyncio.run(_provision(settings, args))
    serve(create_app(settings), host=settings.host, port=settings.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
