"""VNF packages: a deterministic round trip, Ed25519 signatures, and refusal of every kind of
tampering (changed, extra, missing, traversing and link members) with nothing left behind."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vnfkit import cli_sdk
from vnfkit.descriptor import DescriptorError
from vnfkit.package import (
    BPF_OBJECT,
    MANIFEST,
    PackageError,
    fingerprint,
    inspect,
    keygen,
    load_public_key,
    package,
)

FULL = Path(__file__).parent / "data" / "descriptors" / "full"
FULL_FILES = ["fastpath.c", "fsm/scaler.py", "manager.py", "model.py", "tests/packets.py", "vnf.yaml"]

Members = list[tuple[tarfile.TarInfo, bytes]]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    return {"alice": keygen(folder / "alice.key"), "mallory": keygen(folder / "mallory.key")}


@pytest.fixture
def bpf_object(tmp_path: Path) -> Path:
    obj = tmp_path / "fastpath.o"
    obj.write_bytes(b"\x7fELF" + bytes(range(256)) * 4)
    return obj


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def read_members(pkg: Path) -> Members:
    with tarfile.open(pkg, "r:gz") as tar:
        return [(info, tar.extractfile(info).read() if info.isfile() else b"") for info in tar]  # type: ignore[union-attr]


def rewrite(pkg: Path, change: Callable[[Members], Members]) -> Path:
    """A copy of ``pkg`` whose members went through ``change`` (manifest and signature untouched)."""
    members = change(read_members(pkg))
    target = pkg.with_name("tampered.vnfpkg")
    with tarfile.open(target, "w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return target


def member(name: str, data: bytes = b"#!/bin/sh\nrm -rf /\n", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple[
        tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data)
    return info, data


# ---------------------------------------------------------------------------------------------
# Building and reading back


def test_round_trip(out: Path, bpf_object: Path) -> None:
    pkg = package(FULL, out / "fw.vnfpkg", bpf_object=bpf_object)
    assert pkg == out / "fw.vnfpkg"
    report = inspect(pkg)
    assert (report.name, report.vendor, report.version, report.package_format) == (
        "firewall", "eu.sonata-nfv", "1.2.0-rc.1", 1)
    assert [f.name for f in report.files] == sorted([*FULL_FILES, BPF_OBJECT])
    assert report.members == sorted([*FULL_FILES, BPF_OBJECT, MANIFEST])
    assert not report.signed and not report.verified and report.signer is None
    contents = {info.name: data for info, data in read_members(pkg)}
    for name in FULL_FILES:
        assert contents[name] == (FULL / name).read_bytes()
    assert contents[BPF_OBJECT] == bpf_object.read_bytes()
    manifest = json.loads(contents[MANIFEST])
    assert manifest["files"]["fastpath.c"]["size"] == len(contents["fastpath.c"])
    assert report.created.endswith("Z") and report.created == manifest["created"]


def test_package_is_deterministic(out: Path, bpf_object: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    first = package(FULL, out / "a.vnfpkg", bpf_object=bpf_object).read_bytes()
    second = package(FULL, out / "b.vnfpkg", bpf_object=bpf_object).read_bytes()
    assert first == second
    members = read_members(out / "a.vnfpkg")
    names = [info.name for info, _ in members]
    assert names == sorted(names)
    assert {(i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode) for i, _ in members} == {
        (1700000000, 0, 0, "", "", 0o644)}
    assert inspect(out / "a.vnfpkg").created == "2023-11-14T22:13:20Z"


def test_output_folder_gets_the_default_name_and_caches_are_left_out(tmp_path: Path, out: Path) -> None:
    vnf = tmp_path / "vnf"
    shutil.copytree(FULL, vnf)
    (vnf / "tests" / "__pycache__").mkdir()
    (vnf / "tests" / "__pycache__" / "x.pyc").write_bytes(b"cache")
    (vnf / "tests" / ".hidden").write_text("secret")
    (vnf / "tests" / "data").mkdir()
    (vnf / "tests" / "data" / "run.sh").write_text("#!/bin/sh\n")
    (vnf / "tests" / "data" / "run.sh").chmod(0o755)
    (vnf / "notes.txt").write_text("the whole folder travels: helper modules, docs")
    pkg = package(vnf, out)
    assert pkg == out / "firewall-1.2.0-rc.1.vnfpkg"
    assert [f.name for f in inspect(pkg).files] == sorted([*FULL_FILES, "notes.txt", "tests/data/run.sh"])
    modes = {info.name: info.mode for info, _ in read_members(pkg)}
    assert modes["tests/data/run.sh"] == 0o755 and modes["fastpath.c"] == 0o644


def test_the_manager_is_packaged_under_the_descriptors_name(tmp_path: Path, out: Path) -> None:
    vnf = tmp_path / "vnf"
    shutil.copytree(FULL, vnf)
    (vnf / "fsm" / "scaler.py").rename(vnf / "real.py")
    (vnf / "fsm" / "scaler.py").symlink_to("../real.py")
    names = [f.name for f in inspect(package(vnf, out)).files]
    assert "fsm/scaler.py" in names  # read through the link, stored under the descriptor's name


# ---------------------------------------------------------------------------------------------
# Signatures


def test_signed_package_verifies_with_the_right_key(out: Path, keys: dict[str, Path]) -> None:
    pkg = package(FULL, out / "fw.vnfpkg", sign_key=keys["alice"])
    alice = fingerprint(load_public_key(Path(f"{keys['alice']}.pub")))
    report = inspect(pkg, trust_key=Path(f"{keys['alice']}.pub"))
    assert report.signed and report.verified and report.signer == alice and report.trusted_key == alice
    unverified = inspect(pkg)
    assert unverified.signed and not unverified.verified and unverified.signer == alice


def test_signed_package_fails_with_a_wrong_key(out: Path, keys: dict[str, Path]) -> None:
    pkg = package(FULL, out / "fw.vnfpkg", sign_key=keys["alice"])
    with pytest.raises(PackageError, match=r"MANIFEST.sig does not verify with the trusted key sha256:[0-9a-f]{64}; "
                                           r"SIGNER names sha256:"):
        inspect(pkg, trust_key=Path(f"{keys['mallory']}.pub"))


def test_unsigned_package_fails_when_a_key_is_trusted(out: Path, keys: dict[str, Path]) -> None:
    pkg = package(FULL, out / "fw.vnfpkg")
    with pytest.raises(PackageError, match="not signed, but a trusted key"):
        inspect(pkg, trust_key=Path(f"{keys['alice']}.pub"))


def test_rewritten_manifest_breaks_the_signature(out: Path, keys: dict[str, Path]) -> None:
    """An attacker who changes a file and fixes the manifest's hash still cannot sign."""
    pkg = package(FULL, out / "fw.vnfpkg", sign_key=keys["alice"])
    evil = b"/* evil */\n"

    def change(members: Members) -> Members:
        result = []
        for info, data in members:
            if info.name == "fastpath.c":
                data = evil
            elif info.name == MANIFEST:
                manifest = json.loads(data)
                manifest["files"]["fastpath.c"] = {"sha256": hashlib.sha256(evil).hexdigest(), "size": len(evil)}
                data = json.dumps(manifest).encode()
            result.append((info, data))
        return result

    tampered = rewrite(pkg, change)
    inspect(tampered)  # consistent on its own: only the signature can tell
    with pytest.raises(PackageError, match="does not verify with the trusted key"):
        inspect(tampered, trust_key=Path(f"{keys['alice']}.pub"))


