"""The vendor clients' network layer (providers/transport.py), over real sockets and real TLS.

Every vendor is HTTPS, so most tests here read the emulator through TLS: a certificate
authority made for the session signs a certificate for `localhost`, the emulator serves with
it, and the client trusts only that authority. The rest of the provider tests drive the same
layer over plain TCP through the provider clients.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import hashlib
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from providers.catalogue import CF_TEXT_MODEL
from providers.emulators import Credentials, EmulatorServer
from providers.sse import SSEDecoder, aiter_events
from providers.transport import HIGH_WATER, ProtocolBackend, VendorTransport, body_chunks

pytestmark = pytest.mark.asyncio

LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=8, keepalive_expiry=10.0)


@dataclass(frozen=True)
class Authority:
    ca_file: Path
    server_context: ssl.SSLContext

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    """A CA, and a server certificate it signed for DNS name `localhost` only (not 127.0.0.1)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(_name("Test vendor CA"))
               .issuer_name(_name("Test vendor CA")).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=True, content_commitment=False, key_encipherment=False,
                   data_encipherment=False, key_agreement=False, key_cert_sign=True,
                   crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                              critical=False)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("localhost"))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    chain = folder / "server.pem"
    chain.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
                      + cert.public_bytes(serialization.Encoding.PEM))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(chain)
    return Authority(ca_file, server_context)


@pytest.fixture(scope="module")
def tls_emulator(authority: Authority) -> Iterator[EmulatorServer]:
    server = EmulatorServer(credentials=Credentials(), ssl_context=authority.server_context)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def vendor(tls_emulator: EmulatorServer) -> EmulatorServer:
    tls_emulator.reset()
    return tls_emulator


def localhost_url(server: EmulatorServer) -> str:
    return f"https://localhost:{server.port}"


def cloudflare_path(server: EmulatorServer) -> str:
    account = server.credentials.cloudflare_account_id
    return f"/client/v4/accounts/{account}/ai/run/{CF_TEXT_MODEL}"


def make_client(context: ssl.SSLContext, base_url: str, *, read: float = 5.0,
                write: float = 5.0) -> tuple[httpx.AsyncClient, VendorTransport]:
    transport = VendorTransport(ssl_context=context, limits=LIMITS)
    timeout = httpx.Timeout(connect=5.0, read=read, write=write, pool=5.0)
    return httpx.AsyncClient(base_url=base_url, transport=transport, timeout=timeout,
                             trust_env=False), transport


@pytest_asyncio.fixture
async def client(vendor: EmulatorServer, authority: Authority,
                 ) -> AsyncIterator[tuple[httpx.AsyncClient, VendorTransport]]:
    pair = make_client(authority.client_context(), localhost_url(vendor))
    yield pair
    await pair[0].aclose()


async def stream_answer(client: httpx.AsyncClient, server: EmulatorServer,
                        text: str = "Hello") -> tuple[str, int]:
    """(the answer's text, events read) from a streamed Cloudflare answer."""
    body = {"messages": [{"role": "user", "content": text}], "stream": True}
    headers = {"Authorization": f"Bearer {server.credentials.cloudflare_api_token}"}
    pieces: list[str] = []
    events = 0
    async with client.stream("POST", cloudflare_path(server), json=body,
                             headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        stream = aiter_events(response, SSEDecoder())
        async for event in stream:
            events += 1
            if event.data == "[DONE]":
                break
            pieces.append(_json(event.data).get("response", ""))
        await stream.finish()
    return "".join(pieces), events


def _json(data: str) -> dict[str, Any]:
    value = json.loads(data)
    assert isinstance(value, dict)
    return value


async def _serve_raw(handler: Any, tls: ssl.SSLContext | None = None,
                     ) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=tls)
    return server, server.sockets[0].getsockname()[1]


async def test_a_streamed_answer_arrives_whole_over_tls(
        client: tuple[httpx.AsyncClient, VendorTransport], vendor: EmulatorServer) -> None:
    http, transport = client
    vendor.script("cloudflare", "tokens n=200")
    text, events = await stream_answer(http, vendor)
    assert events > 200
    assert len(text.split()) >= 150
    # The pool's connections are ours: httpx builds its pool without asking for a backend.
    assert isinstance(transport.backend, ProtocolBackend)
    assert transport.backend.opened == 1


