"""A VNF's control entry point: how a service (``control:`` of a function in service.yaml), the
host data path and the agent configure a VNF's tables without knowing which VNF it is.

A VNF folder's ``control.py`` may define

    def configure(spec, tables, state=None) -> tuple[dict, Any]

which checks ``spec`` (a plain mapping, as YAML gives it), writes the VNF's tables through the
``datapath.tables.Table`` interface, and returns the config values the spec implies (merged
over the function's ``config:``) and a state object handed back on the next call (l4lb keeps
its LoadBalancer there, so a later spec changes only what differs). Errors are
``VnfkitError``s naming the setting at fault.

``check`` runs ``configure`` on a model executor's tables, which have the kernel tables' types
but live in Python: a spec is refused before anything reaches a kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from datapath.errors import VnfkitError
from vnfkit.pyfile import import_file

Configure = Callable[[Mapping[str, Any], Mapping[str, Any], Any], tuple[dict[str, Any], Any]]


class ControlError(VnfkitError):
    """A ``control:`` spec that the VNF refuses, or a VNF without a control entry point."""


def entry_point(folder: str | Path) -> Configure:
    """The ``configure`` function of the VNF in ``folder``; ControlError if it has none."""
    path = Path(folder) / "control.py"
    if not path.is_file():
        raise ControlError(f"{Path(folder).name}: has no control.py, so it takes no 'control' settings")
    fn = getattr(import_file(path, "the VNF's control plane", ControlError), "configure", None)
    if not callable(fn):
        raise ControlError(f"{path}: defines no configure(spec, tables, state), so the VNF takes no "
                           "'control' settings")
    return fn


def configure(folder: str | Path, spec: Mapping[str, Any], tables: Mapping[str, Any],
              state: Any = None) -> tuple[dict[str, Any], Any]:
    """Run the VNF's ``configure`` on ``tables``; its refusals come back as ControlError naming the VNF."""
    fn = entry_point(folder)
    if not isinstance(spec, Mapping):
        raise ControlError(f"{Path(folder).name}: control settings are a mapping, not {type(spec).__name__}")
    try:
        config, new_state = fn(spec, tables, state)
    except VnfkitError as exc:
        raise ControlError(f"{Path(folder).name}: {exc}") from exc
    return dict(config), new_state


def check(folder: str | Path, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Dry-run ``spec`` on model tables; the config values it implies, or ControlError."""
    from vnfkit.executors import make_executors  # compiles the VNF for its table types: only when needed

    model = make_executors(Path(folder), ("model",))[0]
    config, _ = configure(folder, spec, model.tables)
    return config
