"""The pure half of image preheat (``dfwire.registry``): URLs, challenges, manifests, platforms."""

from __future__ import annotations

import json

import pytest

from dfwire.registry import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Challenge,
    ManifestKind,
    Platform,
    RegistryError,
    parse_challenges,
    parse_digest,
    parse_manifest,
    parse_manifest_url,
    parse_token_answer,
    registry_error_text,
    select_manifests,
    token_request_url,
)

D1, D2, D3 = ("sha256:" + c * 64 for c in "123")


def test_manifest_urls() -> None:
    ref = parse_manifest_url("https://reg.example:5000/v2/library/nginx/manifests/1.25")
    assert (ref.proto, ref.host, ref.name, ref.reference) == ("https", "reg.example:5000", "library/nginx", "1.25")
    assert ref.blob_url(D1) == f"https://reg.example:5000/v2/library/nginx/blobs/{D1}"
    assert ref.manifest_url(D2) == f"https://reg.example:5000/v2/library/nginx/manifests/{D2}"
    assert ref.pull_scope == "repository:library/nginx:pull"
    assert parse_manifest_url(f"http://h/v2/a/b/c/manifests/{D1}").name == "a/b/c"
    for bad in ("http://h/library/nginx:1", "ftp://h/v2/a/manifests/1", "http://h/v2/Upper/manifests/1",
                "http://h/v2/a/manifests/sha256:xyz", "http://h/v2/a/manifests/-bad", "http://h/v2/a/manifests/"):
        with pytest.raises(RegistryError):
            parse_manifest_url(bad)


def test_digests() -> None:
    assert parse_digest(D1) == ("sha256", "1" * 64)
    assert parse_digest("sha512:" + "a" * 128)[0] == "sha512"
    for bad in ("sha256:" + "A" * 64, "sha256:abc", "md5:" + "0" * 32, "sha256" + "0" * 64, "../../etc/passwd"):
        with pytest.raises(RegistryError):
            parse_digest(bad)


def test_challenges_keep_quoted_commas_and_split_several() -> None:
    [bearer] = parse_challenges(['Bearer realm="https://auth.example/token",service="registry.example",'
                                 'scope="repository:a/b:pull,push"'])
    assert bearer == Challenge("bearer", {"realm": "https://auth.example/token", "service": "registry.example",
                                          "scope": "repository:a/b:pull,push"})
    both = parse_challenges(['Basic realm="Registry Realm", Bearer realm="http://t/token",service=svc'])
    assert [(c.scheme, c.realm) for c in both] == [("basic", "Registry Realm"), ("bearer", "http://t/token")]
    assert both[1].params["service"] == "svc"
    assert parse_challenges(['Bearer realm="a \\"quoted\\" realm"'])[0].realm == 'a "quoted" realm'
    assert parse_challenges([]) == []


def test_token_request_url() -> None:
    challenge = Challenge("bearer", {"realm": "https://auth.example/token?x=1", "service": "reg svc",
                                     "scope": "repository:a/b:pull"})
    assert token_request_url(challenge, "ignored") == \
        "https://auth.example/token?x=1&service=reg+svc&scope=repository%3Aa%2Fb%3Apull"
    no_scope = Challenge("bearer", {"realm": "http://t/token"})
    assert token_request_url(no_scope, "repository:x:pull") == "http://t/token?scope=repository%3Ax%3Apull"
    with pytest.raises(RegistryError, match="realm"):
        token_request_url(Challenge("bearer", {"realm": "file:///etc"}), "s")


def test_token_answers() -> None:
    assert parse_token_answer(b'{"token": "t", "expires_in": 300}') == ("t", 300.0)
    assert parse_token_answer(b'{"access_token": "a"}') == ("a", 60.0)
    for bad in (b"nope", b"[]", b'{"token": ""}'):
        with pytest.raises(RegistryError):
            parse_token_answer(bad)


def test_registry_error_text() -> None:
    body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"v9"}}]}'
    assert registry_error_text(body) == "MANIFEST_UNKNOWN: manifest unknown"
    assert registry_error_text(b"404 page not found") == ""


