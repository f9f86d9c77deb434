"""The TwiML documents, parsed back as XML the way Twilio reads them."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from agentline_telephony import twiml
from agentline_telephony.twiml import SipTarget

pytestmark = pytest.mark.unit


def parse_twiml(document: str) -> ET.Element:
    """Parse TwiML we produced ourselves (trusted input, hence the plain parser)."""
    return ET.fromstring(document)  # noqa: S314


NUMBER = "+15551234567"


def test_dial_sip_bridges_the_dialled_number_to_livekit_sip_with_credentials() -> None:
    target = SipTarget(
        host="sip.example.test:5060",
        username="twilio-trunk",
        password="p" * 32,
        dial_action_url="https://gw.example.test/api/v1/voice/twilio/status",
    )

    root = parse_twiml(twiml.dial_sip(NUMBER, target, "CA0123456789abcdef0123456789abcdef"))

    assert root.tag == "Response"
    (dial,) = list(root)
    assert dial.tag == "Dial"
    assert dial.get("action") == "https://gw.example.test/api/v1/voice/twilio/status"
    assert dial.get("method") == "POST"
    (sip,) = list(dial)
    assert sip.tag == "Sip"
    assert (
        sip.text
        == f"sip:{NUMBER}@sip.example.test:5060?X-Agentline-CallSid=CA0123456789abcdef0123456789abcdef"
    )
    assert sip.get("username") == "twilio-trunk"
    assert sip.get("password") == "p" * 32


def test_dial_sip_without_credentials_sends_none() -> None:
    root = parse_twiml(twiml.dial_sip(NUMBER, SipTarget(host="127.0.0.1"), "CA1"))

    sip = root.find("./Dial/Sip")
    assert sip is not None
    assert sip.attrib == {}
    assert root.find("./Dial").attrib == {}  # type: ignore[union-attr]


def test_each_call_hands_its_own_call_sid_to_the_worker_whatever_it_holds() -> None:
    """The worker names the session after it, as the gateway does: each call its own, even from the
    number's kept document; a value that is not a plain CallSid reaches the INVITE escaped."""
    target = SipTarget(host="sip.example.test;transport=tcp")
    first, second = (
        parse_twiml(twiml.dial_sip(NUMBER, target, sid)).find("./Dial/Sip") for sid in ("CA1", "CA2")
    )
    odd = parse_twiml(twiml.dial_sip(NUMBER, target, "CA3&x=<y>?z")).find("./Dial/Sip")

    assert first is not None and second is not None and odd is not None
    assert first.text == f"sip:{NUMBER}@sip.example.test;transport=tcp?X-Agentline-CallSid=CA1"
    assert second.text == f"sip:{NUMBER}@sip.example.test;transport=tcp?X-Agentline-CallSid=CA2"
    assert (
        odd.text == f"sip:{NUMBER}@sip.example.test;transport=tcp?X-Agentline-CallSid=CA3%26x%3D%3Cy%3E%3Fz"
    )


def test_say_and_hang_up_is_a_polite_sentence_then_a_hang_up() -> None:
    root = parse_twiml(twiml.say_and_hang_up(twiml.UNKNOWN_NUMBER_MESSAGE))

    assert [child.tag for child in root] == ["Say", "Hangup"]
    assert root[0].text == twiml.UNKNOWN_NUMBER_MESSAGE
    assert root[0].get("language") == "en-US"


def test_empty_response_is_valid_twiml() -> None:
    root = parse_twiml(twiml.empty_response())

    assert root.tag == "Response"
    assert list(root) == []
