"""The SDK's verbs for the `vnfkit` command: validate, package, inspect, keygen.

``register`` adds them to the CLI's subparsers. Each handler returns an exit code; errors
vnfkit raises on purpose (VnfkitError) are left to the CLI, which prints them as one line.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console(highlight=False)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``validate``, ``package``, ``inspect`` and ``keygen`` to the CLI's subparsers."""
    s = subparsers.add_parser("validate", help="check a VNF's descriptor, and that it agrees with its C fast path")
    s.add_argument("path", metavar="PATH", help="the VNF folder or its vnf.yaml")
    s.add_argument("--no-build", action="store_true", help="check the descriptor only; do not compile fastpath.c")
    s.set_defaults(func=cmd_validate)

    s = subparsers.add_parser("package", help="build the fast path and write a .vnfpkg (optionally signed)")
    s.add_argument("path", metavar="PATH", help="the VNF folder")
    s.add_argument("-o", "--output", required=True, metavar="OUT", help="package file, or a folder to write it in")
    s.add_argument("--sign", metavar="KEY", help="Ed25519 private key (PEM) to sign the manifest with")
    s.set_defaults(func=cmd_package)

    s = subparsers.add_parser("inspect", help="verify a .vnfpkg and list what it holds")
    s.add_argument("file", metavar="FILE")
    s.add_argument("--trust", metavar="KEY", default=os.environ.get("VNFKIT_TRUST_KEY"),
                   help="Ed25519 public key (PEM) the package must be signed with "
                        "(default: $VNFKIT_TRUST_KEY, so a host can require signatures once for all)")
    s.set_defaults(func=cmd_inspect)

    s = subparsers.add_parser("keygen", help="make an Ed25519 key pair for signing packages (OUT and OUT.pub)")
    s.add_argument("out", metavar="OUT", help="where to write the private key")
    s.set_defaults(func=cmd_keygen)


def cmd_validate(args: argparse.Namespace) -> int:
    """Print every problem (``file:line:col: path: message``) and exit 1, or say the VNF is valid."""
    from vnfkit.validate import validate

    problems = validate(args.path, build=not args.no_build)
    # Plain print, not rich: problem paths like parameters[2] would read as markup.
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"{args.path}: valid")
    return 0


def cmd_package(args: argparse.Namespace) -> int:
    """Validate (with the build), compile fastpath.c, and package; print path, size, file count."""
    from datapath.compiler import compile_bpf
    from vnfkit.descriptor import load_descriptor
    from vnfkit.package import inspect, package
    from vnfkit.validate import validate

    problems = validate(args.path, build=True)
    for problem in problems:
        print(problem)
    if problems:
        return 1
    desc = load_descriptor(args.path)
    obj = compile_bpf(desc.fastpath)
    out = package(args.path, Path(args.output), sign_key=Path(args.sign) if args.sign else None, bpf_object=obj)
    report = inspect(out)  # a package we cannot read back is a bug to hear about now, not at deploy time
    signed = f", signed by {report.signer}" if report.signed else ""
    print(f"{out}: {out.stat().st_size} bytes, {len(report.members)} files{signed}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Verify a package and show its files; a failed verification raises PackageError (exit 1)."""
    from vnfkit.package import inspect

    report = inspect(Path(args.file), trust_key=Path(args.trust) if args.trust else None)
    table = Table(title=Text(f"{report.name} {report.version} ({report.vendor})"))
    table.add_column("file")
    table.add_column("size", justify="right")
    table.add_column("sha256")
    for f in report.files:
        table.add_row(Text(f.name), str(f.size), f.sha256[:16] + "…")
    console.print(table)
    if report.verified:
        status = f"signature: verified with the trusted key {report.trusted_key}"
    elif report.signed:
        status = f"signature: present (signer claims {report.signer or 'nothing'}); not verified, pass --trust KEY"
    else:
        status = "signature: none (unsigned package)"
    # soft_wrap: long fingerprints and paths stay on one line, whole, for copying and grepping.
    console.print(Text(f"{report.path}: package format {report.package_format}, created {report.created}, "
                       f"{len(report.members)} files"), soft_wrap=True)
    console.print(Text(status), soft_wrap=True)
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    """Write a new key pair and print where, with the public key's fingerprint."""
    from vnfkit.package import fingerprint, keygen, load_public_key

    private = keygen(Path(args.out))
    public = private.with_name(private.name + ".pub")
    print(f"private key: {private} (mode 0600, keep it secret)")
    print(f"public key:  {public} (give it to whoever runs `vnfkit inspect --trust`)")
    print(f"fingerprint: {fingerprint(load_public_key(public))}")
    return 0
