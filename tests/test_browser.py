"""The browser page served by ``fastws serve``, driven in a real Chromium (Playwright).

The page's own ``WebSocket`` talks to the server: text and ArrayBuffer echo, a close
with a code and reason seen by both sides, two pages in one chat room, reconnection
after a server restart, and ``wss://`` with a certificate the browser is told to trust.
Skipped only when no Chromium is installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

import trustme  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright  # noqa: E402

from _serveproc import ServeProcess  # noqa: E402
from _wsutil import scaled  # noqa: E402

WAIT_MS = int(scaled(15_000))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

RECORDER_APP = '''
import fastws

async def recorder(ws):
    """Echoes; "close CODE REASON" makes the server close; every close is printed."""
    try:
        async for message in ws:
            if isinstance(message, str) and message.startswith("close "):
                _, code, reason = message.split(" ", 2)
                await ws.close(int(code), reason)
                break
            await ws.send(message)
    finally:
        print(f"server saw close {ws.close_code} {ws.close_reason!r}", flush=True)
'''


def spki_hash(cert_pem: bytes) -> str:
    """What --ignore-certificate-errors-spki-list wants: base64(sha256(SubjectPublicKeyInfo))."""
    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


class Certificate:
    def __init__(self, directory: Path) -> None:
        issued = trustme.CA().issue_cert("127.0.0.1", "localhost")
        self.certfile = directory / "cert.pem"
        self.keyfile = directory / "key.pem"
        issued.cert_chain_pems[0].write_to_path(str(self.certfile))
        issued.private_key_pem.write_to_path(str(self.keyfile))
        self.spki = spki_hash(issued.cert_chain_pems[0].bytes())

    def serve_args(self) -> tuple[str, ...]:
        return ("--ssl-certfile", str(self.certfile), "--ssl-keyfile", str(self.keyfile))


@pytest.fixture(scope="module")
def trusted(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return Certificate(tmp_path_factory.mktemp("trusted"))


@pytest.fixture(scope="module")
def browser(trusted: Certificate) -> Iterator[Browser]:
    """One Chromium for the module; it trusts ``trusted``'s key and no other unknown one."""
    with sync_playwright() as playwright:
        args = [*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={trusted.spki}"]
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context()
    ctx.set_default_timeout(WAIT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page_errors() -> Iterator[list[str]]:
    """JavaScript errors of every page opened with ``open_page``; the test fails on any."""
    errors: list[str] = []
    yield errors
    assert errors == []


def open_page(context: BrowserContext, url: str, errors: list[str]) -> Page:
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    expect(page.locator("#state")).to_have_attribute("data-state", "open")
    return page


def log_entry(page: Page, kind: str, text: str) -> Any:
    return page.locator(f'#log li[data-kind="{kind}"]', has_text=text)


def send(page: Page, text: str, *, binary: bool = False) -> None:
    page.fill("#message", text)
    page.click("#send-binary" if binary else "#send-text")


def test_echo_of_text_and_arraybuffer(context: BrowserContext, page_errors: list[str]) -> None:
    with ServeProcess("--port", "0") as server:
        page = open_page(context, f"http://127.0.0.1:{server.port}/", page_errors)
        expect(page.locator("#url")).to_have_text(f"ws://127.0.0.1:{server.port}/")
        send(page, "hello ✓")
        expect(log_entry(page, "message", 'text "hello ✓"')).to_have_count(1)
        send(page, "bin", binary=True)
        expect(log_entry(page, "message", "binary 3 bytes [62 69 6e]")).to_have_count(1)
        # The browser's WebSocket directly: every byte value survives as an ArrayBuffer.
        echoed = page.evaluate(
            """url => new Promise((resolve, reject) => {
                const ws = new WebSocket(url);
                ws.binaryType = "arraybuffer";
                const sent = Uint8Array.from({length: 256}, (_, i) => i);
                ws.onopen = () => ws.send(sent.buffer);
                ws.onmessage = (event) => {
                    resolve({isArrayBuffer: event.data instanceof ArrayBuffer, bytes: Array.from(new Uint8Array(event.data))});
                    ws.close();
                };
                ws.onerror = () => reject(new Error("WebSocket error"));
            })""",
            f"ws://127.0.0.1:{server.port}/raw",
        )
        assert echoed == {"isArrayBuffer": True, "bytes": list(range(256))}


def test_close_with_code_and_reason_seen_by_both_sides(context: BrowserContext, page_errors: list[str], tmp_path: Path) -> None:
    (tmp_path / "recorder.py").write_text(textwrap.dedent(RECORDER_APP))
    with ServeProcess("recorder:recorder", "--port", "0", cwd=str(tmp_path)) as server:
        # The browser closes: the server sees its code and reason, the browser its answer.
        page = open_page(context, f"http://127.0.0.1:{server.port}/", page_errors)
        page.fill("#close-code", "4000")
        page.fill("#close-reason", "bye from the browser")
        page.click("#close")
        assert server.next_line() == "server saw close 4000 'bye from the browser'"
        expect(log_entry(page, "close", "code 4000")).to_have_count(1)
        expect(page.locator("#state")).to_have_attribute("data-state", "closed")
        expect(log_entry(page, "retry", "")).to_have_count(0)  # a close the user asked for: no reconnection

        # The server closes: the browser sees its code and reason.
        page.click("#connect")
        expect(page.locator("#state")).to_have_attribute("data-state", "open")
        page.uncheck("#reconnect")
        send(page, "close 4001 bye from the server")
        expect(log_entry(page, "close", 'code 4001 reason "bye from the server" clean true')).to_have_count(1)
        assert server.next_line() == "server saw close 4001 'bye from the server'"


def test_two_pages_in_one_chat_room(context: BrowserContext, page_errors: list[str]) -> None:
    with ServeProcess("chat", "--port", "0") as server:
        base = f"http://127.0.0.1:{server.port}/"
        alice = open_page(context, base + "?room=lobby", page_errors)
        bob = open_page(context, base + "?room=lobby", page_errors)
        carol = open_page(context, base + "?room=kitchen", page_errors)
        expect(alice.locator("#url")).to_have_text(f"ws://127.0.0.1:{server.port}/lobby")
        send(alice, "hello from alice")
        send(bob, "bob", binary=True)
        for page in (alice, bob):
            expect(log_entry(page, "message", 'text "hello from alice"')).to_have_count(1)
            expect(log_entry(page, "message", "binary 3 bytes [62 6f 62]")).to_have_count(1)
        send(carol, "anyone?")
        expect(log_entry(carol, "message", 'text "anyone?"')).to_have_count(1)
        expect(carol.locator('#log li[data-kind="message"]')).to_have_count(1)  # nothing from the lobby
        expect(alice.locator('#log li[data-kind="message"]')).to_have_count(2)


def test_page_reconnects_after_the_server_restarts(context: BrowserContext, page_errors: list[str]) -> None:
    server = ServeProcess("--port", "0")
    port = server.port
    try:
        page = open_page(context, f"http://127.0.0.1:{port}/", page_errors)
        assert server.stop(signal.SIGTERM) == 0
        expect(log_entry(page, "close", "code 1001")).to_have_count(1)
        expect(log_entry(page, "retry", "attempt 1")).to_have_count(1)
        server = ServeProcess("--port", str(port))
        expect(page.locator("#state")).to_have_attribute("data-state", "open")
        expect(log_entry(page, "open", "")).to_have_count(2)
        send(page, "after the restart")
        expect(log_entry(page, "message", 'text "after the restart"')).to_have_count(1)
    finally:
        server.__exit__()


def test_wss_page_with_a_trusted_certificate(
    context: BrowserContext, page_errors: list[str], trusted: Certificate, tmp_path: Path
) -> None:
    with ServeProcess("--port", "0", *trusted.serve_args()) as server:
        page = open_page(context, f"https://127.0.0.1:{server.port}/", page_errors)
        expect(page.locator("#url")).to_have_text(f"wss://127.0.0.1:{server.port}/")
        send(page, "over TLS")
        expect(log_entry(page, "message", 'text "over TLS"')).to_have_count(1)
    # The trust is for that key only: another unknown certificate is refused.
    with ServeProcess("--port", "0", *Certificate(tmp_path).serve_args()) as server:
        page = context.new_page()
        with pytest.raises(Exception, match="ERR_CERT_AUTHORITY_INVALID"):
            page.goto(f"https://127.0.0.1:{server.port}/")
