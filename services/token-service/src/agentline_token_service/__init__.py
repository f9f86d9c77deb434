"""Agentline token-service: LiveKit tokens for the console's Test Agent call, and LiveKit webhooks."""
