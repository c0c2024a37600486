"""VNF packages (``.vnfpkg``): what the SDK hands to the platform (SONATA's service package).

A package is a deterministic tar.gz of the VNF's files, the built BPF object, and
``MANIFEST.json`` with the SHA-256 and size of every other file. Signed packages add
``MANIFEST.sig`` (Ed25519 over the manifest's bytes, base64) and ``SIGNER`` (the signer's
key fingerprint, a hint for messages; trust comes only from the key the caller names).
``inspect`` refuses anything a careless extractor could be hurt by: traversal, absolute
names, links and devices, files not listed, files that do not match.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import hashlib
import io
import json
import os
import posixpath
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from datapath.errors import VnfkitError
from vnfkit.descriptor import Descriptor, load_descriptor

PACKAGE_FORMAT = 1
SUFFIX = ".vnfpkg"
MANIFEST = "MANIFEST.json"
SIGNATURE = "MANIFEST.sig"
SIGNER = "SIGNER"
META_FILES = frozenset({MANIFEST, SIGNATURE, SIGNER})
BPF_OBJECT = "build/fastpath.bpf.o"
REQUIRED = ("vnf.yaml", "fastpath.c", "model.py")
MAX_UNPACKED = 512 << 20  # refuse gzip bombs before hashing gigabytes
MAX_META = 1 << 20
_SHOWN_HASH = 16


class PackageError(VnfkitError):
    """A package cannot be built, or does not verify; the message names the member at fault."""


@dataclass(frozen=True)
class PackageFile:
    """A file listed in the manifest."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class PackageReport:
    """A verified package: what it holds and how far its signature was checked."""

    path: Path
    name: str
    vendor: str
    version: str
    created: str
    package_format: int
    files: list[PackageFile]  # as listed in the manifest, sorted
    members: list[str]  # every file in the archive, the manifest and signature included
    signed: bool
    signer: str | None  # the fingerprint the package claims (SIGNER); trust comes from `verified`
    verified: bool  # the signature verified with the caller's trusted key
    trusted_key: str | None  # that key's fingerprint
    manifest: dict[str, Any] = field(repr=False)


# ---------------------------------------------------------------------------------------------
# Keys


def fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """``sha256:<hex>`` of the raw 32-byte public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def keygen(out_private: Path) -> Path:
    """Write a new Ed25519 private key (PEM, PKCS8, mode 0600) to ``out_private`` and its public
    key (PEM) to ``<out_private>.pub``; return the private key's path. Never overwrites a key."""
    out_private = Path(out_private)
    out_public = out_private.with_name(out_private.name + ".pub")
    for path in (out_private, out_public):
        if path.exists() or path.is_symlink():
            raise PackageError(f"{path} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(out_private, private_pem, 0o600)
    try:
        _write_new(out_public, public_pem, 0o644)
    except BaseException:
        out_private.unlink(missing_ok=True)
        raise
    return out_private


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file, or PackageError saying why not."""
    key = _load_key(Path(path), private=True)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file, or PackageError saying why not."""
    key = _load_key(Path(path), private=False)
    assert isinstance(key, Ed25519PublicKey)
    return key


def _load_key(path: Path, *, private: bool) -> Ed25519PrivateKey | Ed25519PublicKey:
    what = "private" if private else "public"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PackageError(f"{path}: cannot read the {what} key: {exc.strerror or exc}") from None
    try:
        key: Any = (serialization.load_pem_private_key(data, password=None) if private
                    else serialization.load_pem_public_key(data))
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise PackageError(f"{path}: not an unencrypted PEM {what} key ({exc})") from None
    wanted = Ed25519PrivateKey if private else Ed25519PublicKey
    if not isinstance(key, wanted):
        raise PackageError(f"{path}: a {type(key).__name__.lstrip('_')}; vnfkit signs with Ed25519 keys "
                           f"(make a pair with `vnfkit keygen`)")
    return key


# ---------------------------------------------------------------------------------------------
# Building


def package(path: str | Path, out: Path, *, sign_key: Path | None = None, bpf_object: Path | None = None) -> Path:
    """Package the VNF at ``path`` into ``out`` (a file, or a folder to hold ``<name>-<version>.vnfpkg``).

    The package holds every file of the VNF's folder (caches and hidden files left out; the
    manager named by the descriptor too), ``bpf_object`` as
    build/fastpath.bpf.o, and MANIFEST.json; with ``sign_key`` also MANIFEST.sig and SIGNER.
    Same inputs and SOURCE_DATE_EPOCH give the same bytes. Nothing is written on failure.
    """
    desc = load_descriptor(path)
    key = load_private_key(sign_key) if sign_key is not None else None
    # Read everything once: the hashes then describe exactly the bytes archived, even if a
    # file changes while we work.
    files, modes = _collect(desc, Path(bpf_object) if bpf_object is not None else None)
    epoch = _created_epoch()
    manifest = {
        "package_format": PACKAGE_FORMAT,
        "name": desc.name,
        "vendor": desc.vendor,
        "version": desc.version,
        "created": datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                  for name, data in sorted(files.items())},
    }
    manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    members = dict(files)
    members[MANIFEST] = manifest_bytes
    if key is not None:
        members[SIGNATURE] = base64.b64encode(key.sign(manifest_bytes)) + b"\n"
        members[SIGNER] = (fingerprint(key) + "\n").encode()
    out = Path(out)
    target = out / f"{desc.name}-{desc.version}{SUFFIX}" if out.is_dir() else out
    _write_atomically(target, lambda fh: _write_tar(fh, members, modes, epoch))
    return target