async def test_the_connection_is_tls_and_verified(
        client: tuple[httpx.AsyncClient, VendorTransport], vendor: EmulatorServer) -> None:
    http, _ = client
    body = {"messages": [{"role": "user", "content": "Hi"}], "stream": True}
    headers = {"Authorization": f"Bearer {vendor.credentials.cloudflare_api_token}"}
    async with http.stream("POST", cloudflare_path(vendor), json=body,
                           headers=headers) as response:
        tls = response.extensions["network_stream"].get_extra_info("ssl_object")
        assert tls is not None
        assert tls.version() in {"TLSv1.2", "TLSv1.3"}
        assert tls.getpeercert()["subjectAltName"] == (("DNS", "localhost"),)
        await response.aread()


async def test_sequential_answers_share_one_tls_connection(
        client: tuple[httpx.AsyncClient, VendorTransport], vendor: EmulatorServer) -> None:
    http, transport = client
    for _ in range(20):
        text, _events = await stream_answer(http, vendor)
        assert text
    assert vendor.connections("cloudflare") == 1
    assert transport.backend.opened == 1


async def test_it_refuses_a_certificate_for_another_name(
        vendor: EmulatorServer, authority: Authority) -> None:
    # The certificate names `localhost`; asking for 127.0.0.1 must fail the handshake.
    http, _ = make_client(authority.client_context(), f"https://127.0.0.1:{vendor.port}")
    async with http:
        with pytest.raises(httpx.ConnectError, match=r"(?i)certificate|hostname|match"):
            await http.get("/client/v4/")
    assert vendor.calls("cloudflare") == 0


async def test_it_refuses_a_certificate_from_an_unknown_authority(
        vendor: EmulatorServer) -> None:
    http, _ = make_client(ssl.create_default_context(), localhost_url(vendor))
    async with http:
        with pytest.raises(httpx.ConnectError, match=r"(?i)certificate"):
            await stream_answer(http, vendor)
    assert vendor.calls("cloudflare") == 0


async def test_it_refuses_a_vendor_that_does_not_speak_tls(authority: Authority) -> None:
    # A plain HTTP server answers the TLS hello with a 400 in clear text, as nginx does.
    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server, port = await _serve_raw(plain)
    async with server:
        http, _ = make_client(authority.client_context(), f"https://localhost:{port}")
        async with http:
            with pytest.raises(httpx.ConnectError):
                await http.get("/client/v4/")


async def test_a_quiet_vendor_times_out_between_events(
        vendor: EmulatorServer, authority: Authority) -> None:
    vendor.script("cloudflare", "stall-after n=3 seconds=5")
    http, _ = make_client(authority.client_context(), localhost_url(vendor), read=0.3)
    async with http:
        started = asyncio.get_running_loop().time()
        with pytest.raises(httpx.ReadTimeout):
            await stream_answer(http, vendor)
        assert asyncio.get_running_loop().time() - started < 3


async def test_a_slow_steady_stream_outlasts_its_read_timeout(
        vendor: EmulatorServer, authority: Authority) -> None:
    # The read timeout is per read, not per stream: 30 events 67 ms apart take two seconds,
    # four times the timeout, and none of the gaps comes near it.
    vendor.script("cloudflare", "tokens n=30 rate=15")
    http, _ = make_client(authority.client_context(), localhost_url(vendor), read=0.5)
    async with http:
        started = asyncio.get_running_loop().time()
        text, _events = await stream_answer(http, vendor)
        assert asyncio.get_running_loop().time() - started > 1.0
    assert len(text.split()) >= 20


async def test_a_dropped_connection_is_a_read_error_and_the_next_answer_reconnects(
        client: tuple[httpx.AsyncClient, VendorTransport], vendor: EmulatorServer) -> None:
    http, transport = client
    vendor.script("cloudflare", "drop-after n=5 rst=1")
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        await stream_answer(http, vendor)
    text, _events = await stream_answer(http, vendor)
    assert text
    assert transport.backend.opened == 2


async def test_a_cancelled_read_leaves_the_client_usable(
        client: tuple[httpx.AsyncClient, VendorTransport], vendor: EmulatorServer) -> None:
    http, _ = client
    vendor.script("cloudflare", "stall-after n=2 seconds=30")
    task = asyncio.ensure_future(stream_answer(http, vendor))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    text, _events = await stream_answer(http, vendor)
    assert text


