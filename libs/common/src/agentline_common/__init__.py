"""Shared contracts and plumbing of Agentline. Services import from here; this never imports a service."""
