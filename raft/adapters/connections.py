"""Resolve a Functions-style connection setting to a connection string or an identity-based
endpoint, following the Functions conventions:

- ``NAME``: a connection string (Azurite's ``UseDevelopmentStorage=true``, the Service Bus
  emulator's ``Endpoint=sb://localhost;...;UseDevelopmentEmulator=true``);
- ``NAME__fullyQualifiedNamespace`` (Service Bus), ``NAME__tableServiceUri`` or
  ``NAME__accountName`` (Table Storage): an endpoint reached with ``DefaultAzureCredential``,
  optionally a user-assigned identity named by ``NAME__clientId``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

AZURITE_CONNECTION_STRING = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)


class MissingConnectionError(ValueError):
    """No usable connection setting."""


@dataclass(frozen=True)
class Connection:
    connection_string: str | None = None
    endpoint: str | None = None
    client_id: str | None = None

    def credential(self) -> Any:
        """A DefaultAzureCredential for identity-based connections."""
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential(managed_identity_client_id=self.client_id)


def resolve(name: str, env: Mapping[str, str], kind: str) -> Connection:
    """`kind` is "servicebus" or "tables"."""
    value = env.get(name)
    if value:
        if value.strip() == "UseDevelopmentStorage=true":
            value = AZURITE_CONNECTION_STRING
        return Connection(connection_string=value)
    client_id = env.get(f"{name}__clientId") or None
    if kind == "servicebus":
        namespace = env.get(f"{name}__fullyQualifiedNamespace")
        if namespace:
            return Connection(endpoint=namespace, client_id=client_id)
    elif kind == "tables":
        uri = env.get(f"{name}__tableServiceUri")
        account = env.get(f"{name}__accountName")
        if uri:
            return Connection(endpoint=uri, client_id=client_id)
        if account:
            return Connection(
                endpoint=f"https://{account}.table.core.windows.net", client_id=client_id
            )
    else:
        raise ValueError(f"unknown connection kind {kind!r}")
    raise MissingConnectionError(
        f"no connection configured: set {name} (a connection string) or its identity-based "
        f"form ({name}__fullyQualifiedNamespace / {name}__tableServiceUri / {name}__accountName)"
    )
