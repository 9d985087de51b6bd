"""Security: the API token, TLS on the API port, TLS to origins, and the source allow-list.

The promises under test: with a token configured nobody changes the supernode's state without it, while
dfget 1.0.x (which cannot send one) and read-only monitoring keep working; the API port can speak HTTPS;
an HTTPS origin is fetched with the CA or the ``insecure`` switch a registrant sends, and refused clearly
without them; and with an allow-list the supernode never connects to a host outside it, not even through
a redirect.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dfwire import ids
from supernode.config import Settings
from supernode.errors import DfCode, DfError
from supernode.security import ApiToken, SourceAllowList, TokenError
from tests.integration.conftest import Api, Node, md5_hex, pattern_bytes
from tests.v1proto import SupernodeStartError, free_port

from .conftest import Certificate, NodeFactory, NodeProcess, OriginFactory, ProcessFactory

TOKEN = "s3cret-token-for-tests"
MIB = 1024 * 1024


def register_body(url: str, cid: str = "127.0.0.2-1-1.000", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"superNodeIp": "127.0.0.1", "rawUrl": url, "taskUrl": url, "cid": cid,
                            "ip": "127.0.0.2", "hostName": "peer", "port": 15001, "path": f"/peer/file/{cid}",
                            "version": "1.0.6", "pattern": "p2p"}
    body.update(extra)
    return body


async def call(http: aiohttp.ClientSession, method: str, url: str, *, body: Any = None,
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    sent = {"Content-Type": "application/json", **(headers or {})}
    async with http.request(method, url, data=data, headers=sent) as resp:
        raw = await resp.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw
        return resp.status, dict(resp.headers), parsed


def is_json_error(status: int, body: Any) -> bool:
    return isinstance(body, dict) and set(body) == {"code", "message"} and body["code"] == status


# ---------------------------------------------------------------------------------------------------
# API token

# (method, path, body): every state-changing call of the REST and preheat API, under each prefix.
PROTECTED = [
    ("POST", "/peers", {"IP": "127.0.0.9", "hostName": "h", "port": 15000}),
    ("POST", "/api/v1/peers", {"IP": "127.0.0.9", "hostName": "h", "port": 15000}),
    ("POST", "/v1.2/peers", {"IP": "127.0.0.9", "hostName": "h", "port": 15000}),
    ("DELETE", "/peers/nobody", None),
    ("POST", "/tasks", {"cID": "c", "rawURL": "http://127.0.0.1:1/x", "peerID": "nobody"}),
    ("PUT", "/api/v1/tasks/" + "0" * 64, {"peerID": "nobody"}),
    ("DELETE", "/api/v1/tasks/" + "0" * 64 + "?full=true", None),
    ("GET", "/tasks/" + "0" * 64 + "/pieces?clientID=c", None),  # the REST pull loop records reports
    ("PUT", "/tasks/" + "0" * 64 + "/pieces/0-4194303", {"clientID": "c", "dstPID": "p", "pieceStatus": "SUCCESS"}),
    ("POST", "/preheats", {"type": "file", "url": "http://127.0.0.1:1/x"}),
    ("POST", "/api/v1/preheats", {"type": "file", "url": "http://127.0.0.1:1/x"}),
    ("DELETE", "/preheats/nothing", None),
    ("POST", "/no/such/route", {}),
    ("PATCH", "/peers", {}),
]

OPEN = ["/_ping", "/version", "/metrics", "/openapi.json", "/peers", "/api/v1/tasks", "/preheats", "/",
        "/v1.2/_ping", "/preheats/nothing", "/tasks/" + "0" * 64]


async def test_write_api_needs_the_token_and_read_only_calls_do_not(
        start_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    node = await start_node(api_token=TOKEN)
    for method, path, body in PROTECTED:
        for headers, error in (({}, None), ({"Authorization": "Bearer wrong"}, "invalid_token"),
                               ({"Authorization": f"Basic {TOKEN}"}, "invalid_token"),
                               ({"Authorization": f"Bearer {TOKEN}x"}, "invalid_token"),
                               ({"Authorization": "Bearer"}, "invalid_token")):
            status, answer_headers, answer = await call(http, method, node.api + path, body=body, headers=headers)
            assert status == 401 and is_json_error(401, answer), (method, path, headers, status, answer)
            challenge = answer_headers["WWW-Authenticate"]
            assert challenge.startswith('Bearer realm="supernode"')
            assert ("invalid_token" in challenge) == (error is not None)
        status, _, answer = await call(http, method, node.api + path, body=body,
                                       headers={"Authorization": f"Bearer {TOKEN}"})
        assert status != 401 and status < 500, (method, path, status, answer)
        assert status in (200, 201, 204, 400, 404, 405), (method, path, status, answer)
    for path in OPEN:
        status, _, _ = await call(http, "GET", node.api + path)
        assert status in (200, 404), path
    # Nothing was changed by the refused calls: the only peer is the one made with the token.
    _, _, peers = await call(http, "GET", node.api + "/peers")
    assert [p["IP"] for p in peers if p["IP"] == "127.0.0.9"] == ["127.0.0.9"] * 3


async def test_dfget_v1_endpoints_stay_open(start_node: NodeFactory, make_origin: OriginFactory,
                                            http: aiohttp.ClientSession) -> None:
    """dfget 1.0.x sends no token, so a tokened supernode must still serve it end to end."""
    origin = await make_origin()
    origin.put("/open.bin", b"served to dfget without a token")
    node = await start_node(api_token=TOKEN)
    url = origin.url("/open.bin")
    status, _, answer = await call(http, "POST", node.api + "/peer/registry", body=register_body(url))
    assert status == 200 and answer["code"] == 200, answer
    task_id = answer["data"]["taskId"]
    cid = "127.0.0.2-1-1.000"
    await Api(http, node).wait_cdn(task_id, {"SUCCESS"})
    status, _, answer = await call(http, "GET", f"{node.api}/peer/task?srcCid={cid}&dstCid=&range=&result=502"
                                                f"&status=700&taskId={task_id}")
    assert status == 200 and answer["code"] == 601, answer
    piece = answer["data"][0]
    status, _, answer = await call(http, "GET", f"{node.api}/peer/piece/suc?taskId={task_id}&cid={cid}"
                                                f"&dstCid={piece['cid']}&pieceRange={piece['range']}")
    assert (status, answer) == (200, {"code": 611})
    for path, body in (("/peer/network", {}), ("/peer/heartbeat", {}),
                       ("/task/metrics", {"IP": "127.0.0.2", "success": True, "duration": 1.0, "fileLength": 31})):
        status, _, _ = await call(http, "POST", node.api + path, body=body)
        assert status == 200, path
    status, _, _ = await call(http, "GET", f"{node.api}/peer/service/down?taskId={task_id}&cid={cid}")
    assert status == 200


async def test_openapi_marks_the_protected_operations(start_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    node = await start_node(api_token=TOKEN)
    _, _, doc = await call(http, "GET", node.api + "/openapi.json")
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["paths"]["/preheats"]["post"]["security"] == [{"bearer": []}]
    assert "401" in doc["paths"]["/api/v1/tasks/{id}"]["delete"]["responses"]
    assert "security" not in doc["paths"]["/peers"]["get"]
    assert "security" not in doc["paths"]["/peer/registry"]["post"]
    plain = await start_node()
    _, _, doc = await call(http, "GET", plain.api + "/openapi.json")
    assert "securitySchemes" not in doc["components"]
    assert "security" not in doc["paths"]["/preheats"]["post"]


def test_token_file_is_reread_when_the_secret_changes(tmp_path: Path) -> None:
    """A rotated Kubernetes Secret takes effect without a restart; a broken update keeps the last token."""
    secret = tmp_path / "token"
    secret.write_text("first\n")
    token = ApiToken(path=secret, recheck=0.0)
    assert token.enabled and token.matches("Bearer first") and not token.matches("Bearer second")
    secret.write_text("second")
    assert token.matches("bearer second") and not token.matches("Bearer first")
    secret.write_text("")  # a half-written mount
    assert token.matches("Bearer second")
    secret.unlink()
    assert token.matches("Bearer second") and not token.matches(None)
    with pytest.raises(TokenError, match="empty"):
        empty = tmp_path / "empty"
        empty.write_text("  \n")
        ApiToken(path=empty)
    with pytest.raises(TokenError, match="cannot read"):
        ApiToken(path=tmp_path / "missing")
    assert not ApiToken().enabled and ApiToken().matches(None)


def test_token_settings() -> None:
    assert Settings(advertise_ip="127.0.0.1").api_token is None  # the default: the API is open
    assert Settings(advertise_ip="127.0.0.1", api_token="").api_token is None  # an empty Helm value
    secret = Settings(advertise_ip="127.0.0.1", api_token="zq-token-zq")
    assert "zq-token-zq" not in repr(secret) and secret.api_token is not None
    with pytest.raises(ValueError, match="not both"):
        Settings(advertise_ip="127.0.0.1", api_token="x", api_token_file="/run/secrets/token")


async def test_token_from_the_environment_and_from_a_mounted_secret_in_a_real_process(
        make_process: ProcessFactory, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    secret = tmp_path / "secret" / "token"
    secret.parent.mkdir()
    secret.write_text(TOKEN + "\n")
    for node in (await make_process(env={"SUPERNODE_API_TOKEN": TOKEN}),
                 await make_process(config={"api_token_file": str(secret)})):
        peer = {"IP": "127.0.0.9", "hostName": "h", "port": 15000}
        status, _, answer = await call(http, "POST", node.api_url + "/peers", body=peer)
        assert status == 401 and is_json_error(401, answer)
        status, _, _ = await call(http, "POST", node.api_url + "/peers", body=peer,
                                  headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 201
        status, _, _ = await call(http, "GET", node.api_url + "/metrics")
        assert status == 200


async def test_an_unusable_token_file_stops_the_start(tmp_path: Path) -> None:
    """Better not to start than to start with the write API open because the Secret is not mounted yet."""
    empty = tmp_path / "empty-token"
    empty.write_text("")
    for config, message in (({"api_token_file": str(empty)}, "is empty"),
                            ({"api_token_file": str(tmp_path / "absent")}, "cannot read api_token_file")):
        node = NodeProcess(tmp_path / "home", tmp_path / f"logs-{message[:6]}", api_port=free_port(),
                           cdn_port=free_port(), config=config)
        with pytest.raises(SupernodeStartError, match="exited with 2") as info:
            await node.start(ready_within=15)
        assert message in str(info.value)


# ---------------------------------------------------------------------------------------------------
# TLS on the API port


async def test_api_port_speaks_https_with_the_configured_certificate(
        make_process: ProcessFactory, certificate: Certificate, make_origin: OriginFactory) -> None:
    origin = await make_origin()
    data = pattern_bytes(MIB + 17, seed=70)
    origin.put("/tls-api.bin", data)
    node = await make_process(certificate=certificate, env={"SUPERNODE_API_TOKEN": TOKEN})
    assert node.api_url.startswith("https://")
    connector = aiohttp.TCPConnector(ssl=certificate.client_context())
    async with aiohttp.ClientSession(connector=connector) as https:
        async with https.get(node.api_url + "/_ping") as resp:
            assert resp.status == 200 and await resp.read() == b"OK"
        status, _, _ = await call(https, "POST", node.api_url + "/peers",
                                  body={"IP": "127.0.0.9", "hostName": "h", "port": 15000},
                                  headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 201
        status, _, answer = await call(https, "POST", node.api_url + "/peer/registry",
                                       body=register_body(origin.url("/tls-api.bin")))
        assert status == 200 and answer["code"] == 200, answer
    async with aiohttp.ClientSession() as plain:
        # Not HTTP on the same port, and no certificate a default client trusts.
        with pytest.raises(aiohttp.ClientError):
            async with plain.get(f"http://127.0.0.1:{node.api_port}/_ping") as resp:
                await resp.read()
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with plain.get(node.api_url + "/_ping") as resp:
                await resp.read()
        # The download port stays plain HTTP: dfget 1.0.x fetches pieces with http:// URLs only.
        task_id = ids.task_id(origin.url("/tls-api.bin"))
        deadline = time.monotonic() + 10
        while True:
            async with plain.get(f"{node.cdn_url}/download/{task_id[:3]}/{task_id}",
                                 headers={"Range": "bytes=0-99"}) as resp:
                if resp.status == 206 or time.monotonic() > deadline:
                    break
        assert resp.status == 206


@pytest.mark.parametrize(("config", "code", "message"), [
    ({"tls_cert": "/nonexistent/cert.pem", "tls_key": "/nonexistent/key.pem"}, 1, "cannot use tls_cert"),
    ({"tls_cert": "/nonexistent/cert.pem"}, 2, "tls_cert and tls_key go together"),
])
async def test_bad_tls_configuration_stops_the_start(tmp_path: Path, config: dict[str, str], code: int,
                                                     message: str) -> None:
    node = NodeProcess(tmp_path / "home", tmp_path / "logs", api_port=free_port(), cdn_port=free_port(),
                       config=config)
    with pytest.raises(SupernodeStartError, match=f"exited with {code}") as info:
        await node.start(ready_within=15)
    assert message in str(info.value)


# ---------------------------------------------------------------------------------------------------
# TLS to origins (RegisterRequest.insecure and rootCAs, as dfget v1 sends them)


async def test_https_origin_needs_its_ca_or_insecure(
        start_node: NodeFactory, make_origin: OriginFactory, certificate: Certificate,
        http: aiohttp.ClientSession) -> None:
    origin = await make_origin(certificate)
    data = pattern_bytes(2 * MIB + 5, seed=71)
    for path in ("/ca.bin", "/insecure.bin", "/plain.bin"):
        origin.put(path, data)
    node = await start_node()
    api = Api(http, node)
    ca_b64 = base64.b64encode(certificate.pem.encode()).decode()

    async def register(path: str, cid: str, **extra: Any) -> tuple[int, Any]:
        status, _, answer = await call(http, "POST", node.api + "/peer/registry",
                                       body=register_body(origin.url(path), cid=cid, **extra))
        return status, answer

    status, answer = await register("/ca.bin", "c1")
    assert status == 200 and answer["code"] == 607, answer
    assert "CERTIFICATE_VERIFY_FAILED" in answer["msg"] or "certificate verify failed" in answer["msg"], answer
    assert origin.requests("/ca.bin") == []  # the handshake failed: no request reached the origin

    status, answer = await register("/ca.bin", "c2", rootCAs=[ca_b64])
    assert status == 200 and answer["code"] == 200, answer
    info = await api.wait_cdn(answer["data"]["taskId"], {"SUCCESS"})
    assert info["realMd5"] == md5_hex(data)

    status, answer = await register("/insecure.bin", "c3", insecure=True)
    assert status == 200 and answer["code"] == 200, answer
    info = await api.wait_cdn(answer["data"]["taskId"], {"SUCCESS"})
    assert info["realMd5"] == md5_hex(data)

    # TLS options follow the latest registrant of the host, as in the Go supernode: plain again now.
    status, answer = await register("/plain.bin", "c4")
    assert status == 200 and answer["code"] == 607, answer
    # A CA that is not a certificate is the registrant's mistake: 400, not "source unreachable".
    status, answer = await register("/plain.bin", "c5", rootCAs=["bm90IGEgY2VydGlmaWNhdGU="])
    assert status == 400 and is_json_error(400, answer) and "rootCAs" in answer["message"], answer


# ---------------------------------------------------------------------------------------------------
# Source allow-list


def test_allow_list_patterns() -> None:
    allow = SourceAllowList.parse(["registry.local", "*.example.com", "10.0.0.0/8", "127.0.0.1", "fd00::/8"])
    for host in ("registry.local", "REGISTRY.local.", "a.example.com", "a.b.example.com", "10.1.2.3", "127.0.0.1",
                 "fd00::1", "::ffff:10.0.0.1"):
        assert allow.allows_host(host), host
    for host in ("example.com", "registry.local.evil.com", "a.example.com.evil.com", "evil-example.com",
                 "127.0.0.2", "localhost", "2130706433", "0x7f.0.0.1", "127.1", "11.0.0.1", "::1", "", "fe80::1"):
        assert not allow.allows_host(host), host
    assert not SourceAllowList.parse([]).enabled and SourceAllowList.parse([]).allows_host("anything")
    for bad in ("bad host!", "10.0.0.0/33", "*.", "a..b", "http://x"):
        with pytest.raises(ValueError, match="source_allow"):
            SourceAllowList.parse([bad])
    with pytest.raises(DfError) as info:
        allow.check("http://registry.local@169.254.169.254/latest/meta-data")
    assert info.value.code == DfCode.SOURCE_NOT_ALLOWED and "169.254.169.254" in str(info.value)
    assert Settings(advertise_ip="127.0.0.1").source_allow == []  # the default: every host


async def test_disallowed_sources_are_refused_before_any_request(
        start_node: NodeFactory, make_origin: OriginFactory, http: aiohttp.ClientSession) -> None:
    inside = await make_origin(host="127.0.0.1")
    outside = await make_origin(host="127.0.0.3")  # stands for an internal service
    for origin in (inside, outside):
        origin.put("/f.bin", b"content of " + origin.host.encode())
    node = await start_node(source_allow=["127.0.0.1"])
    _, _, peers_before = await call(http, "GET", node.api + "/peers")

    refused = [outside.url("/f.bin"), f"http://localhost:{inside.port}/f.bin",
               f"http://2130706433:{inside.port}/f.bin", f"http://127.0.0.1@127.0.0.3:{outside.port}/f.bin"]
    for n, url in enumerate(refused):
        status, _, answer = await call(http, "POST", node.api + "/peer/registry",
                                       body=register_body(url, cid=f"127.0.0.2-{n}-1.000"))
        assert status == 403 and is_json_error(403, answer), (url, status, answer)
        assert "source_allow" in answer["message"]
    _, _, peers_after = await call(http, "GET", node.api + "/peers")
    assert peers_after == peers_before  # a refused register leaves no peer behind

    status, _, peer = await call(http, "POST", node.api + "/peers",
                                 body={"IP": "127.0.0.2", "hostName": "h", "port": 15000})
    assert status == 201
    status, _, answer = await call(http, "POST", node.api + "/tasks",
                                   body={"cID": "c", "rawURL": outside.url("/f.bin"), "peerID": peer["ID"]})
    assert status == 403 and is_json_error(403, answer), answer
    for body in ({"type": "file", "url": outside.url("/f.bin")},
                 {"type": "image", "url": f"http://127.0.0.3:{outside.port}/v2/library/app/manifests/1.0"}):
        status, _, answer = await call(http, "POST", node.api + "/preheats", body=body)
        assert status == 403 and is_json_error(403, answer), answer
    _, _, preheats = await call(http, "GET", node.api + "/preheats")
    assert preheats == []
    assert outside.hits == {}, "the supernode connected to a host outside its allow-list"

    status, _, answer = await call(http, "POST", node.api + "/peer/registry", body=register_body(inside.url("/f.bin")))
    assert status == 200 and answer["code"] == 200, answer
    status, _, _ = await call(http, "POST", node.api + "/preheats", body={"type": "file", "url": inside.url("/f.bin")})
    assert status in (200, 201)


async def test_redirects_that_leave_the_allow_list_are_refused(
        start_node: NodeFactory, make_origin: OriginFactory, http: aiohttp.ClientSession) -> None:
    inside = await make_origin(host="127.0.0.1")
    outside = await make_origin(host="127.0.0.3")
    data = pattern_bytes(MIB, seed=72)
    inside.put("/real.bin", data)
    outside.put("/secret", b"internal metadata")
    inside.redirects["/out"] = outside.url("/secret")
    inside.redirects["/in"] = inside.url("/real.bin")
    inside.redirects["/preheat-out"] = outside.url("/secret")
    node = await start_node(source_allow=["127.0.0.1"])

    status, _, answer = await call(http, "POST", node.api + "/peer/registry", body=register_body(inside.url("/out")))
    assert status == 403 and is_json_error(403, answer), answer
    assert "127.0.0.3" in answer["message"] and "allow-list" in answer["message"]

    status, _, answer = await call(http, "POST", node.api + "/preheats",
                                   body={"type": "file", "url": inside.url("/preheat-out")})
    assert status == 201, answer
    preheat = await wait_preheat(http, node, answer["ID"])
    assert preheat["status"] == "FAILED" and "allow-list" in preheat["errorMsg"], preheat
    assert outside.hits == {}, "a redirect took the supernode outside its allow-list"

    status, _, answer = await call(http, "POST", node.api + "/peer/registry",
                                   body=register_body(inside.url("/in"), cid="127.0.0.2-9-1.000"))
    assert status == 200 and answer["code"] == 200, answer
    info = await Api(http, node).wait_cdn(answer["data"]["taskId"], {"SUCCESS"})
    assert info["realMd5"] == md5_hex(data)


async def wait_preheat(http: aiohttp.ClientSession, node: Node, preheat_id: str, within: float = 10.0
                       ) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        status, _, info = await call(http, "GET", f"{node.api}/preheats/{preheat_id}")
        assert status == 200, info
        if info["status"] in ("SUCCESS", "FAILED") or time.monotonic() > deadline:
            return dict(info)
        await asyncio.sleep(0.05)
