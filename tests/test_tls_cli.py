"""``fastws serve``'s TLS options (uvicorn's names): an encrypted key, client certificates
(mTLS), ciphers; SIGHUP reloads the certificate for new connections while open ones keep
theirs, on every worker; ``Server.set_ssl_context`` does the same from a program."""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

import fastws
from _serveproc import serving
from _wsutil import IO_TIMEOUT, echo_handler, port_of, until
from fastws.cli import main as cli_main


def write_cert(cert: trustme.LeafCert, directory: Path, password: bytes | None = None) -> tuple[str, str]:
    """The certificate chain and its key as files; the key encrypted with ``password``."""
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    if password is None:
        keyfile.write_bytes(cert.private_key_pem.bytes())
    else:
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
        keyfile.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(password)
        ))
    return str(certfile), str(keyfile)


def trusting(*cas: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    for ca in cas:
        ca.configure_trust(context)
    return context


async def echo(port: int, context: ssl.SSLContext, message: str = "hello") -> dict[str, Any]:
    """One echo over wss://; the server certificate it saw."""
    async with fastws.connect(f"wss://127.0.0.1:{port}/", ssl=context, open_timeout=IO_TIMEOUT) as ws:
        await ws.send(message)
        assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == message
        peercert: dict[str, Any] = ws.conn.transport.get_extra_info("peercert")
        return peercert


def issuer_of(peercert: dict[str, Any]) -> str:
    return dict(item[0] for item in peercert["issuer"])["organizationalUnitName"]


def test_encrypted_key_with_password(run: Any, tmp_path: Path) -> None:
    ca = trustme.CA()
    certfile, keyfile = write_cert(ca.issue_cert("127.0.0.1"), tmp_path, password=b"s3cret")

    async def main() -> None:
        args = ("--port", "0", "--ssl-certfile", certfile, "--ssl-keyfile", keyfile, "--ssl-keyfile-password", "s3cret")
        async with serving(*args) as server:
            await echo(server.port, trusting(ca))

    run(main(), timeout=60)


def test_mtls_with_ca_certs_and_cert_reqs(run: Any, tmp_path: Path) -> None:
    ca = trustme.CA()
    certfile, keyfile = write_cert(ca.issue_cert("127.0.0.1"), tmp_path)
    client_ca = trustme.CA()
    client_ca.cert_pem.write_to_path(str(tmp_path / "clients.pem"))

    async def main() -> None:
        args = ("--port", "0", "--ssl-certfile", certfile, "--ssl-keyfile", keyfile,
                "--ssl-ca-certs", str(tmp_path / "clients.pem"), "--ssl-cert-reqs", "2",
                "--ssl-ciphers", "ECDHE+AESGCM")
        async with serving(*args) as server:
            with_cert = trusting(ca)
            client_ca.issue_cert("alice@example.test").configure_cert(with_cert)
            await echo(server.port, with_cert)
            with pytest.raises((ssl.SSLError, OSError, fastws.InvalidHandshake)):
                await echo(server.port, trusting(ca))  # no client certificate
            await echo(server.port, with_cert)  # still serving

    run(main(), timeout=60)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ssl-ca-certs", "/no/such/ca.pem"], "--ssl-ca-certs needs --ssl-certfile"),
        (["--ssl-cert-reqs", "2"], "--ssl-cert-reqs needs --ssl-certfile"),
        (["--ssl-certfile", "{cert}", "--ssl-keyfile", "{key}", "--ssl-keyfile-password", "right",
          "--ssl-ca-certs", "/no/such/ca.pem"], "--ssl-ca-certs: no such file"),
        (["--ssl-certfile", "{cert}", "--ssl-keyfile", "{key}", "--ssl-keyfile-password", "right",
          "--ssl-ciphers", "NO-SUCH-CIPHER"], "--ssl-ciphers:"),
        (["--ssl-certfile", "{cert}", "--ssl-keyfile", "{key}", "--ssl-keyfile-password", "wrong"], "cannot load the certificate"),
    ],
    ids=["ca-without-cert", "reqs-without-cert", "missing-ca", "bad-ciphers", "wrong-password"],
)
def test_bad_tls_arguments_exit_2_with_one_line(args: list[str], message: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    certfile, keyfile = write_cert(trustme.CA().issue_cert("127.0.0.1"), tmp_path, password=b"right")
    argv = [arg.format(cert=certfile, key=keyfile) for arg in args]
    assert cli_main(["serve", "--port", "0", *argv]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastws: error:") and message in lines[0], err
    assert out == ""


# -- certificate renewal ------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_the_certificate_for_new_connections(run: Any, tmp_path: Path, workers: int) -> None:
    if workers > 1 and not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("--workers needs SO_REUSEPORT")
    old_ca, new_ca = trustme.CA(organization_unit_name="old"), trustme.CA(organization_unit_name="new")
    certfile, keyfile = write_cert(old_ca.issue_cert("127.0.0.1"), tmp_path)
    both = trusting(old_ca, new_ca)

    async def main() -> None:
        args = ("--port", "0", "--workers", str(workers), "--ssl-certfile", certfile, "--ssl-keyfile", keyfile)
        async with serving(*args) as server:
            async with fastws.connect(f"wss://127.0.0.1:{server.port}/", ssl=both) as old:
                assert issuer_of(old.conn.transport.get_extra_info("peercert")) == "old"
                write_cert(new_ca.issue_cert("127.0.0.1"), tmp_path)  # renewed in place
                server.proc.send_signal(signal.SIGHUP)
                await until(lambda: server.errors().count("reloaded the TLS certificate") >= workers,
                            what=f"{workers} reload lines")
                for _ in range(8 * workers):  # each worker's: the kernel spreads them
                    assert issuer_of(await echo(server.port, both)) == "new"
                await old.send("the old connection keeps working")
                assert await asyncio.wait_for(old.recv(), IO_TIMEOUT) == "the old connection keeps working"
                assert issuer_of(old.conn.transport.get_extra_info("peercert")) == "old"
            assert "Traceback" not in server.errors()

    run(main(), timeout=90)


def test_sighup_with_a_broken_file_keeps_the_certificate(run: Any, tmp_path: Path) -> None:
    ca = trustme.CA()
    certfile, keyfile = write_cert(ca.issue_cert("127.0.0.1"), tmp_path)

    async def main() -> None:
        async with serving("--port", "0", "--ssl-certfile", certfile, "--ssl-keyfile", keyfile) as server:
            Path(keyfile).write_text("not a key\n")
            server.proc.send_signal(signal.SIGHUP)
            await asyncio.to_thread(server.wait_for_error_output, "TLS reload failed, keeping the certificate in use")
            await echo(server.port, trusting(ca))

    run(main(), timeout=60)


def test_set_ssl_context_serves_new_connections_with_the_new_certificate(run: Any) -> None:
    old_ca, new_ca = trustme.CA(organization_unit_name="old"), trustme.CA(organization_unit_name="new")

    def context_from(ca: trustme.CA) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        return context

    async def main() -> None:
        both = trusting(old_ca, new_ca)
        async with fastws.serve(echo_handler, "127.0.0.1", 0, ssl=context_from(old_ca)) as server:
            async with fastws.connect(f"wss://127.0.0.1:{port_of(server)}/", ssl=both) as old:
                server.set_ssl_context(context_from(new_ca))
                assert issuer_of(await echo(port_of(server), both)) == "new"
                await old.send("still here")
                assert await asyncio.wait_for(old.recv(), IO_TIMEOUT) == "still here"
        async with fastws.serve(echo_handler, "127.0.0.1", 0) as plain:
            with pytest.raises(ValueError):
                plain.set_ssl_context(context_from(new_ca))

    run(main())