def _collect(desc: Descriptor, bpf_object: Path | None) -> tuple[dict[str, bytes], dict[str, int]]:
    """Archive name -> bytes, and the names that keep their executable bit."""
    folder = desc.folder
    # The whole folder: a VNF's control plane and helper modules (control.py, ...) travel
    # with it, not only the files every VNF has.
    sources = _folder_files(folder)
    for name in REQUIRED:
        if folder / name not in sources:
            raise PackageError(f"{folder / name}: missing; every VNF package holds it")
    if desc.fsm is not None and desc.fsm not in sources:
        sources.append(desc.fsm)
    files: dict[str, bytes] = {}
    modes: dict[str, int] = {}
    for src in sources:
        name = src.relative_to(folder).as_posix()
        files[name], executable = _read_source(src)
        if executable:
            modes[name] = 0o755
    if bpf_object is not None:
        if not bpf_object.is_file():
            raise PackageError(f"{bpf_object}: no such BPF object")
        files[BPF_OBJECT], _ = _read_source(bpf_object)
    return files, modes


def _folder_files(top: Path) -> list[Path]:
    if top.is_symlink():
        raise PackageError(f"{top} is a symlink; a package holds regular files only")
    found = []
    for root, dirs, names in os.walk(top):
        # Caches and hidden files are the developer's, not the VNF's; walking in sorted order
        # keeps the result independent of the file system.
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for d in dirs:
            if (Path(root) / d).is_symlink():
                raise PackageError(f"{Path(root) / d} is a symlink to a folder; a package holds regular files only")
        for name in sorted(names):
            if not name.startswith(".") and not name.endswith((".pyc", ".pyo")):
                found.append(Path(root) / name)
    return found


def _read_source(src: Path) -> tuple[bytes, bool]:
    try:
        if not src.is_file():
            raise PackageError(f"{src}: not a regular file")
        return src.read_bytes(), bool(src.stat().st_mode & 0o100)
    except OSError as exc:
        raise PackageError(f"{src}: cannot read: {exc.strerror or exc}") from None


def _created_epoch() -> int:
    # SOURCE_DATE_EPOCH is the reproducible-builds convention for "pretend it is this time".
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(value) if value.isdigit() else int(time.time())


def _write_tar(fh: IO[bytes], members: dict[str, bytes], modes: dict[str, int], mtime: int) -> None:
    # gzip writes the file name and a time into its header; pin both for identical bytes.
    with gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=mtime, compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(members):
                data = members[name]
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = mtime
                info.mode = modes.get(name, 0o644)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))