def _image(media_type: str | None = DOCKER_MANIFEST, layers: list[str] | None = None) -> bytes:
    data: dict[str, object] = {"schemaVersion": 2, "config": {"mediaType": "c", "size": 7, "digest": D1},
                               "layers": [{"mediaType": "l", "size": 9, "digest": d} for d in (layers or [D2, D3])]}
    if media_type:
        data["mediaType"] = media_type
    return json.dumps(data).encode()


def test_image_manifests() -> None:
    manifest = parse_manifest(_image())
    assert manifest.kind == ManifestKind.IMAGE and manifest.media_type == DOCKER_MANIFEST
    assert [(b.digest, b.size) for b in manifest.blobs] == [(D1, 7), (D2, 9), (D3, 9)]
    # OCI manifests may leave mediaType out: the Content-Type, then the shape, decide.
    assert parse_manifest(_image(None), OCI_MANIFEST + "; charset=utf-8").media_type == OCI_MANIFEST
    assert parse_manifest(_image(None)).kind == ManifestKind.IMAGE
    assert [b.digest for b in parse_manifest(_image(layers=[D2, D2, D3])).blobs] == [D1, D2, D3]


def test_foreign_layers_are_not_fetched() -> None:
    data = json.loads(_image())
    data["layers"].append({"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "size": 1,
                           "digest": "sha256:" + "f" * 64, "urls": ["https://mcr.example/x"]})
    assert len(parse_manifest(json.dumps(data).encode()).blobs) == 3


def test_schema1_manifests() -> None:
    body = json.dumps({"schemaVersion": 1, "name": "a", "tag": "v1",
                       "fsLayers": [{"blobSum": D2}, {"blobSum": D3}, {"blobSum": D2}]}).encode()
    manifest = parse_manifest(body)
    assert manifest.kind == ManifestKind.SCHEMA1 and [b.digest for b in manifest.blobs] == [D2, D3]
    assert manifest.blobs[0].size == -1


def _index(media_type: str = OCI_INDEX) -> bytes:
    entries = [{"mediaType": OCI_MANIFEST, "size": 100, "digest": D1,
                "platform": {"os": "linux", "architecture": "amd64"}},
               {"mediaType": OCI_MANIFEST, "size": 100, "digest": D2,
                "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
               {"mediaType": OCI_MANIFEST, "size": 100, "digest": D3,
                "platform": {"os": "unknown", "architecture": "unknown"}}]
    return json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": entries}).encode()


def test_indexes_and_platform_selection() -> None:
    for media_type in (OCI_INDEX, DOCKER_MANIFEST_LIST):
        index = parse_manifest(_index(media_type))
        assert index.kind == ManifestKind.INDEX and len(index.manifests) == 3
    index = parse_manifest(_index())
    assert [d.digest for d in select_manifests(index, [])] == [D1, D2]  # attestations left out
    assert [d.digest for d in select_manifests(index, [Platform.parse("linux/arm")])] == [D2]
    with pytest.raises(RegistryError, match=r"linux/arm/v6.*available: linux/amd64, linux/arm/v7, unknown/unknown"):
        select_manifests(index, [Platform.parse("linux/arm/v6")])
    assert [d.digest for d in select_manifests(index, [Platform.parse("unknown/unknown")])] == [D3]


def test_platform_syntax() -> None:
    assert Platform.parse("linux/arm64/v8") == Platform("linux", "arm64", "v8")
    assert str(Platform.parse("linux/amd64")) == "linux/amd64"
    for bad in ("linux", "linux/", "/amd64", "Linux/AMD64", "a/b/c/d"):
        with pytest.raises(ValueError):
            Platform.parse(bad)


@pytest.mark.parametrize(("body", "message"), [
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"schemaVersion": 2, "mediaType": "application/x-unknown"}', "unknown media type"),
    (b'{"schemaVersion": 1}', "without fsLayers"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{"digest": D1, "size": -5}]}).encode(),
     "invalid size"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX}).encode(), "index without a manifests list"),
    (_image(layers=["sha256:short"]), "invalid or unsupported digest"),
])
def test_malformed_manifests(body: bytes, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        parse_manifest(body)
