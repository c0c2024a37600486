"""Placeholder function-specific manager for descriptor tests."""