def test_keygen_writes_a_private_and_a_public_key(tmp_path: Path) -> None:
    private = keygen(tmp_path / "signing.key")
    public = tmp_path / "signing.key.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    with pytest.raises(PackageError, match="already exists"):
        keygen(private)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signing.key", "signing.key.pub"]


def test_keys_of_the_wrong_kind_are_refused(tmp_path: Path, out: Path) -> None:
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(PackageError, match="vnfkit signs with Ed25519 keys"):
        package(FULL, out / "fw.vnfpkg", sign_key=ec_key)
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(PackageError, match="not an unencrypted PEM private key"):
        package(FULL, out / "fw.vnfpkg", sign_key=tmp_path / "junk.pem")
    with pytest.raises(PackageError, match="not an unencrypted PEM public key"):
        inspect(out / "whatever.vnfpkg", trust_key=tmp_path / "junk.pem")
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Tampering


@pytest.fixture
def pkg(out: Path) -> Path:
    return package(FULL, out / "fw.vnfpkg")


def test_tampered_member_names_the_member_and_both_hashes(pkg: Path) -> None:
    listed = inspect(pkg).manifest["files"]["fastpath.c"]["sha256"]
    evil = b"/* evil */ int x;\n"
    actual = hashlib.sha256(evil).hexdigest()
    tampered = rewrite(pkg, lambda ms: [(i, evil if i.name == "fastpath.c" else d) for i, d in ms])
    with pytest.raises(PackageError) as info:
        inspect(tampered)
    assert str(info.value) == (f"{tampered}: MANIFEST.json lists fastpath.c with sha256 {listed[:16]}…, "
                               f"the archive's fastpath.c has {actual[:16]}…")


