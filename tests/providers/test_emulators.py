"""The provider emulators, driven with plain httpx and raw sockets (not our clients)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from providers.emulators import Credentials, EmulatorServer, Fault

CREDS = Credentials()
ACCOUNT = CREDS.cloudflare_account_id
TEXT_MODEL = "@cf/meta/llama-3.2-3b-instruct"
VISION_MODEL = "@cf/meta/llama-3.2-11b-vision-instruct"
DS_MODEL = "llama3.2-90b-vision-instruct"
CF_AUTH = {"Authorization": f"Bearer {CREDS.cloudflare_api_token}"}
DS_AUTH = {"Authorization": f"Bearer {CREDS.dashscope_api_key}"}
DS_STREAM = {**DS_AUTH, "X-DashScope-SSE": "enable"}
DS_PATH = "/services/aigc/multimodal-generation/generation"
QF_CHAT = "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/llama_3_70b"
ROOT = Path(__file__).resolve().parents[2]
# One client for the module: creating an httpx.Client per call costs an SSL context each time.
HTTP = httpx.Client(timeout=10)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


# --- fixtures and helpers -----------------------------------------------------------------
@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorServer]:
    with EmulatorServer(timestamps=False) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh(emu: EmulatorServer) -> None:
    emu.reset()


@pytest.fixture(scope="module", autouse=True)
def _close_client() -> Iterator[None]:
    yield
    HTTP.close()


class _ImageHandler(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, str, bytes]] = {
        "/cat.png": (200, "image/png", PNG),
        "/page.html": (200, "text/html", b"<html></html>"),
        "/missing.png": (404, "text/plain", b"nope"),
    }

    def do_GET(self) -> None:
        if self.path == "/moved.png":
            self.send_response(302)
            self.send_header("Location", "/cat.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status, content_type, body = self.routes.get(self.path, (404, "text/plain", b""))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def images() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def cf_url(emu: EmulatorServer, model: str = TEXT_MODEL, account: str = ACCOUNT) -> str:
    return f"{emu.base_urls['cloudflare']}/accounts/{account}/ai/run/{model}"


def cf_path(model: str = TEXT_MODEL) -> str:
    return f"/client/v4/accounts/{ACCOUNT}/ai/run/{model}"


def ds_body(text: str, image: str | None = "data:image/png;base64,AAAA") -> dict[str, Any]:
    content: list[dict[str, str]] = [{"image": image}] if image else []
    content.append({"text": text})
    return {"model": DS_MODEL, "input": {"messages": [{"role": "user", "content": content}]}}


def qf_token(emu: EmulatorServer) -> str:
    params = {
        "grant_type": "client_credentials",
        "client_id": CREDS.qianfan_ak,
        "client_secret": CREDS.qianfan_sk,
    }
    reply = HTTP.post(f"{emu.base_urls['qianfan']}/oauth/2.0/token", params=params)
    return str(reply.json()["access_token"])


def qf_post(emu: EmulatorServer, body: dict[str, Any], token: str | None = None) -> httpx.Response:
    token = token if token is not None else qf_token(emu)
    url = f"{emu.base_urls['qianfan']}{QF_CHAT}"
    return HTTP.post(url, params={"access_token": token}, json=body)


def user(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def events(raw: bytes) -> list[bytes]:
    return [e for e in raw.split(b"\n\n") if e]


def data_json(event: bytes) -> Any:
    line = next(x for x in event.split(b"\n") if x.startswith(b"data:"))
    return json.loads(line[5:])


def ds_frames(raw: bytes) -> list[dict[str, Any]]:
    """Each DashScope event as {"id", "event", "status", "data"}."""
    frames = []
    for event in events(raw):
        fields: dict[str, Any] = {}
        for line in event.split(b"\n"):
            if line.startswith(b":HTTP_STATUS/"):
                fields["status"] = int(line.split(b"/")[1])
            else:
                name, _, value = line.partition(b":")
                fields[name.decode()] = value.decode()
        fields["data"] = json.loads(fields["data"])
        frames.append(fields)
    return frames


async def raw_exchange(
    port: int, path: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[int, dict[str, str], list[bytes], bool]:
    """POST over a bare socket; returns status, headers, HTTP chunk payloads (one per server
    write) and whether the chunked body ended properly."""
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = [f"POST {path} HTTP/1.1", "Host: emu", f"Content-Length: {len(payload)}"]
    head += [f"{k}: {v}" for k, v in {"Content-Type": "application/json", **headers}.items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
    await writer.drain()
    status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
    got = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines if x)}
    chunks: list[bytes] = []
    complete = False
    try:
        if got.get("transfer-encoding") == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                if size == 0:
                    await reader.readexactly(2)
                    complete = True
                    break
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
        elif "content-length" in got:  # the connection may stay open: read what was announced
            chunks.append(await reader.readexactly(int(got["content-length"])))
            complete = True
        else:
            chunks.append(await reader.read())
            complete = True
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()
    return int(status_line.split()[1]), got, chunks, complete


def cf_stream(emu: EmulatorServer, prompt: str, **extra: Any) -> httpx.Response:
    body = {"prompt": prompt, "stream": True, **extra}
    return HTTP.post(cf_url(emu), json=body, headers=CF_AUTH)


# --- health, control, magic -----------------------------------------------------------------
def test_it_answers_health_and_reports_base_urls(emu: EmulatorServer) -> None:
    reply = HTTP.get(f"http://127.0.0.1:{emu.port}/_emulator/health")
    assert reply.status_code == 200
    assert emu.base_urls == {
        "cloudflare": f"http://127.0.0.1:{emu.port}/client/v4",
        "dashscope": f"http://127.0.0.1:{emu.port}/api/v1",
        "qianfan": f"http://127.0.0.1:{emu.port}",
    }


def test_it_scripts_faults_over_http_and_masks_secrets_in_recordings(emu: EmulatorServer) -> None:
    control = f"http://127.0.0.1:{emu.port}/_emulator"
    reply = HTTP.post(f"{control}/script", json={"vendor": "cloudflare", "fault": "429-before"})
    assert reply.status_code == 200
    assert HTTP.post(cf_url(emu), json={"prompt": "x"}, headers=CF_AUTH).status_code == 429
    assert HTTP.post(cf_url(emu), json={"prompt": "x"}, headers=CF_AUTH).status_code == 200
    token = qf_token(emu)
    qf_post(emu, user("hi"), token)
    text = HTTP.get(f"{control}/requests").text
    for secret in (CREDS.cloudflare_api_token, token, CREDS.qianfan_sk, CREDS.qianfan_ak):
        assert secret not in text
    recorded = HTTP.get(f"{control}/requests").json()
    assert recorded["calls"] == {"cloudflare": 2, "dashscope": 0, "qianfan": 1}
    assert recorded["requests"][0]["headers"]["authorization"] == "Bearer ****0001"
    assert recorded["requests"][-1]["query"]["access_token"] == "****" + token[-4:]
    assert HTTP.post(f"{control}/reset").status_code == 200
    assert emu.requests == []


def test_it_rejects_a_bad_script_request(emu: EmulatorServer) -> None:
    control = f"http://127.0.0.1:{emu.port}/_emulator/script"
    assert HTTP.post(control, json={"vendor": "cloudflare", "fault": "nope"}).status_code == 400
    bad = {"vendor": "qianfan", "fault": "dashscope-200-error"}
    assert HTTP.post(control, json=bad).status_code == 400
    with pytest.raises(ValueError):
        emu.script("cloudflare", Fault("dashscope-error-sse-as-json"))
    with pytest.raises(ValueError):
        Fault("error-after", m=3)


def test_it_composes_a_fault_list_from_the_control_endpoint(emu: EmulatorServer) -> None:
    faults = [{"kind": "crlf"}, {"kind": "error-after", "n": 1}]
    body = {"vendor": "qianfan", "faults": faults, "times": 1}
    HTTP.post(f"http://127.0.0.1:{emu.port}/_emulator/script", json=body)
    raw = qf_post(emu, {**user("hi"), "stream": True}).content
    assert raw.count(b"\r\n\r\n") == 2
    assert raw.endswith(b'{"error_code":336000,"error_msg":"Internal error"}\r\n\r\n')


def test_it_runs_scripts_in_order_for_the_given_number_of_calls(emu: EmulatorServer) -> None:
    emu.script("cloudflare", Fault("500-before"), times=2)
    emu.script("cloudflare", "quota-before code=3036")
    statuses = [
        HTTP.post(cf_url(emu), json={"prompt": "x"}, headers=CF_AUTH).status_code for _ in range(4)
    ]
    assert statuses == [500, 500, 429, 200]
    assert emu.calls("cloudflare") == 4
    assert emu.requests[2].faults == ["quota-before"]


def test_it_applies_magic_from_the_prompt_and_keeps_it_out_of_the_echo(
    emu: EmulatorServer,
) -> None:
    raw = cf_stream(emu, "tell me [[emu:tokens n=20]] [[emu:error-after n=2]]").content
    got = events(raw)
    assert len(got) == 3
    assert [data_json(e)["response"] for e in got[:2]] == ["Echo:", " tell"]
    assert data_json(got[2])["errors"][0]["code"] == 3040
    full = HTTP.post(cf_url(emu), json={"prompt": "hi [[emu:tokens n=30]]"}, headers=CF_AUTH)
    answer = full.json()["result"]["response"]
    assert "[[emu" not in answer
    assert emu.requests[-1].faults == ["tokens"]


def test_it_records_unparseable_magic_instead_of_failing(emu: EmulatorServer) -> None:
    reply = HTTP.post(cf_url(emu), json={"prompt": "[[emu:eror-after]]"}, headers=CF_AUTH)
    assert reply.status_code == 200
    assert emu.requests[-1].faults == ["invalid:eror-after"]


# --- Cloudflare -----------------------------------------------------------------------------
def test_cloudflare_streams_bare_events_then_usage_then_done(emu: EmulatorServer) -> None:
    reply = cf_stream(emu, "what is a llama?")
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "text/event-stream"
    assert reply.headers["transfer-encoding"] == "chunked"
    got = events(reply.content)
    assert all(e.startswith(b"data: ") for e in got)
    assert got[-1] == b"data: [DONE]"
    usage = data_json(got[-2])
    assert usage == {
        "response": "",
        "usage": {"prompt_tokens": 4, "completion_tokens": 12, "total_tokens": 16},
    }
    tokens = [data_json(e) for e in got[:-2]]
    assert "".join(t["response"] for t in tokens) == "Echo: what is a llama? \u2014 你好 🦙 **ok**"
    assert got[0] == b'data: {"response":"Echo:","p":"a"}'
    padded = [t for t in tokens if "p" in t]
    assert 0 < len(padded) < len(tokens)


def test_cloudflare_wraps_a_non_stream_answer_in_the_envelope(emu: EmulatorServer) -> None:
    body = {
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    }
    reply = HTTP.post(cf_url(emu), json=body, headers=CF_AUTH)
    assert reply.headers["content-type"] == "application/json"
    data = reply.json()
    assert data["success"] is True and data["errors"] == [] and data["messages"] == []
    assert data["result"]["response"].startswith("Echo: hi \u2014 你好 🦙 **ok**")
    assert data["result"]["usage"]["completion_tokens"] == 12


def test_cloudflare_rejects_a_bad_token_and_a_foreign_account(emu: EmulatorServer) -> None:
    bad = HTTP.post(cf_url(emu), json={"prompt": "x"}, headers={"Authorization": "Bearer no"})
    assert bad.status_code == 401
    assert bad.json()["errors"] == [{"code": 10000, "message": "Authentication error"}]
    other = cf_url(emu, account="f" * 32)
    foreign = HTTP.post(other, json={"prompt": "x", "stream": True}, headers=CF_AUTH)
    # Observed for an account id the token does not own: "Could not route to ..." (7003).
    assert foreign.status_code == 400
    assert foreign.json()["success"] is False
    assert foreign.json()["errors"][0]["code"] == 7003
    assert "Could not route" in foreign.json()["errors"][0]["message"]


def test_cloudflare_requires_exactly_one_of_prompt_and_messages(emu: EmulatorServer) -> None:
    both = {"prompt": "x", **user("y")}
    for body in (both, {"stream": True}):
        reply = HTTP.post(cf_url(emu), json=body, headers=CF_AUTH)
        assert reply.status_code == 400
        assert reply.json()["errors"][0]["code"] == 5006


def test_cloudflare_answers_5007_for_an_unknown_model(emu: EmulatorServer) -> None:
    reply = HTTP.post(cf_url(emu, "@cf/meta/nope"), json={"prompt": "x"}, headers=CF_AUTH)
    assert reply.status_code == 400
    assert reply.json()["errors"][0] == {
        "code": 5007,
        "message": "No such model @cf/meta/nope or task",
    }


def test_cloudflare_validates_sampling_ranges(emu: EmulatorServer) -> None:
    reply = HTTP.post(cf_url(emu), json={"prompt": "x", "temperature": 9}, headers=CF_AUTH)
    assert reply.status_code == 400
    assert reply.json()["errors"][0]["code"] == 5006


def test_cloudflare_gates_the_vision_model_until_agree(emu: EmulatorServer) -> None:
    url = cf_url(emu, VISION_MODEL)
    image = list(PNG[:50])
    gated = HTTP.post(url, json={"prompt": "what is this?", "image": image}, headers=CF_AUTH)
    assert gated.status_code == 403
    error = gated.json()["errors"][0]
    assert error["code"] == 5016
    assert error["message"].startswith(
        "5016: Prior to using this model, you must submit the prompt 'agree'."
    )
    agreed = HTTP.post(url, json={"prompt": "agree"}, headers=CF_AUTH)
    assert agreed.status_code == 200
    assert agreed.json()["result"]["response"] == (
        "Thank you for agreeing to this model's terms. You may now use the model."
    )
    ok = HTTP.post(url, json={"prompt": "what is this?", "image": image}, headers=CF_AUTH)
    assert ok.status_code == 200
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    body = {"messages": [{"role": "user", "content": "what?"}], "image": data_url}
    assert HTTP.post(url, json=body, headers=CF_AUTH).status_code == 200
    assert [r.image_bytes for r in emu.requests] == [[50], [], [50], [len(PNG)]]
    emu.reset()
    assert HTTP.post(url, json={"prompt": "again"}, headers=CF_AUTH).status_code == 403


def test_cloudflare_rejects_image_bytes_outside_0_to_255(emu: EmulatorServer) -> None:
    emu.set_cloudflare_licence(True)
    body = {"prompt": "x", "image": [1, 2, 256]}
    reply = HTTP.post(cf_url(emu, VISION_MODEL), json=body, headers=CF_AUTH)
    assert reply.status_code == 400
    assert reply.json()["errors"][0]["code"] == 5006
    bad_b64 = {"prompt": "x", "image": "data:image/png;base64,@@@"}
    reply = HTTP.post(cf_url(emu, VISION_MODEL), json=bad_b64, headers=CF_AUTH)
    assert reply.json()["errors"][0]["code"] == 5004


@pytest.mark.parametrize(
    ("spec", "status", "code"),
    [
        ("429-before", 429, 3040),
        ("429-before code=3036", 429, 3036),
        ("quota-before", 429, 4006),
        ("500-before", 500, 3043),
        ("auth-before", 401, 10000),
        ("auth-before status=403", 403, 10000),
    ],
)
def test_cloudflare_before_faults_use_the_envelope(
    emu: EmulatorServer, spec: str, status: int, code: int
) -> None:
    emu.script("cloudflare", spec)
    reply = cf_stream(emu, "x")
    assert reply.status_code == status
    assert reply.headers["content-type"] == "application/json"
    assert reply.json()["errors"][0]["code"] == code


def test_cloudflare_429_carries_retry_after_when_scripted(emu: EmulatorServer) -> None:
    emu.script("cloudflare", Fault("429-before", retry_after=7))
    reply = HTTP.post(cf_url(emu), json={"prompt": "x"}, headers=CF_AUTH)
    assert reply.headers["retry-after"] == "7"
    assert (
        reply.json()["errors"][0]["message"] == "Capacity temporarily exceeded, please try again."
    )


def test_cloudflare_sends_an_in_band_error_after_n_events(emu: EmulatorServer) -> None:
    emu.script("cloudflare", Fault("error-after", n=3))
    got = events(cf_stream(emu, "x").content)
    assert len(got) == 4
    message = "Capacity temporarily exceeded, please try again."
    assert got[-1] == b'data: {"errors":[{"code":3040,"message":"%b"}]}' % message.encode()


def test_cloudflare_content_filter_is_an_in_band_3030_error(emu: EmulatorServer) -> None:
    emu.script("cloudflare", Fault("content-filter-after", n=2))
    got = events(cf_stream(emu, "x").content)
    assert len(got) == 3
    assert data_json(got[-1])["errors"][0]["code"] == 3030


def test_cloudflare_no_terminator_ends_cleanly_without_done(emu: EmulatorServer) -> None:
    emu.script("cloudflare", Fault("no-terminator"))
    got = events(cf_stream(emu, "x").content)
    assert len(got) == 12
    assert all("response" in data_json(e) and "usage" not in data_json(e) for e in got)


def test_cloudflare_unknown_fields_add_keys_and_an_unknown_event(emu: EmulatorServer) -> None:
    emu.script("cloudflare", "unknown-fields")
    got = events(cf_stream(emu, "x").content)
    assert got[0].startswith(b"event: emu-metadata\ndata: ")
    assert "emu_unknown" in data_json(got[1])
    assert data_json(got[-2])["usage"]["neurons"] == 1.25


def test_cloudflare_html_fault_puts_markup_in_the_answer(emu: EmulatorServer) -> None:
    emu.script("cloudflare", "html")
    answer = HTTP.post(cf_url(emu), json={"prompt": "x"}, headers=CF_AUTH).json()
    assert '<script>alert("emu")</script>' in answer["result"]["response"]


def test_cloudflare_honours_an_explicit_max_tokens(emu: EmulatorServer) -> None:
    got = events(cf_stream(emu, "x", max_tokens=4).content)
    assert len(got) == 4 + 2


# --- wire-level faults (raw sockets: one HTTP chunk per server write) ------------------------
@pytest.mark.asyncio
async def test_plain_streams_write_one_event_per_chunk(emu: EmulatorServer) -> None:
    status, _, chunks, complete = await raw_exchange(
        emu.port, cf_path(), {"prompt": "hi", "stream": True}, CF_AUTH
    )
    assert status == 200 and complete
    assert all(c.endswith(b"\n\n") and c.count(b"\n\n") == 1 for c in chunks)
    assert chunks[-1] == b"data: [DONE]\n\n"


@pytest.mark.asyncio
async def test_utf8_split_cuts_writes_inside_multibyte_characters(emu: EmulatorServer) -> None:
    emu.script("cloudflare", "utf8-split")
    _, _, chunks, complete = await raw_exchange(
        emu.port, cf_path(), {"prompt": "hi", "stream": True}, CF_AUTH
    )
    assert complete
    undecodable = 0
    for chunk in chunks:
        try:
            chunk.decode()
        except UnicodeDecodeError:
            undecodable += 1
    assert undecodable >= 4  # 你, 好, 🦙 and more, each split
    text = "".join(data_json(e)["response"] for e in events(b"".join(chunks))[:-2])
    assert "你好 🦙" in text
    assert "\ufffd" not in text


@pytest.mark.asyncio
async def test_byte_by_byte_writes_single_bytes(emu: EmulatorServer) -> None:
    emu.script("qianfan", Fault("byte-by-byte"))
    token = qf_token(emu)
    _, _, chunks, complete = await raw_exchange(
        emu.port,
        f"{QF_CHAT}?access_token={token}",
        {**user("x [[emu:tokens n=2]]"), "stream": True},
        {},
    )
    assert complete
    assert {len(c) for c in chunks} == {1}
    assert len(events(b"".join(chunks))) == 3


@pytest.mark.asyncio
async def test_crlf_uses_crlf_and_splits_between_cr_and_lf(emu: EmulatorServer) -> None:
    emu_ds = EmulatorServer(timestamps=False, dashscope_accept_data_uri=True)
    async with emu_ds:
        emu_ds.script("dashscope", "crlf")
        _, _, chunks, _ = await raw_exchange(
            emu_ds.port, "/api/v1" + DS_PATH, ds_body("hi"), DS_STREAM
        )
    raw = b"".join(chunks)
    assert raw.startswith(b"id:1\r\nevent:result\r\n:HTTP_STATUS/200\r\ndata:{")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert sum(1 for c in chunks if c.endswith(b"\r")) == len(events(raw.replace(b"\r\n", b"\n")))


@pytest.mark.asyncio
async def test_cr_fault_uses_bare_cr_line_endings(emu: EmulatorServer) -> None:
    emu.script("cloudflare", "cr")
    _, _, chunks, _ = await raw_exchange(
        emu.port, cf_path(), {"prompt": "x", "stream": True}, CF_AUTH
    )
    raw = b"".join(chunks)
    assert b"\n" not in raw
    assert raw.endswith(b"data: [DONE]\r\r")


@pytest.mark.asyncio
async def test_multi_event_chunk_packs_several_events_per_write(emu: EmulatorServer) -> None:
    emu.script("cloudflare", Fault("multi-event-chunk", k=4))
    _, _, chunks, _ = await raw_exchange(
        emu.port, cf_path(), {"prompt": "x", "stream": True}, CF_AUTH
    )
    assert [c.count(b"\n\n") for c in chunks] == [4, 4, 4, 2]


@pytest.mark.asyncio
async def test_comments_interleave_keep_alive_lines(emu: EmulatorServer) -> None:
    emu.script("cloudflare", ["comments", "no-space"])
    _, _, chunks, _ = await raw_exchange(
        emu.port, cf_path(), {"prompt": "x", "stream": True}, CF_AUTH
    )
    got = events(b"".join(chunks))
    assert got[0::2] == [b": keep-alive"] * 14
    assert got[1].startswith(b'data:{"response":')


@pytest.mark.asyncio
async def test_drop_after_closes_without_the_final_chunk(emu: EmulatorServer) -> None:
    async with EmulatorServer(timestamps=False, dashscope_accept_data_uri=True) as ds:
        ds.script("dashscope", Fault("drop-after", n=2))
        status, _, chunks, complete = await raw_exchange(
            ds.port, "/api/v1" + DS_PATH, ds_body("hi"), DS_STREAM
        )
        assert status == 200 and not complete
        assert len(events(b"".join(chunks))) == 2
        await _until(lambda: ds.requests[-1].outcome == "dropped")


@pytest.mark.asyncio
async def test_close_delimited_streams_end_at_eof(emu: EmulatorServer) -> None:
    emu.script("cloudflare", "close-delimited")
    _, headers, chunks, _ = await raw_exchange(
        emu.port, cf_path(), {"prompt": "x", "stream": True}, CF_AUTH
    )
    assert "transfer-encoding" not in headers and "content-length" not in headers
    assert chunks[0].endswith(b"data: [DONE]\n\n")


# --- faults seen through httpx --------------------------------------------------------------
def test_drop_after_surfaces_as_an_incomplete_body_in_httpx(emu: EmulatorServer) -> None:
    emu.script("cloudflare", Fault("drop-after", n=3))
    received = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        HTTP.stream(
            "POST", cf_url(emu), json={"prompt": "x", "stream": True}, headers=CF_AUTH
        ) as r,
    ):
        for chunk in r.iter_raw():
            received += chunk
    assert len(events(received)) == 3


def test_drop_after_with_rst_resets_the_connection(emu: EmulatorServer) -> None:
    emu.script("cloudflare", Fault("drop-after", n=2, rst=1))
    with (
        pytest.raises(httpx.ReadError),
        HTTP.stream(
            "POST", cf_url(emu), json={"prompt": "x", "stream": True}, headers=CF_AUTH
        ) as r,
    ):
        r.read()


def test_drop_after_cuts_a_non_stream_body_but_never_an_error_reply(emu: EmulatorServer) -> None:
    emu.script("cloudflare", "drop-after")
    with pytest.raises(httpx.RemoteProtocolError):
        HTTP.post(cf_url(emu), json={"prompt": "x"}, headers=CF_AUTH)
    emu.script("cloudflare", ["drop-after", "429-before"])
    assert HTTP.post(cf_url(emu), json={"prompt": "x"}, headers=CF_AUTH).status_code == 429
    # The server records the outcome just after the last byte leaves: give it a moment.
    deadline = time.monotonic() + 5
    while any(r.outcome == "pending" for r in emu.requests) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [r.outcome for r in emu.requests] == ["dropped", "complete"]


def test_stall_after_goes_silent_with_the_socket_open(emu: EmulatorServer) -> None:
    emu.script("qianfan", Fault("stall-after", n=2, seconds=1))
    token = qf_token(emu)
    lines: list[str] = []
    url = f"{emu.base_urls['qianfan']}{QF_CHAT}"
    timeout = httpx.Timeout(5, read=0.3)
    with (
        pytest.raises(httpx.ReadTimeout),
        HTTP.stream(
            "POST",
            url,
            params={"access_token": token},
            json={**user("x"), "stream": True},
            timeout=timeout,
        ) as r,
    ):
        for line in r.iter_lines():
            lines.append(line)
    assert len([x for x in lines if x.startswith("data: ")]) == 2


@pytest.mark.asyncio
async def test_it_notices_when_the_client_goes_away(emu: EmulatorServer) -> None:
    body = {"prompt": "x [[emu:tokens n=200 rate=20]]", "stream": True}
    async with (
        httpx.AsyncClient() as client,
        client.stream("POST", cf_url(emu), json=body, headers=CF_AUTH) as reply,
    ):
        async for _ in reply.aiter_raw():
            break
    await _until(lambda: emu.requests[-1].outcome == "client-closed")


def test_huge_event_sends_one_multi_megabyte_event(emu: EmulatorServer) -> None:
    emu.script("cloudflare", "huge-event")
    got = events(cf_stream(emu, "x").content)
    sizes = sorted(len(e) for e in got)
    assert sizes[-1] > 5 * 1024 * 1024
    assert sizes[-2] < 1000


def test_timestamps_mark_each_token_event_with_its_send_time() -> None:
    with EmulatorServer() as server:
        before = time.monotonic()
        raw = cf_stream(server, "x [[emu:tokens n=5 rate=200]]").content
        stamps = [data_json(e)["ts"] for e in events(raw)[:-2]]
    assert len(stamps) == 5
    assert stamps == sorted(stamps)
    assert stamps[0] >= before


# --- DashScope ------------------------------------------------------------------------------
@pytest.fixture
def ds() -> Iterator[EmulatorServer]:
    with EmulatorServer(timestamps=False, dashscope_accept_data_uri=True) as server:
        yield server


def ds_post(
    server: EmulatorServer, body: Any, headers: dict[str, str] = DS_STREAM
) -> httpx.Response:
    return HTTP.post(server.base_urls["dashscope"] + DS_PATH, json=body, headers=headers)


def test_dashscope_streams_cumulative_four_line_events(ds: EmulatorServer) -> None:
    reply = ds_post(ds, ds_body("what is a llama?"))
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "text/event-stream;charset=UTF-8"
    assert reply.content.startswith(b'id:1\nevent:result\n:HTTP_STATUS/200\ndata:{"output":')
    frames = ds_frames(reply.content)
    texts = [f["data"]["output"]["choices"][0]["message"]["content"][0]["text"] for f in frames]
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))
    assert texts[-1] == texts[-2] == "Echo: what is a llama? \u2014 你好 🦙 **ok**"
    reasons = [f["data"]["output"]["choices"][0]["finish_reason"] for f in frames]
    assert reasons == ["null"] * 12 + ["stop"]
    assert [f["id"] for f in frames] == [str(i) for i in range(1, 14)]
    assert len({f["data"]["request_id"] for f in frames}) == 1
    assert [f["data"]["usage"]["output_tokens"] for f in frames] == [*range(1, 13), 12]
    assert reply.headers["x-request-id"] == frames[0]["data"]["request_id"]
    assert b"[DONE]" not in reply.content


def test_dashscope_answers_non_stream_requests_with_json(ds: EmulatorServer) -> None:
    reply = ds_post(ds, ds_body("hi"), DS_AUTH)
    data = reply.json()
    choice = data["output"]["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"][0]["text"].startswith("Echo: hi")
    assert set(data) == {"output", "usage", "request_id"}


def test_dashscope_rejects_missing_and_wrong_keys(ds: EmulatorServer) -> None:
    missing = ds_post(ds, ds_body("hi"), {"X-DashScope-SSE": "enable"})
    assert missing.status_code == 401
    assert missing.json()["code"] == "InvalidApiKey"
    wrong = ds_post(ds, ds_body("hi"), {"Authorization": "Bearer sk-nope"})
    assert (wrong.status_code, wrong.json()["code"]) == (401, "InvalidApiKey")
    assert wrong.json()["request_id"]


def test_dashscope_requires_an_image_in_the_request(ds: EmulatorServer) -> None:
    reply = ds_post(ds, ds_body("hi", image=None))
    assert reply.status_code == 400
    assert reply.json()["code"] == "InvalidParameter"


def _turns(*images: str | None) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    for number, image in enumerate(images):
        if messages:
            messages.append({"role": "assistant", "content": [{"text": "ok"}]})
        content: list[dict[str, str]] = [{"image": image}] if image else []
        messages.append({"role": "user", "content": [*content, {"text": f"turn {number}"}]})
    return {"model": DS_MODEL, "input": {"messages": messages}}


def test_dashscope_takes_text_only_follow_ups_as_the_vendors_example_does(
    ds: EmulatorServer,
) -> None:
    reply = ds_post(ds, _turns("data:image/png;base64,AAAA", None, None))
    assert reply.status_code == 200, reply.text


def test_dashscope_refuses_two_images_unless_the_switch_allows_them(ds: EmulatorServer) -> None:
    two = _turns("data:image/png;base64,AAAA", "data:image/png;base64,AAAA")
    refused = ds_post(ds, two)
    assert refused.status_code == 400 and refused.json()["code"] == "InvalidParameter"
    assert "one image" in refused.json()["message"]
    ds.options.dashscope_multi_image = True  # the reading the FAQ argues against
    try:
        assert ds_post(ds, two).status_code == 200
    finally:
        ds.options.dashscope_multi_image = False


def test_dashscope_refuses_input_beyond_its_8192_token_context(ds: EmulatorServer) -> None:
    body = ds_body("word " * 7000)  # ~8,750 tokens by the emulator's count, with the image
    refused = ds_post(ds, body)
    assert refused.status_code == 400 and refused.json()["code"] == "InvalidParameter"
    assert "input length" in refused.json()["message"]
    # The output asked for counts too: a short prompt and its image (1,280) fit with 6,000
    # new tokens, not with 7,000.
    short = ds_body("hi")
    short["parameters"] = {"max_new_tokens": 6000}
    assert ds_post(ds, short).status_code == 200
    short["parameters"] = {"max_new_tokens": 7000}
    assert ds_post(ds, short).status_code == 400


def test_dashscope_free_tier_exhausted_is_its_own_code(ds: EmulatorServer) -> None:
    ds.script("dashscope", "free-tier-before")
    reply = ds_post(ds, ds_body("hi"))
    assert reply.status_code == 403
    assert reply.json()["code"] == "AllocationQuota.FreeTierOnly"
    assert "free tier" in reply.json()["message"]


def test_dashscope_requires_messages_inside_input(ds: EmulatorServer) -> None:
    body = {"model": DS_MODEL, "messages": ds_body("hi")["input"]["messages"]}
    reply = ds_post(ds, body)
    assert reply.status_code == 400
    assert reply.json()["message"].startswith('Either "prompt" or "messages" must exist')


def test_dashscope_rejects_data_uris_by_default(emu: EmulatorServer) -> None:
    reply = ds_post(emu, ds_body("hi"))
    assert reply.status_code == 400
    assert reply.json()["code"] == "InvalidParameter"


def test_dashscope_fetches_http_images_from_loopback(emu: EmulatorServer, images: str) -> None:
    ok = ds_post(emu, ds_body("hi", image=f"{images}/cat.png"))
    assert ok.status_code == 200
    moved = ds_post(emu, ds_body("hi", image=f"{images}/moved.png"), DS_AUTH)
    assert moved.status_code == 200
    assert [r.image_bytes for r in emu.requests] == [[len(PNG)], [len(PNG)]]


@pytest.mark.parametrize("path", ["/missing.png", "/page.html"])
def test_dashscope_fails_when_the_image_cannot_be_fetched(
    emu: EmulatorServer, images: str, path: str
) -> None:
    reply = ds_post(emu, ds_body("hi", image=images + path))
    assert reply.status_code == 400
    # Not moderation: the code DashScope gives when it cannot download an image.
    assert reply.json()["code"] == "InvalidParameter.DataInspection"


def test_dashscope_refuses_non_loopback_image_hosts(emu: EmulatorServer) -> None:
    reply = ds_post(emu, ds_body("hi", image="https://example.com/cat.png"))
    assert reply.status_code == 400
    assert reply.json()["message"] == "url error, please check url!"


@pytest.mark.parametrize(
    ("spec", "status", "code"),
    [
        ("429-before", 429, "Throttling.RateQuota"),
        ("quota-before", 429, "Throttling.AllocationQuota"),
        ("500-before", 500, "InternalError"),
        ("auth-before", 401, "InvalidApiKey"),
    ],
)
def test_dashscope_before_faults_are_json_errors(
    ds: EmulatorServer, spec: str, status: int, code: str
) -> None:
    ds.script("dashscope", spec)
    reply = ds_post(ds, ds_body("hi"))
    assert (reply.status_code, reply.json()["code"]) == (status, code)
    assert reply.json()["request_id"]


def test_dashscope_quota_message_says_free_quota_is_exhausted(ds: EmulatorServer) -> None:
    ds.script("dashscope", "quota-before")
    assert ds_post(ds, ds_body("hi")).json()["message"] == "Free allocated quota exceeded."


def test_dashscope_error_after_is_an_error_event(ds: EmulatorServer) -> None:
    ds.script("dashscope", Fault("error-after", n=2))
    frames = ds_frames(ds_post(ds, ds_body("hi")).content)
    assert [f["event"] for f in frames] == ["result", "result", "error"]
    assert frames[-1]["status"] == 500
    assert set(frames[-1]["data"]) == {"code", "message", "request_id"}
    assert frames[-1]["id"] == "3"


def test_dashscope_content_filter_is_data_inspection_failed(ds: EmulatorServer) -> None:
    ds.script("dashscope", Fault("content-filter-after", n=1))
    frames = ds_frames(ds_post(ds, ds_body("hi")).content)
    assert frames[-1]["event"] == "error"
    assert (frames[-1]["status"], frames[-1]["data"]["code"]) == (400, "DataInspectionFailed")


def test_dashscope_sse_error_body_can_be_labelled_json(ds: EmulatorServer) -> None:
    ds.script("dashscope", "dashscope-error-sse-as-json")
    reply = ds_post(ds, ds_body("hi"))
    assert reply.status_code == 400
    assert reply.headers["content-type"] == "application/json"
    assert reply.content.startswith(b"id:1\nevent:error\n:HTTP_STATUS/400\ndata:{")
    with pytest.raises(json.JSONDecodeError):
        reply.json()


def test_dashscope_can_send_an_error_event_with_status_200(ds: EmulatorServer) -> None:
    ds.script("dashscope", Fault("dashscope-200-error", status=429, code="Throttling.RateQuota"))
    reply = ds_post(ds, ds_body("hi"))
    assert reply.status_code == 200
    assert reply.headers["x-dashscope-finished"] == "true"
    frames = ds_frames(reply.content)
    assert len(frames) == 1
    assert (frames[0]["event"], frames[0]["status"]) == ("error", 429)
    assert frames[0]["data"]["code"] == "Throttling.RateQuota"


def test_dashscope_no_terminator_never_says_stop(ds: EmulatorServer) -> None:
    ds.script("dashscope", ["no-terminator", "unknown-fields"])
    frames = ds_frames(ds_post(ds, ds_body("hi")).content)
    assert frames[0]["event"] == "emu-heartbeat"
    reasons = {f["data"]["output"]["choices"][0]["finish_reason"] for f in frames[1:]}
    assert reasons == {"null"}


# --- Qianfan --------------------------------------------------------------------------------
def test_qianfan_issues_tokens_by_post_and_get(emu: EmulatorServer) -> None:
    url = f"{emu.base_urls['qianfan']}/oauth/2.0/token"
    params = {
        "grant_type": "client_credentials",
        "client_id": CREDS.qianfan_ak,
        "client_secret": CREDS.qianfan_sk,
    }
    first = HTTP.post(url, params=params).json()
    second = HTTP.get(url, params=params).json()
    assert first["expires_in"] == 2592000
    assert first["access_token"].startswith("24.")
    for token in (first["access_token"], second["access_token"]):
        assert qf_post(emu, user("hi"), token).json()["result"].startswith("Echo: hi")
    assert emu.calls("qianfan") == 2


def test_qianfan_rejects_bad_client_credentials(emu: EmulatorServer) -> None:
    url = f"{emu.base_urls['qianfan']}/oauth/2.0/token"
    base = {"grant_type": "client_credentials", "client_id": CREDS.qianfan_ak}
    bad_ak = HTTP.post(url, params={**base, "client_id": "nope", "client_secret": CREDS.qianfan_sk})
    assert bad_ak.json() == {"error": "invalid_client", "error_description": "unknown client id"}
    bad_sk = HTTP.post(url, params={**base, "client_secret": "nope"})
    assert bad_sk.json() == {
        "error": "invalid_client",
        "error_description": "Client authentication failed",
    }


def test_qianfan_reports_unknown_and_expired_tokens_as_200_json(emu: EmulatorServer) -> None:
    unknown = qf_post(emu, {**user("hi"), "stream": True}, token="24.nope")
    assert unknown.status_code == 200
    assert unknown.headers["content-type"] == "application/json"
    assert unknown.json()["error_code"] == 110
    token = qf_token(emu)
    emu.expire_qianfan_tokens()
    expired = qf_post(emu, {**user("hi"), "stream": True}, token)
    assert expired.json() == {"error_code": 111, "error_msg": "Access token expired"}
    assert "result" in qf_post(emu, user("hi")).json()  # a fresh token works again
    assert qf_post(emu, user("hi"), token="").json()["error_code"] == 100


def test_qianfan_streams_incremental_events_ending_with_is_end(emu: EmulatorServer) -> None:
    reply = qf_post(emu, {**user("what is a llama?"), "stream": True})
    assert reply.headers["content-type"] == "text/event-stream"
    got = [data_json(e) for e in events(reply.content)]
    assert all(e.startswith(b"data: {") for e in events(reply.content))
    assert [e["sentence_id"] for e in got] == list(range(13))
    assert [e["is_end"] for e in got] == [False] * 12 + [True]
    assert got[-1]["result"] == ""
    assert "".join(e["result"] for e in got) == "Echo: what is a llama? \u2014 你好 🦙 **ok**"
    assert {e["id"] for e in got} == {got[0]["id"]} and got[0]["id"].startswith("as-")
    assert got[-1]["usage"]["completion_tokens"] == 12
    assert b"[DONE]" not in reply.content


def test_qianfan_answers_non_stream_requests(emu: EmulatorServer) -> None:
    data = qf_post(emu, user("hi")).json()
    assert data["object"] == "chat.completion"
    assert data["need_clear_history"] is False and data["is_truncated"] is False
    assert data["usage"]["completion_tokens"] == 12


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            336006,
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "user", "content": "b"},
                    {"role": "user", "content": "c"},
                ]
            },
            336006,
        ),
        ({**user("a"), "temperature": 0}, 336003),
        ({**user("a"), "temperature": 1.5}, 336003),
        ({**user("a" * 4801)}, 336007),
        ({"messages": []}, 336003),
    ],
)
def test_qianfan_validates_messages_and_parameters(
    emu: EmulatorServer, body: dict[str, Any], code: int
) -> None:
    reply = qf_post(emu, {**body, "stream": True})
    assert reply.status_code == 200
    assert reply.json()["error_code"] == code


@pytest.mark.parametrize(
    ("spec", "code"),
    [
        ("429-before", 18),
        ("429-before code=336501", 336501),
        ("quota-before", 17),
        ("quota-before code=19", 19),
        ("500-before", 336000),
        ("auth-before", 110),
    ],
)
def test_qianfan_before_faults_are_200_json_errors(
    emu: EmulatorServer, spec: str, code: int
) -> None:
    token = qf_token(emu)
    emu.script("qianfan", spec)
    reply = qf_post(emu, {**user("hi"), "stream": True}, token)
    assert reply.status_code == 200
    assert reply.json()["error_code"] == code


def test_qianfan_error_after_is_a_bare_json_line(emu: EmulatorServer) -> None:
    emu.script("qianfan", Fault("error-after", n=2, code=111))
    got = events(qf_post(emu, {**user("hi"), "stream": True}).content)
    assert len(got) == 3
    assert got[-1] == b'{"error_code":111,"error_msg":"Access token expired"}'


def test_qianfan_content_filter_asks_to_clear_history(emu: EmulatorServer) -> None:
    emu.script("qianfan", Fault("content-filter-after", n=2))
    got = [data_json(e) for e in events(qf_post(emu, {**user("hi"), "stream": True}).content)]
    assert len(got) == 3
    assert got[-1]["need_clear_history"] is True
    assert (got[-1]["ban_round"], got[-1]["is_end"]) == (-1, True)


# --- scale, lifecycle, CLI ------------------------------------------------------------------
@pytest.mark.asyncio
async def test_it_serves_a_hundred_concurrent_streams(emu: EmulatorServer) -> None:
    limits = httpx.Limits(max_connections=200)

    async def one(client: httpx.AsyncClient, index: int) -> bytes:
        body = {"prompt": f"stream {index} [[emu:tokens n=20 rate=200]]", "stream": True}
        reply = await client.post(cf_url(emu), json=body, headers=CF_AUTH)
        return reply.content

    async with httpx.AsyncClient(limits=limits, timeout=20) as client:
        bodies = await asyncio.gather(*(one(client, i) for i in range(100)))
    assert all(b.endswith(b"data: [DONE]\n\n") and len(events(b)) == 22 for b in bodies)
    assert emu.calls("cloudflare") == 100


def test_it_accepts_chunked_request_bodies(emu: EmulatorServer) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"prompt": '
        yield b'"chunked"}'

    reply = HTTP.post(
        cf_url(emu), content=body(), headers={**CF_AUTH, "Content-Type": "application/json"}
    )
    assert reply.status_code == 200
    assert reply.json()["result"]["response"].startswith("Echo: chunked")


def test_it_can_be_started_from_the_command_line() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "providers.emulators", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", first)
        assert match, first
        reply = HTTP.get(f"http://127.0.0.1:{match.group(1)}/_emulator/health")
        assert reply.json()["ok"] is True
    finally:
        process.terminate()
        process.wait(timeout=5)


async def _until(condition: Any, limit: float = 3.0) -> None:
    """Poll a condition the server settles asynchronously (not a timing assertion)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.01)
