"""The `vnfkit` command: the demo, and the engine's everyday verbs.

Errors vnfkit raises on purpose print as one clear message (exit 1); --verbose adds the
full verifier log to a verifier rejection.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from datapath.errors import VerifierError, VnfkitError

console = Console()
err_console = Console(stderr=True)


def _defines(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        out[name] = value or "1"
    return out


def cmd_demo(args: argparse.Namespace) -> int:
    if args.engine:
        from vnfkit import demo

        return demo.run(seconds=args.seconds, console=console)
    from vnfkit import demo_chain

    return demo_chain.run(seconds=args.seconds, console=console)


def cmd_probe(args: argparse.Namespace) -> int:
    from datapath.probe import probe

    caps = probe().as_dict()
    if args.json:
        print(json.dumps(caps, indent=2))
        return 0
    table = Table(title=f"kernel {caps.pop('kernel')}")
    table.add_column("feature")
    table.add_column("available")
    errors = caps.pop("errors")
    for key, value in caps.items():
        shown = ("[green]yes[/]" if value else f"[red]no[/] ({errors.get(key, '')})") if isinstance(value, bool) \
            else str(value)
        table.add_row(key, shown)
    console.print(table)
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from datapath.compiler import compile_bpf

    print(compile_bpf(args.source, tuple(args.include), _defines(args.define), use_cache=not args.no_cache))
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    """Compile (if C), load and verify; print what the object holds; pin it if asked."""
    from datapath.objects import load
    from datapath.pins import PinGroup

    with load(args.source, include_dirs=tuple(args.include), defines=_defines(args.define),
              log_level=1 if args.verbose else 0) as obj:
        table = Table(title=f"{args.source}: verified and loaded")
        for col in ("kind", "name", "type", "details"):
            table.add_column(col)
        for name, prog in obj.programs.items():
            table.add_row("program", name, str(prog.type), f"id {prog.id}, tag {prog.tag}")
        for name, m in obj.maps.items():
            table.add_row("map", name, getattr(m.type, "name", str(m.type)),
                          f"key {m.key_dtype}, value {m.value_dtype}, max {m.max_entries}")
        console.print(table)
        if args.pin:
            group = PinGroup(args.pin)
            group.pin_object(obj)
            console.print(f"pinned under {group.path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from datapath.pins import groups, list_attachments

    table = Table(title="pinned by vnfkit on this host")
    for col in ("group", "programs", "maps", "links"):
        table.add_column(col)
    for g in groups():
        table.add_row(g.name, ", ".join(g.names("progs")), ", ".join(g.names("maps")), ", ".join(g.names("links")))
    console.print(table)
    atts = list_attachments()
    if atts:
        t2 = Table(title="attachments")
        for col in ("group", "link", "hook", "ifindex", "program", "live"):
            t2.add_column(col)
        for a in atts:
            t2.add_row(*(str(a.get(c, a.get("error", ""))) for c in ("group", "link", "hook", "ifindex", "program",
                                                                     "live")))
        console.print(t2)
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    from datapath.errors import PinError
    from datapath.pins import PinGroup

    group = PinGroup(args.group)
    if not group.exists():
        raise PinError(f"no pin group '{args.group}' under {group.path.parent}")
    group.remove()
    console.print(f"detached and unpinned {group.path}")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    from datapath import netns

    removed = netns.cleanup_stale()
    console.print(f"removed {len(removed)} stale object(s): {', '.join(removed) or 'none'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    # perf (matplotlib, numpy) loads only here: every other command starts as fast as before.
    from perf import suite

    parser = argparse.ArgumentParser(prog="vnfkit bench", description=suite.__doc__.splitlines()[0])
    suite.add_arguments(parser)
    return suite.main(parser.parse_args(args.bench_args))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vnfkit", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="full logs (the whole verifier log on rejection)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("demo", help="the main job: a service chain across three emulated hosts, live counters")
    s.add_argument("--seconds", type=float, default=6.0, help="how long the client sends traffic")
    s.add_argument("--engine", action="store_true", help="the eBPF engine's demo instead (one veth, one program)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("probe", help="what this kernel offers (XDP native on veth, tcx, live frames, ...)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_probe)

    for name, func, text in (("compile", cmd_compile, "compile C to a BPF object (cached); print its path"),
                             ("load", cmd_load, "compile, load and verify; show programs and maps")):
        s = sub.add_parser(name, help=text)
        s.add_argument("source")
        s.add_argument("-I", "--include", action="append", default=[], help="extra include folder")
        s.add_argument("-D", "--define", action="append", default=[], help="NAME[=VALUE] for the C preprocessor")
        if name == "compile":
            s.add_argument("--no-cache", action="store_true")
        else:
            s.add_argument("--pin", metavar="GROUP", help="pin programs and maps under <bpffs>/vnfkit/GROUP")
        s.set_defaults(func=func)

    sub.add_parser("list", help="what vnfkit has pinned and attached on this host").set_defaults(func=cmd_list)
    s = sub.add_parser("detach", help="detach and unpin a pin group")
    s.add_argument("group")
    s.set_defaults(func=cmd_detach)
    sub.add_parser("cleanup", help="remove namespaces and interfaces left by killed runs").set_defaults(
        func=cmd_cleanup)

    # The benchmark suite: its options are perf's own (python -m perf suite takes the same), parsed
    # in cmd_bench, so `vnfkit bench --help` shows them.
    s = sub.add_parser("bench", add_help=False, help="the benchmark suite: floors, VNFs, chains and peers side "
                       "by side (vnfkit bench --help; --quick: under five minutes)")
    s.set_defaults(func=cmd_bench, bench_args=[])

    from vnfkit import cli_emu, cli_orch, cli_sdk, cli_vnf

    cli_vnf.register(sub)
    cli_sdk.register(sub)
    cli_emu.register(sub)
    cli_orch.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    # SIGTERM unwinds like Ctrl-C, so context managers remove namespaces and pins.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return args.func(args)
    except VerifierError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=False)
        if args.verbose:
            err_console.print("---- full verifier log ----\n" + exc.log, highlight=False, markup=False)
        else:
            err_console.print("(run with --verbose for the full verifier log)")
        return 1
    except VnfkitError as exc:
        err_console.print(f"error: {exc}", highlight=False, markup=False)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