def test_extra_member_is_refused(pkg: Path) -> None:
    tampered = rewrite(pkg, lambda ms: [*ms, member("evil.sh")])
    with pytest.raises(PackageError, match="the archive holds evil.sh, which MANIFEST.json does not list"):
        inspect(tampered)


def test_missing_member_is_refused(pkg: Path) -> None:
    tampered = rewrite(pkg, lambda ms: [(i, d) for i, d in ms if i.name != "model.py"])
    with pytest.raises(PackageError, match="MANIFEST.json lists model.py, which the archive does not hold"):
        inspect(tampered)


@pytest.mark.parametrize(("bad", "reason"), [
    (member("../evil"), "refusing member '../evil': a path that climbs out"),
    (member("tests/../../evil"), "a path that climbs out"),
    (member("/etc/cron.d/evil"), "refusing member '/etc/cron.d/evil': an absolute path"),
    (member("./vnf.yaml"), "not in normal form"),
    (member("link", b"", tarfile.SYMTYPE, "/etc/passwd"), "refusing member 'link': a symbolic link"),
    (member("hard", b"", tarfile.LNKTYPE, "vnf.yaml"), "refusing member 'hard': a hard link"),
    (member("dev", b"", tarfile.CHRTYPE), "a character device"),
    (member("fifo", b"", tarfile.FIFOTYPE), "a FIFO"),
    (member("vnf.yaml", b"name: other\n"), "refusing member 'vnf.yaml': it appears twice"),
])
def test_unsafe_members_are_refused(pkg: Path, bad: tuple[tarfile.TarInfo, bytes], reason: str) -> None:
    tampered = rewrite(pkg, lambda ms: [*ms, bad])
    with pytest.raises(PackageError, match=reason.replace("(", r"\(").replace(".", r"\.")):
        inspect(tampered)


def test_not_a_package(tmp_path: Path, pkg: Path) -> None:
    (tmp_path / "junk.vnfpkg").write_bytes(b"hello")
    with pytest.raises(PackageError, match="not a readable tar.gz"):
        inspect(tmp_path / "junk.vnfpkg")
    (tmp_path / "cut.vnfpkg").write_bytes(pkg.read_bytes()[:300])
    with pytest.raises(PackageError, match="damaged archive|not a readable"):
        inspect(tmp_path / "cut.vnfpkg")
    with pytest.raises(PackageError, match="no such file"):
        inspect(tmp_path / "absent.vnfpkg")
    no_manifest = rewrite(pkg, lambda ms: [(i, d) for i, d in ms if i.name != MANIFEST])
    with pytest.raises(PackageError, match="no MANIFEST.json"):
        inspect(no_manifest)
    bad_json = rewrite(pkg, lambda ms: [(i, b"{" if i.name == MANIFEST else d) for i, d in ms])
    with pytest.raises(PackageError, match="MANIFEST.json is not valid JSON"):
        inspect(bad_json)


