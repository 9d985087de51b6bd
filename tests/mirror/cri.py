"""The two CRI calls the tests make, over containerd's socket with grpcio, as kubelet makes them.

The protobuf messages are tiny and hand-encoded here (no generated stubs): ``PullImageRequest``
is ``{1: ImageSpec{1: image}}`` and ``PullImageResponse`` is ``{1: image_ref}`` in
``runtime.v1`` of the Kubernetes CRI API; ``VersionRequest`` is ``{1: version}``.
"""

from __future__ import annotations

import grpc


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): strings and embedded messages."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _strings(message: bytes) -> dict[int, bytes]:
    """The length-delimited fields of a message (the responses we read have no other kind)."""
    fields: dict[int, bytes] = {}
    pos = 0
    while pos < len(message):
        key, pos = _read_varint(message, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _read_varint(message, pos)
        elif wire == 2:
            length, pos = _read_varint(message, pos)
            fields[number] = message[pos:pos + length]
            pos += length
        else:
            raise ValueError(f"unexpected wire type {wire} in a CRI response")
    return fields


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


class CriClient:
    """``runtime.v1.ImageService/PullImage`` and ``RuntimeService/Version`` on one containerd socket."""

    def __init__(self, socket: str) -> None:
        self._channel = grpc.insecure_channel(f"unix://{socket}")
        self._pull = self._channel.unary_unary("/runtime.v1.ImageService/PullImage",
                                               request_serializer=lambda b: b, response_deserializer=lambda b: b)
        self._version = self._channel.unary_unary("/runtime.v1.RuntimeService/Version",
                                                  request_serializer=lambda b: b, response_deserializer=lambda b: b)

    def version(self, timeout: float = 2.0) -> str:
        answer = self._version(_field(1, b"v1"), timeout=timeout)
        return _strings(answer).get(2, b"").decode()  # runtime_name

    def pull(self, image: str, timeout: float = 120.0) -> str:
        """The image reference (``sha256:...`` of the config) once containerd has pulled and unpacked it."""
        answer = self._pull(_field(1, _field(1, image.encode())), timeout=timeout)
        return _strings(answer).get(1, b"").decode()

    def close(self) -> None:
        self._channel.close()
