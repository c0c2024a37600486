"""Placeholder scaling FSM for descriptor tests."""