def test_manifest_listing_an_unsafe_name_is_refused(pkg: Path) -> None:
    def change(members: Members) -> Members:
        result = []
        for info, data in members:
            if info.name == MANIFEST:
                manifest = json.loads(data)
                manifest["files"]["../x"] = {"sha256": "0" * 64, "size": 0}
                data = json.dumps(manifest).encode()
            result.append((info, data))
        return result

    with pytest.raises(PackageError, match="lists '../x': a path that climbs out"):
        inspect(rewrite(pkg, change))


# ---------------------------------------------------------------------------------------------
# Nothing left behind on failure


def test_nothing_is_written_when_packaging_fails(tmp_path: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "vnf.yaml").write_text("name: [\n")
    with pytest.raises(DescriptorError):
        package(bad, out)
    with pytest.raises(PackageError, match="no such BPF object"):
        package(FULL, out, bpf_object=tmp_path / "absent.o")
    assert list(out.iterdir()) == []

    previous = package(FULL, out / "fw.vnfpkg")
    before = previous.read_bytes()
    calls = {"n": 0}
    real_addfile = tarfile.TarFile.addfile

    def failing_addfile(self: tarfile.TarFile, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        real_addfile(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tarfile.TarFile, "addfile", failing_addfile)
    with pytest.raises(PackageError, match="No space left on device"):
        package(FULL, out / "fw.vnfpkg")
    assert [p.name for p in out.iterdir()] == ["fw.vnfpkg"]  # no temporary file left
    assert previous.read_bytes() == before  # and the old package untouched


# ---------------------------------------------------------------------------------------------
# The CLI handlers


def run(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    cli_sdk.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = args.func(args)
    return code, buffer.getvalue()


def test_cli_keygen_package_inspect(tmp_path: Path, out: Path, bpf_object: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    code, text = run("keygen", str(tmp_path / "k"))
    assert code == 0 and "fingerprint: sha256:" in text and (tmp_path / "k.pub").exists()

    # The build needs clang and the lead's introspection; both are faked, the packaging is real.
    import datapath.compiler
    import vnfkit.validate

    monkeypatch.setattr(vnfkit.validate, "validate", lambda path, build=True: [])
    monkeypatch.setattr(datapath.compiler, "compile_bpf", lambda source, *a, **k: bpf_object)
    code, text = run("package", str(FULL), "-o", str(out), "--sign", str(tmp_path / "k"))
    pkg = out / "firewall-1.2.0-rc.1.vnfpkg"
    assert code == 0 and text.startswith(f"{pkg}: {pkg.stat().st_size} bytes, 10 files, signed by sha256:")

    code, shown = run("inspect", str(pkg), "--trust", str(tmp_path / "k.pub"))
    assert code == 0 and "tests/packets.py" in shown and "signature: verified with the trusted key" in shown
    assert "not verified, pass --trust KEY" in run("inspect", str(pkg))[1]

    tampered = rewrite(pkg, lambda ms: [(i, b"x" if i.name == "model.py" else d) for i, d in ms])
    with pytest.raises(PackageError, match="model.py"):
        run("inspect", str(tampered))

    # A host that trusts a key once (VNFKIT_TRUST_KEY) refuses unsigned packages by default.
    code, _ = run("package", str(FULL), "-o", str(out / "unsigned.vnfpkg"))
    monkeypatch.setenv("VNFKIT_TRUST_KEY", str(tmp_path / "k.pub"))
    assert run("inspect", str(pkg))[0] == 0
    with pytest.raises(PackageError, match="not signed|MANIFEST.sig"):
        run("inspect", str(out / "unsigned.vnfpkg"))


def test_cli_package_stops_on_problems(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vnfkit.validate
    from vnfkit.descriptor import Problem

    problem = Problem("vnf.yaml", 3, 1, "counters[0].name", "counter 'x' is not in fastpath.c's VNF_COUNTERS")
    monkeypatch.setattr(vnfkit.validate, "validate", lambda path, build=True: [problem])
    assert run("package", str(FULL), "-o", str(out)) == (1, f"{problem}\n")
    assert os.listdir(out) == []
