"""Fixtures of the worker's tests: the fake model server comes from libs/common's testing package."""

from agentline_common.testing.fake_openai import fake_openai  # noqa: F401 - a fixture, used by name
