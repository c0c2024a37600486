"""Placeholder packet tests shipped inside packages (not collected by pytest: no test_ prefix)."""

TESTS: list[object] = []
