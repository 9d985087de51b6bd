"""What the operator reads: its settings, a Preheat's spec, EndpointSlices, Secrets, and its command line."""

from __future__ import annotations

import base64

import pytest

from dfoperator.cli import DEFAULT_LIVENESS, HANDLERS_MODULE, kopf_arguments
from dfoperator.config import OperatorConfig
from dfoperator.kube import KubeLookupError, endpoint_urls, secret_headers
from dfoperator.resource import InvalidSpec, PreheatSpec, SecretRef
from dfoperator.state import Reason


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_static_supernodes_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERNODES", " http://a:8002/ ,http://b:8002,, http://a:8002")
    monkeypatch.setenv("DFOPERATOR_RETRY_ATTEMPTS", "4")
    config = OperatorConfig()
    assert config.supernodes == ["http://a:8002", "http://b:8002"]
    assert config.retry_attempts == 4
    monkeypatch.setenv("DFOPERATOR_SUPERNODES", "https://c:443")  # the prefixed name wins
    assert OperatorConfig().supernodes == ["https://c:443"]


def test_a_supernode_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        OperatorConfig(supernodes=["10.0.0.1:8002"])


def test_backoff_doubles_up_to_the_cap() -> None:
    config = OperatorConfig(retry_backoff=2, retry_backoff_max=10)
    assert [config.backoff(n) for n in (1, 2, 3, 4, 5)] == [2, 4, 8, 10, 10]


def test_the_service_namespace_defaults_to_our_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "dragonfly-system")
    assert OperatorConfig().service_namespace() == "dragonfly-system"
    assert OperatorConfig(supernode_namespace="other").service_namespace() == "other"


def test_spec_to_request() -> None:
    spec = PreheatSpec.parse({"type": "image", "url": "https://r.example/v2/lib/app/manifests/1.0",
                              "platforms": ["linux/amd64"], "identifier": "team-a", "unknown": 1,
                              "headersSecretRef": {"name": "creds"}, "supernodes": ["http://s:8002/"]})
    assert spec.headers_secret_ref == SecretRef(name="creds")
    assert spec.supernodes == ("http://s:8002",)
    assert spec.request({"Authorization": "Basic eA=="}) == {
        "type": "image", "url": "https://r.example/v2/lib/app/manifests/1.0", "filter": "", "identifier": "team-a",
        "headers": {"Authorization": "Basic eA=="}, "platforms": ["linux/amd64"]}
    assert "headers" not in PreheatSpec.parse({"type": "file", "url": "http://o/f"}).request({})


@pytest.mark.parametrize(("spec", "expected"), [
    ({"type": "tarball", "url": "http://o/f"}, "spec.type: Input should be 'image' or 'file' (got 'tarball')"),
    ({"type": "file"}, "spec.url: Field required"),
    ({"type": "file", "url": "ftp://o/f"}, "spec.url: Value error, must be an http:// or https:// URL"),
    ({"type": "file", "url": "http://o/f", "headersSecretRef": {}}, "spec.headersSecretRef.name: Field required"),
    (None, "spec.type: Field required"),
])
def test_an_invalid_spec_says_what_is_wrong(spec: dict[str, object] | None, expected: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        PreheatSpec.parse(spec)
    assert expected in str(caught.value)


def slice_of(service: str, ports: list[dict[str, object]], endpoints: list[dict[str, object]]) -> dict[str, object]:
    return {"metadata": {"labels": {"kubernetes.io/service-name": service}}, "ports": ports, "endpoints": endpoints}


def test_endpoint_urls_are_the_ready_endpoints_of_the_service_port() -> None:
    slices = [
        slice_of("sn", [{"name": "api", "port": 8002}, {"name": "cdn", "port": 8001}],
                 [{"addresses": ["10.0.0.2"], "conditions": {"ready": True}},
                  {"addresses": ["10.0.0.1"]},  # ready unset means ready
                  {"addresses": ["10.0.0.3"], "conditions": {"ready": False}}]),
        slice_of("sn", [{"name": "api", "port": 8002}], [{"addresses": ["fd00::5"]}]),
        slice_of("other", [{"name": "api", "port": 9}], [{"addresses": ["10.9.9.9"]}]),
        slice_of("sn", [{"name": "metrics", "port": 9090}], [{"addresses": ["10.0.0.4"]}]),
    ]
    assert endpoint_urls(slices, service="sn", port="api") == [
        "http://10.0.0.1:8002", "http://10.0.0.2:8002", "http://[fd00::5]:8002"]
    assert endpoint_urls(slices, service="sn", port="8001", scheme="https") == ["https://10.0.0.1:8001",
                                                                               "https://10.0.0.2:8001"]
    assert endpoint_urls(slices, service="missing", port="api") == []


def test_secret_entries_become_headers() -> None:
    data = {"Authorization": b64("Basic YWxpY2U6cHc="), "X-Extra": b64(" token \n")}
    assert secret_headers(data, SecretRef(name="s"), namespace="ns") == {
        "Authorization": "Basic YWxpY2U6cHc=", "X-Extra": "token"}
    assert secret_headers(data, SecretRef(name="s", key="X-Extra"), namespace="ns") == {"X-Extra": "token"}


@pytest.mark.parametrize(("data", "key", "reason", "text"), [
    ({"a": b64("x")}, "b", Reason.SECRET_NOT_FOUND, "Secret ns/s has no key 'b'"),
    ({"a": "not base64!"}, None, Reason.SECRET_INVALID, "not UTF-8 text"),
    ({"a": b64("one\ntwo")}, None, Reason.SECRET_INVALID, "spans several lines"),
])
def test_a_secret_that_cannot_be_headers_is_refused(data: dict[str, str], key: str | None, reason: Reason,
                                                    text: str) -> None:
    with pytest.raises(KubeLookupError) as caught:
        secret_headers(data, SecretRef(name="s", key=key), namespace="ns")
    assert caught.value.reason == reason and text in caught.value.message


def test_kopf_arguments_default_to_every_namespace_and_a_liveness_endpoint() -> None:
    assert kopf_arguments([]) == ["run", "--standalone", "-m", HANDLERS_MODULE, "--all-namespaces",
                                  f"--liveness={DEFAULT_LIVENESS}"]
    given = kopf_arguments(["-n", "team-a", "--liveness=http://127.0.0.1:9/healthz", "--verbose"])
    assert given == ["run", "--standalone", "-m", HANDLERS_MODULE, "-n", "team-a",
                     "--liveness=http://127.0.0.1:9/healthz", "--verbose"]
