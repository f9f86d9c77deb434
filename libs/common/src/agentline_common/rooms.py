"""The room-name convention, in one place.

Test calls: ``test_{agent_id}_{suffix}``, agent_id a lowercase canonical UUID, suffix 12 characters of
``[a-z0-9]`` drawn from `secrets`.

Phone calls: ``call_{number}_{suffix}``, number the dialled (agent's) E.164 number. The suffix is the one
LiveKit SIP appends for a callee dispatch rule with ``room_prefix="call"`` and ``randomize=True``:
``guid.New("")`` of livekit/protocol, 12 characters of the shortuuid base57 alphabet.
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass
from uuid import UUID

MAX_ROOM_NAME_LENGTH = 128
TEST_PREFIX = "test"
PHONE_PREFIX = "call"
TEST_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits
TEST_SUFFIX_LENGTH = 12
LIVEKIT_GUID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
LIVEKIT_GUID_LENGTH = 12

E164_PATTERN = r"\+[1-9][0-9]{7,14}"
_UUID_PATTERN = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_TEST_ROOM = re.compile(rf"{TEST_PREFIX}_(?P<agent_id>{_UUID_PATTERN})_(?P<suffix>[a-z0-9]{{12}})")
_PHONE_ROOM = re.compile(
    rf"{PHONE_PREFIX}_(?P<number>{E164_PATTERN})_(?P<suffix>[{LIVEKIT_GUID_ALPHABET}]{{12}})"
)
_E164 = re.compile(E164_PATTERN)


class InvalidRoomName(ValueError):
    """The name follows neither room convention. The message says which rule it broke."""


class InvalidPhoneNumber(ValueError):
    """The number is not E.164 (a plus, then 8 to 15 digits, the first 1-9)."""


@dataclass(frozen=True, slots=True)
class TestRoom:
    """A browser test call of one agent."""

    __test__ = False  # not a pytest test class, despite the name

    agent_id: UUID
    suffix: str

    @property
    def name(self) -> str:
        return f"{TEST_PREFIX}_{self.agent_id}_{self.suffix}"


@dataclass(frozen=True, slots=True)
class PhoneRoom:
    """A phone call to the agent that owns `number`."""

    number: str
    suffix: str

    @property
    def name(self) -> str:
        return f"{PHONE_PREFIX}_{self.number}_{self.suffix}"


Room = TestRoom | PhoneRoom


def is_e164(number: str) -> bool:
    """True when `number` is exactly an E.164 number."""
    return _E164.fullmatch(number) is not None


def require_e164(number: str) -> str:
    """Return `number` unchanged, or raise InvalidPhoneNumber with a message a person can act on."""
    if not is_e164(number):
        raise InvalidPhoneNumber(
            f"{number[:32]!r} is not an E.164 number: expected '+' then 8 to 15 digits, first 1-9"
        )
    return number


def new_test_room(agent_id: UUID) -> TestRoom:
    """A fresh, unguessable test room for `agent_id`."""
    suffix = "".join(secrets.choice(TEST_SUFFIX_ALPHABET) for _ in range(TEST_SUFFIX_LENGTH))
    return TestRoom(agent_id=agent_id, suffix=suffix)


def parse_room_name(name: str) -> Room:
    """Parse a room name into a TestRoom or PhoneRoom; anything else raises InvalidRoomName."""
    if not isinstance(name, str) or len(name) > MAX_ROOM_NAME_LENGTH:
        raise InvalidRoomName(f"room name longer than {MAX_ROOM_NAME_LENGTH} characters")
    if match := _TEST_ROOM.fullmatch(name):
        return TestRoom(agent_id=UUID(match["agent_id"]), suffix=match["suffix"])
    if match := _PHONE_ROOM.fullmatch(name):
        return PhoneRoom(number=match["number"], suffix=match["suffix"])
    raise InvalidRoomName(
        f"{name[:64]!r} is neither test_{{agent uuid}}_{{12 [a-z0-9]}} "
        "nor call_{E.164 number}_{12-character LiveKit suffix}"
    )
