"""What the operator asks the Kubernetes API for itself, through the kubernetes client (``kubernetes.aio``).

kopf watches and patches the Preheats; everything else goes through here: a Preheat's headers Secret
(only the one it names, in its own namespace), the supernode Service's EndpointSlices, and the status
subresource (written by the reconciler, under its per-object lock, so that the handler and the timer of
one object can never write an older status over a newer one).

kopf and this client log in the same way (:func:`load_configuration`: in-cluster service account,
else ``$KUBECONFIG`` read when called, not at import) so they always talk to the same cluster as the
same identity. The mapping of API objects to what the operator needs (:func:`endpoint_urls`,
:func:`secret_headers`) takes plain dicts, as the API serves them, and is pure.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import kopf
from kubernetes.aio import client as k8s
from kubernetes.aio import config as k8s_config
from kubernetes.aio.client.exceptions import ApiException

from .resource import GROUP, PLURAL, VERSION, SecretRef
from .state import Reason

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_MERGE_PATCH = "application/merge-patch+json"


class KubeLookupError(Exception):
    """A lookup the preheat depends on failed; ``reason`` is the Ready condition's reason for it."""

    def __init__(self, message: str, *, reason: Reason) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


async def load_configuration() -> k8s.Configuration:
    """Credentials of the service account when in a pod, else of ``$KUBECONFIG`` (or ``~/.kube/config``)."""
    configuration = k8s.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException:
            pass  # a pod without a service account token: a kubeconfig may still be given
        else:
            return configuration
    paths = os.environ.get("KUBECONFIG", "").split(os.pathsep)
    path = next((p for p in paths if p), str(Path.home() / ".kube" / "config"))
    await k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=path, client_configuration=configuration, persist_config=False)
    return configuration


async def connection_info(configuration: k8s.Configuration) -> kopf.ConnectionInfo:
    """The same credentials, in kopf's terms (as ``kopf.login_via_client`` reads them)."""
    header = (await configuration.get_api_key_with_prefix("BearerToken")
              or await configuration.get_api_key_with_prefix("authorization"))
    parts = header.split(" ", 1) if header else []
    scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0] if parts else None)
    return kopf.ConnectionInfo(
        server=str(configuration.host),
        ca_path=configuration.ssl_ca_cert or None,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file or None,
        private_key_path=configuration.key_file or None,
    )


def secret_headers(data: Mapping[str, Any] | None, ref: SecretRef, *, namespace: str) -> dict[str, str]:
    """The Secret's entries as HTTP headers (header name = key); only ``ref.key`` when it is set."""
    data = dict(data or {})
    where = f"Secret {namespace}/{ref.name}"
    if ref.key is not None:
        if ref.key not in data:
            raise KubeLookupError(f"{where} has no key {ref.key!r}", reason=Reason.SECRET_NOT_FOUND)
        data = {ref.key: data[ref.key]}
    headers: dict[str, str] = {}
    for key, value in data.items():
        try:
            raw = value if isinstance(value, bytes) else base64.b64decode(str(value), validate=True)
            text = raw.decode()
        except (binascii.Error, UnicodeDecodeError):
            raise KubeLookupError(f"{where}: the value of {key!r} is not UTF-8 text",
                                  reason=Reason.SECRET_INVALID) from None
        if "\n" in text.strip() or "\r" in text.strip():
            raise KubeLookupError(f"{where}: the value of {key!r} spans several lines; it cannot be a header",
                                  reason=Reason.SECRET_INVALID)
        headers[key] = text.strip()
    return headers


def endpoint_urls(slices: Iterable[Mapping[str, Any]], *, service: str, port: str, scheme: str = "http") -> list[str]:
    """Base URLs of the ready endpoints of ``service`` on ``port`` (a port name, or a number)."""
    urls: set[str] = set()
    for item in slices:
        labels = (item.get("metadata") or {}).get("labels") or {}
        if labels.get(SERVICE_NAME_LABEL) != service:
            continue  # a label selector is a filter the server may not apply: check it again
        numbers = [p.get("port") for p in item.get("ports") or ()
                   if p.get("port") is not None and (p.get("name") == port or str(p.get("port")) == port)]
        if not numbers:
            continue
        for endpoint in item.get("endpoints") or ():
            conditions = endpoint.get("conditions") or {}
            if conditions.get("ready") is False:  # unset means ready (EndpointSlice API)
                continue
            for address in endpoint.get("addresses") or ():
                host = f"[{address}]" if ":" in address else address
                urls.update(f"{scheme}://{host}:{number}" for number in numbers)
    return sorted(urls)


class KubeClient:
    def __init__(self, api: k8s.ApiClient, *, request_timeout: float) -> None:
        self._api = api
        self._timeout = request_timeout
        self._core = k8s.CoreV1Api(api)
        self._discovery = k8s.DiscoveryV1Api(api)
        self._custom = k8s.CustomObjectsApi(api)

    @classmethod
    async def connect(cls, *, request_timeout: float) -> KubeClient:
        return cls(k8s.ApiClient(await load_configuration()), request_timeout=request_timeout)

    async def close(self) -> None:
        await self._api.close()  # type: ignore[no-untyped-call]

    async def headers_from_secret(self, namespace: str, ref: SecretRef) -> dict[str, str]:
        try:
            secret = await self._core.read_namespaced_secret(ref.name, namespace, _request_timeout=self._timeout)
        except ApiException as exc:
            missing = exc.status == 404
            raise KubeLookupError(
                f"Secret {namespace}/{ref.name} not found" if missing
                else f"cannot read Secret {namespace}/{ref.name}: HTTP {exc.status} {exc.reason}",
                reason=Reason.SECRET_NOT_FOUND if missing else Reason.SECRET_UNREADABLE) from None
        return secret_headers(secret.data, ref, namespace=namespace)

    async def supernode_urls(self, namespace: str, service: str, port: str, scheme: str) -> list[str]:
        try:
            answer = await self._discovery.list_namespaced_endpoint_slice(
                namespace, label_selector=f"{SERVICE_NAME_LABEL}={service}", _request_timeout=self._timeout)
        except ApiException as exc:
            raise KubeLookupError(f"cannot list the EndpointSlices of Service {namespace}/{service}: "
                                  f"HTTP {exc.status} {exc.reason}", reason=Reason.DISCOVERY_FAILED) from None
        slices = [item.to_dict() for item in answer.items or ()]
        return endpoint_urls(slices, service=service, port=port, scheme=scheme)

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """Merge-patch the status subresource; ``False`` when the object is gone."""
        try:
            await self._custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": status},
                _request_timeout=self._timeout, _content_type=_MERGE_PATCH)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True
