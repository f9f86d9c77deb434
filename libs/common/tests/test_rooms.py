import uuid

import pytest
from agentline_common.rooms import (
    LIVEKIT_GUID_ALPHABET,
    MAX_ROOM_NAME_LENGTH,
    InvalidPhoneNumber,
    InvalidRoomName,
    PhoneRoom,
    TestRoom,
    is_e164,
    new_test_room,
    parse_room_name,
    require_e164,
)
from hypothesis import given
from hypothesis import strategies as st

pytestmark = pytest.mark.unit

e164_numbers = st.from_regex(r"\+[1-9][0-9]{7,14}", fullmatch=True)
livekit_suffixes = st.text(alphabet=LIVEKIT_GUID_ALPHABET, min_size=12, max_size=12)
test_suffixes = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=12, max_size=12)


@given(agent_id=st.uuids(), suffix=test_suffixes)
def test_test_room_round_trips(agent_id: uuid.UUID, suffix: str) -> None:
    room = TestRoom(agent_id=agent_id, suffix=suffix)
    assert parse_room_name(room.name) == room


@given(number=e164_numbers, suffix=livekit_suffixes)
def test_phone_room_round_trips(number: str, suffix: str) -> None:
    room = PhoneRoom(number=number, suffix=suffix)
    assert parse_room_name(room.name) == room


def test_new_test_room_is_parseable_and_unique() -> None:
    agent_id = uuid.uuid4()
    rooms = {new_test_room(agent_id).name for _ in range(200)}
    assert len(rooms) == 200
    for name in rooms:
        parsed = parse_room_name(name)
        assert isinstance(parsed, TestRoom)
        assert parsed.agent_id == agent_id


def test_phone_room_from_livekit_callee_rule() -> None:
    # Room name as LiveKit SIP's callee dispatch rule builds it: prefix "_" to "_" guid.New("").
    parsed = parse_room_name("call_+15551234567_aB3dEfGhJkLm")
    assert parsed == PhoneRoom(number="+15551234567", suffix="aB3dEfGhJkLm")


SAMPLE_AGENT = uuid.UUID("9f0c2a4e-7b1d-4c3e-a5f6-0123456789ab")
VALID_TEST = f"test_{SAMPLE_AGENT}_abcdefghijkl"
VALID_PHONE = "call_+15551234567_aB3dEfGhJkLm"


@pytest.mark.parametrize(
    "name",
    [
        "",
        VALID_TEST + "\n",
        " " + VALID_TEST,
        VALID_TEST + "x",
        VALID_TEST[:-1],
        VALID_TEST.replace("test_", "Test_"),
        VALID_TEST.replace("abcdefghijkl", "ABCDEFGHIJKL"),
        f"test_{str(SAMPLE_AGENT).upper()}_abcdefghijkl",
        f"test_{SAMPLE_AGENT.hex}_abcdefghijkl",
        f"test_{SAMPLE_AGENT}_abcdefghijk!",
        f"test_{SAMPLE_AGENT}abcdefghijkl",
        VALID_PHONE + "\n",
        VALID_PHONE.replace("+1555", "1555"),
        VALID_PHONE.replace("+1555", "+0555"),
        "call_+1234567_aB3dEfGhJkLm",
        "call_+1234567890123456_aB3dEfGhJkLm",
        "call_+15551234567_aB3dEfGhJkL0",
        "call_+15551234567_aB3dEfGhJkLl",
        "call_+15551234567_aB3dEfGhJkL",
        "call_+15551234567",
        "call__+15551234567_aB3dEfGhJkLm",
        "x" * (MAX_ROOM_NAME_LENGTH + 1),
    ],
)
def test_near_misses_are_rejected(name: str) -> None:
    with pytest.raises(InvalidRoomName):
        parse_room_name(name)


@given(name=st.text(max_size=200))
def test_arbitrary_text_parses_or_raises_invalid_room_name(name: str) -> None:
    try:
        room = parse_room_name(name)
    except InvalidRoomName:
        return
    assert room.name == name


@given(number=e164_numbers, suffix=livekit_suffixes, position=st.integers(min_value=0))
def test_one_character_removed_from_a_phone_room_never_parses(
    number: str, suffix: str, position: int
) -> None:
    name = PhoneRoom(number=number, suffix=suffix).name
    index = position % len(name)
    mutated = name[:index] + name[index + 1 :]
    try:
        parsed = parse_room_name(mutated)
    except InvalidRoomName:
        return
    # Only dropping a digit of a number longer than the minimum may leave a valid (other) number:
    # never a character of the prefix, the separators or the suffix.
    digits = range(len("call_+"), len("call_") + len(number))
    assert index in digits and len(number) > len("+") + 8
    assert parsed == PhoneRoom(number=number[: index - 5] + number[index - 4 :], suffix=suffix)


def test_e164_validation() -> None:
    assert is_e164("+4930123456")
    assert not is_e164("+49 30 123456")
    assert require_e164("+15551234567") == "+15551234567"
    with pytest.raises(InvalidPhoneNumber, match=r"E\.164"):
        require_e164("5551234567")