async def test_one_large_event_arrives_whole_and_the_buffer_stays_bounded(
        client: tuple[httpx.AsyncClient, VendorTransport], vendor: EmulatorServer) -> None:
    # A 4 MB event read slowly: the protocol pauses the socket rather than buffer it all.
    http, _ = client
    vendor.script("cloudflare", "huge-event mb=4")
    body = {"messages": [{"role": "user", "content": "Hi"}], "stream": True}
    headers = {"Authorization": f"Bearer {vendor.credentials.cloudflare_api_token}"}
    most = waited = 0
    received = 0
    async with http.stream("POST", cloudflare_path(vendor), json=body,
                           headers=headers) as response:
        protocol = response.extensions["network_stream"]._protocol
        async for chunk in response.aiter_raw():
            if not received:
                await asyncio.sleep(0.5)  # fall behind: the vendor keeps sending meanwhile
                waited = protocol.buffered
            received += len(chunk)
            most = max(most, protocol.buffered)
    assert received > 4_000_000
    assert waited >= HIGH_WATER  # the protocol filled up to the mark while nobody read...
    # ...and paused there: one TLS record or socket read may land past it before the pause.
    assert most <= HIGH_WATER + 256 * 1024


# --- writing: a body the far side reads slowly, or not at all -------------------------------

@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_a_large_request_body_reaches_a_slow_reader_whole(
        scheme: str, authority: Authority) -> None:
    body = bytes(range(256)) * (40 * 1024)  # 10 MiB, past every socket buffer
    digest: list[str] = []

    async def slow_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        sha = hashlib.sha256()
        while length:
            piece = await reader.read(min(length, 65536))
            sha.update(piece)
            length -= len(piece)
            await asyncio.sleep(0.001)
        digest.append(sha.hexdigest())
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()

    tls = authority.server_context if scheme == "https" else None
    server, port = await _serve_raw(slow_reader, tls)
    async with server:
        http, _ = make_client(authority.client_context(), f"{scheme}://localhost:{port}")
        async with http:
            response = await http.post("/upload", content=body)
    assert response.status_code == 204
    assert digest == [hashlib.sha256(body).hexdigest()]


async def test_a_request_body_nobody_reads_times_out() -> None:
    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    server, port = await _serve_raw(never_reads)
    async with server:
        http, _ = make_client(ssl.create_default_context(), f"http://127.0.0.1:{port}",
                              write=0.3)
        async with http:
            with pytest.raises(httpx.WriteTimeout):
                await http.post("/upload", content=b"x" * (64 * 1024 * 1024))
        server.close()


async def test_an_unreachable_vendor_is_a_connect_error() -> None:
    server, port = await _serve_raw(lambda r, w: None)
    server.close()
    await server.wait_closed()
    http, _ = make_client(ssl.create_default_context(), f"http://127.0.0.1:{port}")
    async with http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/")



# --- a chunked body, decoded by `body_chunks` rather than h11 ----------------------------------

CHUNKED_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")


@dataclass
class ScriptedVendor:
    """Answers every request on a connection with `head` then `pieces`, written apart."""

    head: bytes
    pieces: list[bytes]
    gap: float = 0.005
    hang_up: bool = False  # close the connection after the pieces
    connections: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in request.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                for piece in [self.head, *self.pieces]:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(self.gap)
                if self.hang_up:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def read_body(http: httpx.AsyncClient) -> bytes:
    async with http.stream("POST", "/stream", json={"stream": True}) as response:
        assert response.status_code == 200
        return b"".join([chunk async for chunk in body_chunks(response)])


def _bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


