"""Placeholder reference model for descriptor tests."""
