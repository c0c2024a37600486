"""mTLS between orchestrator and agents: credentials from PEM files, and development certs.

    python -m vnfkit.agent.tls /etc/vnfkit/certs [--name host-a --name 198.18.0.1]

writes a development CA (``ca.pem``, ``ca.key``) and, signed by it, ``agent``, ``orchestrator``
and ``client`` certificates and keys, each with its role as organizationalUnitName
(``RoleCheck``: an agent takes Agent calls only from an orchestrator). Each is valid for
server and client use (an agent is a server to its orchestrator and a client of its
Orchestrator service) for ``localhost``, ``127.0.0.1`` and the ``--name``s. A real deployment
uses its own CA; the agent only needs a CA file, its certificate and its key, and the CA must
put each party's role in its certificate's organizationalUnitName.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLES = ("agent", "orchestrator", "client")
VALID_DAYS = 365


def _name(cn: str, role: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vnfkit development")]
    if role:  # the caller's role, as RoleCheck reads it
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, data: bytes, private: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_dev_certs(folder: str | Path, names: Sequence[str] = (), roles: Sequence[str] = ROLES) -> dict[str, Path]:
    """A new CA and one certificate per role in ``folder``; the files by name (``ca``,
    ``<role>`` for the certificate, ``<role>_key``)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("vnfkit development CA")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    files = {"ca": out / "ca.pem", "ca_key": out / "ca.key"}
    _write(files["ca"], ca.public_bytes(serialization.Encoding.PEM))
    _write(files["ca_key"], _key_pem(ca_key), private=True)
    alt: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    for n in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    for role in roles:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(_name(f"vnfkit {role}", role)).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
                .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        files[role], files[f"{role}_key"] = out / f"{role}.pem", out / f"{role}.key"
        _write(files[role], cert.public_bytes(serialization.Encoding.PEM))
        _write(files[f"{role}_key"], _key_pem(key), private=True)
    return files


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise FileNotFoundError(f"TLS {what} {path}: {exc.strerror}; make development certificates with "
                                f"`python -m vnfkit.agent.tls {Path(path).parent}` or start with --insecure "
                                "(development only)") from None


def server_credentials(ca: Path, cert: Path, key: Path) -> grpc.ServerCredentials:
    """Server side of mTLS: a client without a certificate signed by ``ca`` is refused."""
    return grpc.ssl_server_credentials([(_read(key, "key"), _read(cert, "certificate"))],
                                       root_certificates=_read(ca, "CA"), require_client_auth=True)


def channel_credentials(ca: Path, cert: Path, key: Path) -> grpc.ChannelCredentials:
    """Client side of mTLS: this side's certificate, and the CA the server must be signed by."""
    return grpc.ssl_channel_credentials(root_certificates=_read(ca, "CA"), private_key=_read(key, "key"),
                                        certificate_chain=_read(cert, "certificate"))


@functools.lru_cache(maxsize=256)
def _roles(pem: bytes) -> frozenset[str]:
    cert = x509.load_pem_x509_certificate(pem)
    return frozenset(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME))


def caller_roles(context: grpc.ServicerContext) -> frozenset[str]:
    """The roles of an mTLS caller: its certificate's organizationalUnitName values."""
    pems = context.auth_context().get("x509_pem_cert") or []
    return _roles(bytes(pems[0])) if pems else frozenset()


class RoleCheck(grpc.ServerInterceptor):
    """Authorization on top of mTLS: a certificate of the right CA says who the caller is, its
    role (the subject's organizationalUnitName: ``agent``, ``orchestrator`` or ``client``, as
    ``vnfkit certs`` writes them) says what it may call. ``allowed`` maps a service's full name
    to the roles that may call it; services not named (health, reflection) are open to every
    certificate of the CA. A caller of another role gets PERMISSION_DENIED naming both."""

    def __init__(self, allowed: dict[str, frozenset[str]]) -> None:
        self.allowed = allowed

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        service = details.method.split("/")[1] if details.method.count("/") == 2 else ""
        allowed = self.allowed.get(service)
        if handler is None or allowed is None:
            return handler

        def check(context: grpc.ServicerContext) -> None:
            roles = caller_roles(context)
            if not roles & allowed:
                context.abort(grpc.StatusCode.PERMISSION_DENIED,
                              f"{details.method}: a caller with role {', '.join(sorted(roles)) or '(none)'} may not "
                              f"call {service}; its certificate's organizationalUnitName must be one of "
                              f"{', '.join(sorted(allowed))}")

        def unary(inner: Any) -> Any:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                check(context)
                return inner(request, context)
            return call

        def streaming(inner: Any) -> Any:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                check(context)
                yield from inner(request, context)
            return call

        kw = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kw)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **kw)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kw)
        return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **kw)


def channel_options(target: str) -> list[tuple[str, str]]:
    """Options a TLS channel to ``target`` needs: over a unix socket the name checked against
    the server's certificate is ``localhost`` (gRPC would take the socket's path)."""
    return [("grpc.ssl_target_name_override", "localhost")] if target.startswith("unix:") else []


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vnfkit.agent.tls", description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--name", action="append", default=[], help="another DNS name or IP the certs are valid for")
    args = p.parse_args(argv)
    files = make_dev_certs(args.folder, args.name)
    for what, path in files.items():
        print(f"{what:18} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
