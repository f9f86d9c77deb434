"""Pytest plugin: fixtures for the real RabbitMQ, Redis, PostgreSQL and LiveKit servers."""
