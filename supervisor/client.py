"""A small synchronous client of the OperatorService, for the CLI and for scripts."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

from google.protobuf import json_format

from supervisor._address import DEFAULT_ADDRESS, default_address
from trainer_sdk import _wire
from trainer_sdk._tls import secure_or_insecure_channel, tls_trust
from trainer_sdk.protocol.v1 import supervisor_pb2 as pb
from trainer_sdk.protocol.v1 import supervisor_pb2_grpc as pb_grpc

__all__ = ["DEFAULT_ADDRESS", "OperatorClient", "default_address"]


class OperatorClient:
    """``OperatorClient("127.0.0.1:50051").set("run", {"lr": 0.01}, wait=True)``.

    Errors come back as grpc.RpcError with the server's message (which names
    the parameter and the reason for a refused change).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        tls_ca: str | None = None,
    ) -> None:
        """``tls_ca`` (default ``$SUPERVISOR_TLS_CA``): TLS, trusting this PEM file, or ``"system"``'s roots."""
        self.address = address or default_address()
        self._channel = secure_or_insecure_channel(self.address, tls_trust(tls_ca))
        self._stub = pb_grpc.OperatorServiceStub(self._channel)
        token = token or os.environ.get("SUPERVISOR_TOKEN")
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> OperatorClient:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def call(
        self, method: str, request: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """One unary call with ``request`` and the result in proto3 JSON form, as the HTTP gateway takes and
        gives them (``HttpOperatorClient.call``'s twin: the CLI formats both the same way)."""
        stub_method = getattr(self._stub, method, None)
        descriptor = pb.DESCRIPTOR.services_by_name["OperatorService"].methods_by_name.get(method)
        if stub_method is None or descriptor is None:
            raise ValueError(f"OperatorService has no method {method!r}")
        message = json_format.ParseDict(dict(request or {}), getattr(pb, descriptor.input_type.name)())
        response = stub_method(message, metadata=self._metadata, timeout=self.timeout if timeout is None else timeout)
        return json_format.MessageToDict(response, always_print_fields_with_no_presence=True)

    def runs(self, glob: str = "") -> list[pb.RunInfo]:
        return list(
            self._stub.ListRuns(pb.ListRunsRequest(run_glob=glob), metadata=self._metadata, timeout=self.timeout).runs
        )

    def set(
        self,
        run: str,
        changes: Mapping[str, Any],
        *,
        reason: str = "",
        apply_at_step: int | None = None,
        wait: bool = False,
        timeout: float = 30.0,
    ) -> pb.SetParamsResponse:
        """Values may be typed or text (text is parsed by the server according to each parameter's type)."""
        request = pb.SetParamsRequest(
            run=run, changes=_wire.values_to_wire(dict(changes)), reason=reason, wait=wait, timeout_seconds=timeout
        )
        if apply_at_step is not None:
            request.apply_at_step = apply_at_step
        return self._stub.SetParams(
            request, metadata=self._metadata, timeout=(timeout + self.timeout) if wait else self.timeout
        )

    def trigger(self, run: str, name: str, *, reason: str = "") -> int:
        return self._stub.FireTrigger(
            pb.FireTriggerRequest(run=run, name=name, reason=reason), metadata=self._metadata, timeout=self.timeout
        ).version

    def release(self, run: str, names: list[str]) -> list[str]:
        return list(
            self._stub.ReleaseParams(
                pb.ReleaseParamsRequest(run=run, names=names), metadata=self._metadata, timeout=self.timeout
            ).released
        )

    def history(self, run: str) -> list[pb.HistoryEntry]:
        return list(
            self._stub.GetHistory(pb.GetHistoryRequest(run=run), metadata=self._metadata, timeout=self.timeout).entries
        )

    def metrics(self, run: str, name: str = "", page_size: int = 10_000) -> Iterator[pb.StoredMetric]:
        token = ""
        while True:
            page = self._stub.GetMetrics(
                pb.GetMetricsRequest(run=run, name=name, page_token=token, page_size=page_size),
                metadata=self._metadata,
                timeout=self.timeout,
            )
            yield from page.points
            token = page.next_page_token
            if not token:
                return
