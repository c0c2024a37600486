"""Importing a VNF's own Python files (model.py, tests/packets.py) from their folder."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from datapath.errors import VnfkitError


def import_file(path: Path, what: str, error: type[VnfkitError]) -> ModuleType:
    """Import ``path`` as a module of its own (keyed by its absolute path, so two VNFs' model.py
    never collide). Anything it raises on import is reported as ``error`` naming the file."""
    if not path.is_file():
        raise error(f"{path}: no such file ({what})")
    name = "_vnf_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - whatever the file raises is the file's fault
        raise error(f"{path}: {type(exc).__name__}: {exc}") from exc
    return module
