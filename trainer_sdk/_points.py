"""Reported metric points to plain floats: the one conversion both transports run.

``report`` converts CPU tensors at once (:func:`cpu_tensors_to_floats`); the
rest is converted per batch: by the thread transport on its pump thread, by
the process transport on the training thread, once per shipment.
"""

from __future__ import annotations

import logging
import sys
from collections import deque
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("trainer_sdk")

Point = tuple[int, float, dict[str, float]]
"""(step, time, {name: value}) with every value a float."""


def cpu_tensors_to_floats(metrics: dict[str, Any]) -> None:
    """Replace one-element CPU tensors in a report's own ``metrics`` dict by their values, in place.

    Called by ``report`` when a value is not a float. On the CPU ``.item()``
    waits for nothing and costs about 0.2 µs while the tensor is still in
    cache; converting the same tensors later, in a batch, cost the process
    transport's training thread about 3 µs each (measured in the digits loop:
    the tensors had left the cache by the time points shipped). CUDA tensors
    stay tensors: converting them here would wait for the device at every
    step, so they are converted together, once per batch. So are pinned CPU
    tensors once CUDA is in use: ``.to("cpu", non_blocking=True)`` returns one
    whose copy from the device may not have landed yet. Never raises: what
    does not convert here is left for :class:`PointConverter`.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return
    tensor_type = torch.Tensor
    cuda_in_use = torch.cuda.is_initialized()
    for name, value in metrics.items():
        if isinstance(value, tensor_type) and value.is_cpu and not (cuda_in_use and value.is_pinned()):
            try:
                metrics[name] = value.item()  # same keys: no resize, safe while iterating
            except Exception:  # several elements, or anything else: the batch conversion warns about it
                pass


class PointConverter:
    """Turns queued ``(step, time, metrics)`` into :data:`Point` s, warning once per bad metric name.

    Values may be floats (the fast path), 0-d tensors (converted together, one
    torch call per device and drain), or anything ``float()`` accepts; a value
    that is not a number is dropped with one warning per name. NaN and
    infinities are kept (guards act on them), with one warning per name.
    """

    def __init__(self, state: Any) -> None:
        self._state = state  # for the last step, in warnings
        self._warned: set[str] = set()

    def drain(
        self,
        queue: deque[tuple[int, float, dict[str, Any]]],
        numbers: Iterator[int] | None = None,
        limit: int | None = None,
    ) -> list[Any]:
        """The queued points (at most ``limit``), as :data:`Point` s, or as ``(number, *Point)`` with ``numbers``.

        Numbering here, in the one pass, keeps it to one tuple per point: under a
        full buffer every extra object per point is more work for the collector.
        Never raises for a bad value or step: such a value (or point) is dropped
        with one warning.
        """
        popleft = queue.popleft
        left = -1 if limit is None else limit
        torch = sys.modules.get("torch")  # tensors exist only if the trainer imported torch
        tensor_type = torch.Tensor if torch is not None else ()
        tensors: list[tuple[dict[str, float], str, Any]] = []
        converted: list[Any] = []
        while left:
            left -= 1
            try:
                step, when, metrics = popleft()
            except IndexError:
                break
            if type(step) is not int:
                try:
                    step = int(step)
                except (TypeError, ValueError, OverflowError):
                    self._warn_once("step:", "a step must be an integer, got %r; dropping such points", step)
                    continue
            values: dict[str, float] = {}
            for name, value in metrics.items():
                # Floats inline (this loop runs for every value); tensors are converted
                # together below; anything else (ints, numpy scalars) takes the slow path.
                if type(value) is float:
                    if value - value != 0.0:  # NaN or an infinity
                        self._non_finite(name, value)
                    values[name] = value
                elif isinstance(value, tensor_type):
                    tensors.append((values, name, value))
                else:
                    self._keep(values, name, self._to_float(name, value))
            if numbers is None:
                converted.append((step, when, values))
            else:
                converted.append((next(numbers), step, when, values))
        if tensors:
            self._tensors_to_floats(torch, tensors)
        return converted

    def _tensors_to_floats(self, torch: Any, tensors: list[tuple[dict[str, float], str, Any]]) -> None:
        """Convert a drain's 0-d tensors with one torch call per device, not one ``.item()`` each.

        Every torch call releases and retakes the GIL; one per tensor, on the
        pump thread, made the training thread wait for the GIL after its own
        torch calls hundreds of times a second. A CUDA tensor syncs here, once
        per device and drain; so does a pinned CPU tensor, whose non-blocking
        copy from a device may still be in flight.
        """
        by_device: dict[Any, list[tuple[dict[str, float], str, Any]]] = {}
        for item in tensors:
            by_device.setdefault(item[2].device, []).append(item)
        for device, items in by_device.items():
            try:
                if device.type == "cpu" and torch.cuda.is_initialized() and any(t.is_pinned() for _, _, t in items):
                    torch.cuda.synchronize()  # every stream: the copy may be on any of them
            except RuntimeError:  # CUDA unusable (a forked child, say): nothing of ours can be in flight
                pass
            try:
                numbers = torch.stack([t for _, _, t in items]).double().tolist()
            except (RuntimeError, TypeError, ValueError):  # shapes that do not stack: one at a time
                numbers = [t for _, _, t in items]
            for (values, name, _), number in zip(items, numbers, strict=True):
                # a float, or what did not stack (or stacked to a list: several elements each)
                self._keep(values, name, number if type(number) is float else self._to_float(name, number))

    def _keep(self, values: dict[str, float], name: str, number: float | None) -> None:
        if number is not None:
            if number - number != 0.0:  # NaN or an infinity
                self._non_finite(name, number)
            values[name] = number

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def _non_finite(self, name: str, number: float) -> None:
        self._warn_once(
            "non-finite:" + name,
            "metric %r is %r at step %s; sending it (guards act on it)",
            name,
            number,
            self._state.last_step,
        )

    def _to_float(self, name: str, value: Any) -> float | None:
        if isinstance(value, str):
            number = None
        else:
            try:
                number = float(value)  # a tensor's .item(); 10**400 overflows; anything may raise here
            except Exception:
                number = None
        if number is None:
            self._warn_once("not-a-number:" + name, "metric %r: %r is not a number; dropping such values", name, value)
        return number
