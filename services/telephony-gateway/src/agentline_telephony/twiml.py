"""The TwiML documents the gateway answers with, built with twilio's VoiceResponse.

Pure functions: no I/O, so every answer Twilio can get is tested without a server. Being pure, they
are memoised: building the XML tree costs more than the rest of a webhook's own logic, and a number's
answer is the same document each time (but for the CallSid it passes on, written into a kept copy).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote

from agentline_common.events import CALL_SID_SIP_HEADER
from twilio.twiml.voice_response import Dial, VoiceResponse

TWIML_MEDIA_TYPE = "text/xml"
SAY_LANGUAGE = "en-US"

UNKNOWN_NUMBER_MESSAGE = "Sorry, this number is not connected to an agent. Goodbye."
AGENT_INACTIVE_MESSAGE = (
    "Sorry, the agent for this number is not available right now. Please try again later. Goodbye."
)
UNAVAILABLE_MESSAGE = (
    "Sorry, we cannot connect your call right now. Please try again in a few minutes. Goodbye."
)
BAD_REQUEST_MESSAGE = "Sorry, this call could not be connected. Goodbye."
DIAL_FAILED_MESSAGE = "Sorry, the agent could not be reached. Please try again later. Goodbye."


TWIML_CACHE_SIZE = 4096
_CALL_SID_SLOT = "CALLSIDSLOT"


@dataclass(frozen=True, slots=True)
class SipTarget:
    """How Twilio reaches LiveKit's SIP bridge."""

    host: str
    """host[:port][;transport=...] of the bridge."""
    username: str = ""
    password: str = ""
    dial_action_url: str = ""
    """Where Twilio reports how the <Dial> ended; an empty string leaves it out."""


def sip_uri(number: str, target: SipTarget, *, call_sid: str) -> str:
    """``sip:{number}@{host}?X-Agentline-CallSid={call_sid}``: the dialled number becomes the SIP user,
    which the callee rule reads; the header carries the caller's CallSid to the worker, which names
    the session after it as the gateway did (Twilio's own header names the <Dial>'s leg instead)."""
    return f"sip:{number}@{target.host}?{CALL_SID_SIP_HEADER}={quote(call_sid, safe='')}"


def dial_sip(number: str, target: SipTarget, call_sid: str) -> str:
    """Bridge the call to LiveKit SIP, authenticating with the trunk's credentials when configured."""
    return _dial_sip_for_number(number, target).replace(_CALL_SID_SLOT, quote(call_sid, safe=""))


@lru_cache(maxsize=TWIML_CACHE_SIZE)
def _dial_sip_for_number(number: str, target: SipTarget) -> str:
    response = VoiceResponse()
    dial = Dial(action=target.dial_action_url or None, method="POST" if target.dial_action_url else None)
    credentials = (
        {"username": target.username, "password": target.password}
        if target.username and target.password
        else {}
    )
    dial.sip(sip_uri(number, target, call_sid=_CALL_SID_SLOT), **credentials)
    response.append(dial)
    return str(response.to_xml())


@lru_cache(maxsize=TWIML_CACHE_SIZE)
def say_and_hang_up(message: str) -> str:
    """A polite sentence, then hang up: what a caller hears when no agent can take the call."""
    response = VoiceResponse()
    response.say(message, language=SAY_LANGUAGE)
    response.hangup()
    return str(response.to_xml())


@lru_cache(maxsize=TWIML_CACHE_SIZE)
def hang_up() -> str:
    response = VoiceResponse()
    response.hangup()
    return str(response.to_xml())


@lru_cache(maxsize=TWIML_CACHE_SIZE)
def empty_response() -> str:
    """The answer to a status callback: valid TwiML that asks nothing of Twilio."""
    return str(VoiceResponse().to_xml())