BODY = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
FRAMINGS = {
    "a chunk per write": [b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"],
    "every byte apart": _bytewise(BODY),
    "extensions, hex case, leading zeros, spaces, a trailer":
        [b"00A;name=value\r\n0123456789\r\n", b"1 \r\n!\r\n", b"0\r\nX-Done: yes\r\n\r\n"],
    "one write for the whole body": [BODY],
}
GZIPPED = gzip.compress(b"hello world", mtime=0)
EXPECTED = {"a chunk per write": b"hello world", "every byte apart": b"hello world",
            "extensions, hex case, leading zeros, spaces, a trailer": b"0123456789!",
            "one write for the whole body": b"hello world"}


@pytest.mark.parametrize("with_head", [False, True], ids=["after the head", "with the head"])
@pytest.mark.parametrize("framing", list(FRAMINGS))
async def test_a_chunked_body_is_decoded_here_and_the_connection_reused(
        framing: str, with_head: bool) -> None:
    pieces = list(FRAMINGS[framing])
    head = CHUNKED_HEAD
    if with_head:  # the body's first bytes in the headers' own write
        head, pieces = head + pieces[0], pieces[1:]
    vendor = ScriptedVendor(head, pieces, gap=0.001)
    server, port = await _serve_raw(vendor.serve)
    async with server:
        http, transport = make_client(ssl.create_default_context(), f"http://127.0.0.1:{port}")
        async with http:
            assert await read_body(http) == EXPECTED[framing]
            assert await read_body(http) == EXPECTED[framing]
        server.close()
    assert transport.backend.chunked_bodies == 2  # h11 read neither body
    assert transport.backend.opened == 1  # ...and ended both: the connection went back
    assert vendor.connections == 1


@pytest.mark.parametrize("pieces", [
    [b"zz\r\nhello\r\n"],  # not a size
    [b"5\r\nhelloXY0\r\n\r\n"],  # no CRLF after the data
    [b"5;\nx\r\nhello\r\n"],  # a bare LF in the size line
    [b"123456789012345678901\r\n"],  # 21 hex digits
], ids=["size", "footer", "bare LF", "too long a size"])
async def test_a_malformed_chunk_is_a_protocol_error_and_the_connection_is_dropped(
        pieces: list[bytes]) -> None:
    vendor = ScriptedVendor(CHUNKED_HEAD, pieces)
    server, port = await _serve_raw(vendor.serve)
    async with server:
        http, transport = make_client(ssl.create_default_context(), f"http://127.0.0.1:{port}")
        async with http:
            for _ in range(2):
                with pytest.raises(httpx.RemoteProtocolError):
                    await read_body(http)
        server.close()
    assert transport.backend.opened == 2  # a connection out of step is never reused


async def test_a_vendor_that_hangs_up_mid_chunk_is_a_protocol_error() -> None:
    vendor = ScriptedVendor(CHUNKED_HEAD, [b"5\r\nhel"], hang_up=True)
    server, port = await _serve_raw(vendor.serve)
    async with server:
        http, _ = make_client(ssl.create_default_context(), f"http://127.0.0.1:{port}")
        async with http:
            with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
                await read_body(http)
        server.close()


async def test_a_chunked_body_that_goes_quiet_times_out() -> None:
    async def goes_quiet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.read(1024)
        writer.write(CHUNKED_HEAD)
        await asyncio.sleep(0.01)
        writer.write(b"5\r\nhello\r\n")
        await asyncio.sleep(5)
        writer.close()

    server, port = await _serve_raw(goes_quiet)
    async with server:
        http, transport = make_client(ssl.create_default_context(),
                                      f"http://127.0.0.1:{port}", read=0.3)
        async with http:
            received: list[bytes] = []
            with pytest.raises(httpx.ReadTimeout):
                async with http.stream("POST", "/stream", json={}) as response:
                    async for chunk in body_chunks(response):
                        received.append(chunk)
        server.close()
    assert received == [b"hello"]
    assert transport.backend.chunked_bodies == 1


@pytest.mark.parametrize("head, pieces", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", [b"hello", b" world"]),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n",
     [b"%x\r\n%s\r\n" % (len(GZIPPED), GZIPPED), b"0\r\n\r\n"]),
], ids=["length", "gzip"])
async def test_other_bodies_are_read_by_httpx(head: bytes, pieces: list[bytes]) -> None:
    vendor = ScriptedVendor(head, pieces)
    server, port = await _serve_raw(vendor.serve)
    async with server:
        http, transport = make_client(ssl.create_default_context(), f"http://127.0.0.1:{port}")
        async with http:
            assert await read_body(http) == b"hello world"
        server.close()
    assert transport.backend.chunked_bodies == 0


async def test_answers_over_tls_are_decoded_here_on_one_connection(
        client: tuple[httpx.AsyncClient, VendorTransport], vendor: EmulatorServer) -> None:
    http, transport = client
    for _ in range(5):
        text, _events = await stream_answer(http, vendor)
        assert text.startswith("Echo: Hello")
    assert transport.backend.chunked_bodies == 5
    assert transport.backend.opened == 1
