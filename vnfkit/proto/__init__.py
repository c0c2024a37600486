"""The control plane's contract, ``vnfkit.proto`` (package ``vnfkit.v1``), and its Python code.

The Python modules are generated from the proto file with grpcio-tools the first time they are
needed, into the project's cache folder (``$VNFKIT_CACHE``, else ``~/.cache/vnfkit``) under a
key of the proto's text and the grpcio-tools version, so an edit of the proto regenerates them.
Nothing generated is in the repository or edited by hand.

    pb, rpc = load()          # vnfkit_pb2 (messages), vnfkit_pb2_grpc (stubs, servicers)
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from datapath.compiler import cache_dir
from datapath.errors import VnfkitError

PROTO = Path(__file__).with_name("vnfkit.proto")
PACKAGE = "vnfkit.v1"


class ProtoError(VnfkitError):
    """The proto file did not compile."""


def generate(out: Path, proto: Path = PROTO) -> None:
    """Run protoc (grpcio-tools) on ``proto``: messages and gRPC stubs as Python in ``out``."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    args = ["protoc", f"-I{proto.parent}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
            str(proto)]
    if protoc.main(args) != 0:
        raise ProtoError(f"protoc failed on {proto} (its message is above)")


def _key() -> str:
    from importlib.metadata import version

    h = hashlib.sha256(PROTO.read_bytes())
    h.update(version("grpcio-tools").encode())
    return h.hexdigest()[:16]


@functools.cache
def load() -> tuple[ModuleType, ModuleType]:
    """(messages, gRPC) modules generated from ``vnfkit.proto``, generating them if needed."""
    out = cache_dir() / "proto" / _key()
    if not (out / "vnfkit_pb2_grpc.py").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".gen-"))
        try:
            generate(tmp)
            try:
                os.rename(tmp, out)  # atomic: another process may have got there first
            except OSError:
                if not (out / "vnfkit_pb2_grpc.py").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    # The generated stubs import their messages as the top-level module ``vnfkit_pb2``.
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    return importlib.import_module("vnfkit_pb2"), importlib.import_module("vnfkit_pb2_grpc")
