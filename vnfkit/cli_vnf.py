"""`vnfkit new`, `vnfkit build` and `vnfkit test`: a VNF developer's everyday commands."""

from __future__ import annotations

import argparse
import re
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table as RichTable

from datapath.errors import VnfkitError
from vnfkit.testing import Failure, Report

SKELETON = Path(__file__).parent / "skeleton"
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
console = Console(soft_wrap=True)  # long packet summaries stay one line, also in logs


def _folder(path: str) -> Path:
    folder = Path(path)
    if folder.name == "vnf.yaml":
        folder = folder.parent
    if not (folder / "vnf.yaml").is_file():
        raise VnfkitError(f"{folder}: not a VNF folder (no vnf.yaml)")
    return folder


def cmd_new(args: argparse.Namespace) -> int:
    name = Path(args.name).name
    if not _NAME.match(name):
        raise VnfkitError(f"VNF name '{name}': use lowercase letters, digits and '-', starting with a letter")
    target = Path(args.name)
    if target.exists():
        raise VnfkitError(f"{target} already exists; vnfkit new does not overwrite anything")
    tmp = target.with_name(f".{target.name}.new")
    shutil.copytree(SKELETON, tmp, ignore=shutil.ignore_patterns("__pycache__"))
    for path in tmp.rglob("*"):
        if path.is_file():
            path.write_text(path.read_text().replace("{{name}}", name))
    tmp.rename(target)  # all or nothing
    console.print(f"created {target}/: vnf.yaml, fastpath.c, model.py, tests/packets.py\n"
                  f"next: vnfkit test {target}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from datapath.native import build_native
    from datapath.objects import load
    from vnfkit.introspect import introspect

    folder = _folder(args.path)
    t0 = time.perf_counter()
    intro = introspect(folder)
    so = build_native(folder / "fastpath.c")
    table = RichTable(title=f"{folder.name}: built in {time.perf_counter() - t0:.2f} s (cached by content)")
    for col in ("artefact", "path", "size"):
        table.add_column(col)
    table.add_row("BPF object", str(intro.object_path), f"{intro.object_path.stat().st_size:,} B")
    table.add_row("native .so", str(so), f"{so.stat().st_size:,} B")
    with load(intro.object_path) as obj:  # verified by the real kernel
        for name, prog in obj.programs.items():
            insns, processed = prog.sizes()
            table.add_row(f"program {name}", f"{insns} instructions, verifier processed {processed}", "")
    console.print(table)
    return 0


def _hexdump_diff(a: bytes, b: bytes) -> list[str]:
    lines = []
    for off in range(0, max(len(a), len(b)), 16):
        ca, cb = a[off:off + 16], b[off:off + 16]
        if ca == cb:
            continue
        mark = "".join("^^ " if (ca[i:i + 1] != cb[i:i + 1]) else "   " for i in range(max(len(ca), len(cb))))
        lines += [f"  {off:04x}  {ca.hex(' ')}", f"  {off:04x}  {cb.hex(' ')}", f"        {mark}"]
    return lines


def _show_failure(f: Failure) -> None:
    from scapy.layers.l2 import Ether

    console.print(f"[bold red]FAIL[/] {f.test}: {f.reason}", highlight=False)
    if f.packet:
        console.print(f"  input: {Ether(f.packet).summary()}", highlight=False, markup=False)
    if not f.results:
        return
    names = list(f.results)
    base = f.results[names[0]]
    for name in names:
        r = f.results[name]
        console.print(f"  {name:>8}: {r.verdict.name} port={r.port} {len(r.data)} B  {Ether(bytes(r.data)).summary()}",
                      highlight=False, markup=False)
    for name in names[1:]:
        r = f.results[name]
        if bytes(r.data) != bytes(base.data):
            console.print(f"  bytes: {names[0]} (first line) vs {name} (second line)", highlight=False)
            console.print("\n".join(_hexdump_diff(bytes(base.data), bytes(r.data))), highlight=False, markup=False)
            console.print(Ether(bytes(base.data)).show2(dump=True), highlight=False, markup=False)
            console.print(Ether(bytes(r.data)).show2(dump=True), highlight=False, markup=False)
            break


def cmd_test(args: argparse.Namespace) -> int:
    from vnfkit.descriptor import load_descriptor
    from vnfkit.executors import make_executors
    from vnfkit.testing import fuzz, load_packet_tests, run_tests

    folder = _folder(args.path)
    desc = load_descriptor(folder)
    tests, fuzz_setup = load_packet_tests(folder)
    which = tuple(args.executors.split(","))
    executors = make_executors(folder, which)
    try:
        report = run_tests(executors, tests, desc)
        _print_report(f"{folder.name}: {report.ran} packet tests on {', '.join(which)}", report)
        ok = report.ok
        if args.fuzz:
            pcap = Path(args.pcap or f"{folder.name}-fuzz-{args.seed}.pcap")
            t0 = time.perf_counter()
            freport = fuzz(executors, args.fuzz, args.seed, desc, fuzz_setup, pcap)
            _print_report(f"{folder.name}: {freport.ran} fuzzed packets (seed {args.seed}) in "
                          f"{time.perf_counter() - t0:.1f} s", freport)
            if not freport.ok and pcap.exists():
                console.print(f"diverging packets written to {pcap}")
            ok = ok and freport.ok
    finally:
        for ex in executors:
            ex.close()
    return 0 if ok else 1


def _print_report(title: str, report: Report) -> None:
    for f in report.failures:
        _show_failure(f)
    status = "[bold green]all agree[/]" if report.ok else f"[bold red]{len(report.failures)} failed[/]"
    console.print(f"{title}: {status}")


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("new", help="create a VNF folder that builds and passes its own tests")
    s.add_argument("name")
    s.set_defaults(func=cmd_new)

    s = sub.add_parser("build", help="build a VNF for the kernel and natively; show artefacts and verifier counts")
    s.add_argument("path")
    s.set_defaults(func=cmd_build)

    s = sub.add_parser("test", help="run a VNF's packet tests on every executor and compare them")
    s.add_argument("path")
    s.add_argument("--fuzz", type=int, default=0, metavar="N", help="also run N generated and mutated packets")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--pcap", help="where to write diverging packets (default NAME-fuzz-SEED.pcap)")
    s.add_argument("--executors", default="kernel,native,model", help="comma-separated subset")
    s.set_defaults(func=cmd_test)