def _write_atomically(target: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through a temporary file in the target's folder and rename it into place, so a
    failure leaves nothing behind and a reader never sees half a package."""
    if not target.parent.is_dir():
        raise PackageError(f"{target.parent}: no such folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise PackageError(f"cannot write in {target.parent}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise PackageError(f"cannot write {target}: {exc.strerror or exc}") from None
        raise


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``data`` and ``mode``, atomically, failing if it exists."""
    if not path.parent.is_dir():
        raise PackageError(f"{path.parent}: no such folder")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # 0600 from the start
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.link(tmp, path)  # unlike rename, link refuses to replace a file that appeared meanwhile
    except FileExistsError:
        raise PackageError(f"{path} already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise PackageError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


# ---------------------------------------------------------------------------------------------
# Verifying


@dataclass
class _Member:
    size: int
    sha256: str
    data: bytes | None  # kept for the manifest, signature and signer only


def inspect(pkg: Path, *, trust_key: Path | None = None) -> PackageReport:
    """Open and verify a package; raise PackageError naming the reason and the member at fault.

    Checks: the archive opens; every member is a regular file (or folder) with a safe relative
    name; every file the manifest lists is present with its SHA-256 and size; nothing unlisted;
    with ``trust_key`` (an Ed25519 public key, PEM) a signature that verifies with that key.
    """
    pkg = Path(pkg)
    trusted = load_public_key(trust_key) if trust_key is not None else None
    members = _read_archive(pkg)
    manifest_member = members.get(MANIFEST)
    if manifest_member is None or manifest_member.data is None:
        raise PackageError(f"{pkg}: no {MANIFEST}; not a vnfkit package")
    manifest = _parse_manifest(pkg, manifest_member.data)
    listed: dict[str, dict[str, Any]] = manifest["files"]
    for name, entry in sorted(listed.items()):
        got = members.get(name)
        if got is None:
            raise PackageError(f"{pkg}: {MANIFEST} lists {name}, which the archive does not hold")
        if got.sha256 != entry["sha256"]:
            raise PackageError(f"{pkg}: {MANIFEST} lists {name} with sha256 {entry['sha256'][:_SHOWN_HASH]}…, "
                               f"the archive's {name} has {got.sha256[:_SHOWN_HASH]}…")
        if got.size != entry["size"]:
            raise PackageError(f"{pkg}: {MANIFEST} lists {name} with {entry['size']} bytes, "
                               f"the archive's {name} has {got.size}")
    for name in sorted(members):
        if name not in listed and name not in META_FILES:
            raise PackageError(f"{pkg}: the archive holds {name}, which {MANIFEST} does not list")
    signature, signer = _signature(pkg, members)
    if trusted is not None:
        expected = fingerprint(trusted)
        if signature is None:
            raise PackageError(f"{pkg}: not signed, but a trusted key ({expected}) was given")
        try:
            trusted.verify(signature, manifest_member.data)
        except InvalidSignature:
            claim = f"; {SIGNER} names {signer}" if signer and signer != expected else ""
            raise PackageError(f"{pkg}: {SIGNATURE} does not verify with the trusted key {expected}{claim}") from None
    return PackageReport(
        path=pkg, name=manifest["name"], vendor=manifest["vendor"], version=manifest["version"],
        created=manifest["created"], package_format=manifest["package_format"],
        files=[PackageFile(name, entry["size"], entry["sha256"]) for name, entry in sorted(listed.items())],
        members=sorted(members), signed=signature is not None, signer=signer, verified=trusted is not None,
        trusted_key=fingerprint(trusted) if trusted is not None else None, manifest=manifest,
    )


def unsafe_member_name(name: str) -> str | None:
    """Why an archive member name is unsafe to extract, or None when it is a plain relative path."""
    if not name:
        return "an empty name"
    if "\x00" in name or "\\" in name:
        return "a name with NUL or backslash"
    if name.startswith("/"):
        return "an absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "a path that climbs out with '..'"
    if "." in parts or "" in parts or posixpath.normpath(name) != name:
        return "a path that is not in normal form"
    return None


_KINDS = ((tarfile.TarInfo.issym, "a symbolic link"), (tarfile.TarInfo.islnk, "a hard link"),
          (tarfile.TarInfo.ischr, "a character device"), (tarfile.TarInfo.isblk, "a block device"),
          (tarfile.TarInfo.isfifo, "a FIFO"))


def _read_archive(pkg: Path) -> dict[str, _Member]:
    """Every regular file of the archive, hashed; PackageError for anything unsafe or damaged."""
    try:
        tar = tarfile.open(pkg, mode="r:gz")
    except FileNotFoundError:
        raise PackageError(f"{pkg}: no such file") from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise PackageError(f"{pkg}: not a vnfkit package (not a readable tar.gz: {exc})") from None
    members: dict[str, _Member] = {}
    total = 0
    try:
        with tar:
            for info in tar:
                reason = unsafe_member_name(info.name)
                if reason is None and not (info.isfile() or info.isdir()):
                    reason = next((what for test, what in _KINDS if test(info)), "not a regular file")
                if reason is not None:
                    raise PackageError(f"{pkg}: refusing member {info.name!r}: {reason}")
                if info.isdir():
                    continue
                if info.name in members:  # a second copy would silently win on extraction
                    raise PackageError(f"{pkg}: refusing member {info.name!r}: it appears twice")
                total += info.size
                if total > MAX_UNPACKED:
                    raise PackageError(f"{pkg}: unpacks to more than {MAX_UNPACKED} bytes")
                members[info.name] = _hash_member(tar, info)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise PackageError(f"{pkg}: damaged archive: {exc}") from None
    return members


def _hash_member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> _Member:
    fh = tar.extractfile(info)
    assert fh is not None  # regular files always have data
    digest = hashlib.sha256()
    keep = info.name in META_FILES and info.size <= MAX_META
    kept = bytearray()
    size = 0
    while chunk := fh.read(1 << 16):
        digest.update(chunk)
        size += len(chunk)
        if keep:
            kept += chunk
    return _Member(size, digest.hexdigest(), bytes(kept) if keep else None)


def _parse_manifest(pkg: Path, data: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PackageError(f"{pkg}: {MANIFEST} is not valid JSON ({exc})") from None

    def bad(why: str) -> PackageError:
        return PackageError(f"{pkg}: {MANIFEST} {why}")

    if not isinstance(manifest, dict):
        raise bad("is not a JSON object")
    fmt = manifest.get("package_format")
    if fmt != PACKAGE_FORMAT:
        raise bad(f"has package_format {fmt!r}; this vnfkit reads format {PACKAGE_FORMAT}")
    for key in ("name", "vendor", "version", "created"):
        if not isinstance(manifest.get(key), str):
            raise bad(f"lacks the string field {key!r}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise bad("lacks the 'files' object")
    for name, entry in files.items():
        reason = unsafe_member_name(name) or ("a name reserved for the manifest" if name in META_FILES else None)
        if reason:
            raise bad(f"lists {name!r}: {reason}")
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64
                and isinstance(entry.get("size"), int) and not isinstance(entry["size"], bool) and entry["size"] >= 0):
            raise bad(f"has a malformed entry for {name} (wants sha256: 64 hex digits, size: bytes)")
    for name in REQUIRED:
        if name not in files:
            raise bad(f"does not list {name}; every VNF package holds it")
    return manifest


def _signature(pkg: Path, members: dict[str, _Member]) -> tuple[bytes | None, str | None]:
    """The raw signature (or None when unsigned) and the fingerprint SIGNER claims."""
    signer = None
    if SIGNER in members:
        raw = members[SIGNER].data or b""
        signer = raw.decode("utf-8", "replace").strip() or None
    if SIGNATURE not in members:
        return None, signer
    try:
        signature = base64.b64decode((members[SIGNATURE].data or b"").strip(), validate=True)
    except (binascii.Error, ValueError):
        raise PackageError(f"{pkg}: {SIGNATURE} is not base64") from None
    if len(signature) != 64:
        raise PackageError(f"{pkg}: {SIGNATURE} holds {len(signature)} bytes, not a 64-byte Ed25519 signature")
    return signature, signer
