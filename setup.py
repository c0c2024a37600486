"""vnfkit: Python SDK, engines and control plane for eBPF/XDP and cffi network functions.

The C binding to libbpf is built here through ``cffi_modules`` (API mode, see
``datapath/_libbpf_build.py``). Runtime dependencies and their pins come from the one
pinned list, ``requirements.txt``.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def runtime_requirements() -> list[str]:
    """The '--- runtime ---' block of requirements.txt (development tools are left out)."""
    reqs: list[str] = []
    block = None
    for line in (HERE / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if line.startswith("# ---"):
            block = line.strip("# -").strip()
            continue
        if line and not line.startswith("#") and block == "runtime":
            reqs.append(line)
    return reqs


setup(
    name="vnfkit",
    version="0.1.0",
    description="Virtual network functions with eBPF/XDP and cffi fast paths, chained with NSH",
    python_requires=">=3.11",
    packages=find_packages(include=["vnfkit*", "datapath*", "chaining*", "perf*"]),
    package_data={
        "datapath": ["include/*.h", "include/vnfkit/*.h", "progs/*.c", "native/*.c"],
        "vnfkit": ["schema/*.json", "skeleton/*", "skeleton/tests/*", "proto/*.proto"],
        "chaining": ["progs/*.c", "progs/*.h", "schema/*.json"],
    },
    setup_requires=["cffi"],
    cffi_modules=["datapath/_libbpf_build.py:ffibuilder", "datapath/_sockgen_build.py:ffibuilder"],
    install_requires=runtime_requirements(),
    # vnfkit-agent's gRPC code is generated from vnfkit/proto/vnfkit.proto when first imported
    # (vnfkit.proto.load), into the cache folder: nothing generated is installed or committed.
    entry_points={"console_scripts": ["vnfkit = vnfkit.cli:main", "vnfkit-agent = vnfkit.agent.cli:main",
                                      "vnfkit-orchestrator = vnfkit.orchestrator.server:main"]},
)
