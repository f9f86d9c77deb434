"""Test fixtures for real infrastructure, shared by every service's tests (a pytest plugin)."""
