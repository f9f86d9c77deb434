"""Twilio's voice webhooks as Twilio posts them: field names, values and encoding.

Twilio is outside the machine, so the gateway's tests and its benchmark play it; both take what it
sends from here, so they agree on one definition of it.
"""

from __future__ import annotations

import uuid

PUBLIC_BASE_URL = "https://voice.agentline.example.test"
"""The URL the tests' Twilio account calls the gateway at (what signatures are computed over)."""


def new_call_sid() -> str:
    return "CA" + uuid.uuid4().hex


def incoming_form(to: str, *, call_sid: str | None = None, caller: str = "+14155550123") -> dict[str, str]:
    """The voice webhook exactly as Twilio posts it for an inbound call (field names and values)."""
    return {
        "AccountSid": "AC" + "0123456789abcdef" * 2,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid or new_call_sid(),
        "CallStatus": "ringing",
        "CallToken": "%7B%22parentCallInfoToken%22%3A%22eyJhbGciOiJFUzI1NiJ9%22%7D",
        "Called": to,
        "CalledCity": "",
        "CalledCountry": "US",
        "CalledState": "CA",
        "CalledZip": "",
        "Caller": caller,
        "CallerCity": "SAN FRANCISCO",
        "CallerCountry": "US",
        "CallerState": "CA",
        "CallerZip": "94103",
        "Direction": "inbound",
        "From": caller,
        "FromCity": "SAN FRANCISCO",
        "FromCountry": "US",
        "FromState": "CA",
        "FromZip": "94103",
        "StirVerstat": "TN-Validation-Passed-A",
        "To": to,
        "ToCity": "",
        "ToCountry": "US",
        "ToState": "CA",
        "ToZip": "",
    }


def status_form(incoming: dict[str, str], status: str, **extra: str) -> dict[str, str]:
    """A status callback for the call `incoming` started, as Twilio posts it."""
    keep = ("AccountSid", "ApiVersion", "CallSid", "Called", "Caller", "Direction", "From", "To")
    return {
        **{key: incoming[key] for key in keep},
        "CallStatus": status,
        "CallbackSource": "call-progress-events",
        "SequenceNumber": "0",
        "Timestamp": "Tue, 24 Nov 2026 16:30:00 +0000",
        **extra,
    }
