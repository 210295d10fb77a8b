"""Background sampling of GPU (or, without one, host) usage for ``hp.report``.

``connect()`` starts a :class:`TelemetrySampler` by default; it can also be used
on its own::

    with TelemetrySampler(lambda values: hp.report(step, **values), interval=5.0):
        train()

Every ``interval`` seconds it calls ``emit`` with, per visible NVIDIA device ``i``
(``$CUDA_VISIBLE_DEVICES`` order, as CUDA numbers them):

==============================  =========================================
``gpu{i}_utilization_ratio``    busy fraction of the last sample period, 0-1
``gpu{i}_memory_used_bytes``    device memory in use, bytes
``gpu{i}_power_watts``          board power draw, watts
``gpu{i}_temperature_celsius``  GPU core temperature, degrees Celsius
==============================  =========================================

Without nvidia-ml-py or an NVIDIA driver it reports the host instead, from
``/proc`` on Linux: ``host_cpu_utilization_ratio`` (all CPUs, 0-1) and
``host_memory_used_bytes`` (total minus available). It says so once, at info
level, and never raises into the training process: a failing sample is logged
once and sampling goes on. It imports neither torch nor anything beyond the
standard library (``pynvml`` lazily, on the sampler's thread).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, Self

log = logging.getLogger("trainer_sdk.telemetry")

Emit = Callable[[dict[str, float]], None]

__all__ = ["TelemetrySampler", "host_memory_used_bytes", "nvml_metrics", "read_cpu_times"]


def nvml_metrics(
    index: int,
    *,
    utilization_percent: float | None,
    memory_used_bytes: float | None,
    power_milliwatts: float | None,
    temperature_celsius: float | None,
) -> dict[str, float]:
    """NVML's readings of device ``index`` in base units; a reading that is None is left out.

    NVML reports utilization in percent and power in milliwatts; memory is
    already in bytes and temperature in degrees Celsius.
    """
    out: dict[str, float] = {}
    if utilization_percent is not None:
        out[f"gpu{index}_utilization_ratio"] = min(max(float(utilization_percent) / 100.0, 0.0), 1.0)
    if memory_used_bytes is not None:
        out[f"gpu{index}_memory_used_bytes"] = float(memory_used_bytes)
    if power_milliwatts is not None:
        out[f"gpu{index}_power_watts"] = float(power_milliwatts) / 1000.0
    if temperature_celsius is not None:
        out[f"gpu{index}_temperature_celsius"] = float(temperature_celsius)
    return out


# -- NVML -------------------------------------------------------------------------------------------


def _visible_indices(uuids: Sequence[str], env: str | None) -> list[int]:
    """NVML indices of the devices CUDA numbers 0, 1, ... under ``$CUDA_VISIBLE_DEVICES``.

    Entries are indices or UUID prefixes; like CUDA, the list ends at the first
    entry that names no device.
    """
    if env is None:
        return list(range(len(uuids)))
    chosen: list[int] = []
    for entry in (e.strip() for e in env.split(",")):
        if entry.isdigit():
            index = int(entry)
            if index >= len(uuids):
                break
        else:
            matches = [i for i, uuid in enumerate(uuids) if entry and uuid.startswith(entry)]
            if len(matches) != 1:
                break
            index = matches[0]
        if index in chosen:
            break
        chosen.append(index)
    return chosen


class _NvmlSource:
    """Reads the visible devices through pynvml; construction fails without driver or library."""

    def __init__(self) -> None:
        import pynvml  # nvidia-ml-py; ImportError without it

        self.nvml: Any = pynvml
        pynvml.nvmlInit()  # NVMLError without a driver
        try:
            count = pynvml.nvmlDeviceGetCount()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            uuids = [_text(pynvml.nvmlDeviceGetUUID(h)) for h in handles]
            visible = _visible_indices(uuids, os.environ.get("CUDA_VISIBLE_DEVICES"))
            if not visible:
                raise RuntimeError("no visible NVIDIA device")
            self.handles = [handles[i] for i in visible]
        except BaseException:
            pynvml.nvmlShutdown()
            raise
        self._unsupported: set[tuple[int, str]] = set()

    def describe(self) -> str:
        return f"NVIDIA GPU telemetry for {len(self.handles)} device(s)"

    def _read(self, i: int, field: str, call: Callable[..., Any], *args: Any) -> Any:
        if (i, field) in self._unsupported:
            return None
        try:
            return call(*args)
        except self.nvml.NVMLError as exc:
            # Not supported on this device (MIG instances, some boards): stop asking.
            not_supported = getattr(self.nvml, "NVML_ERROR_NOT_SUPPORTED", None)
            if getattr(exc, "value", None) == not_supported:
                self._unsupported.add((i, field))
                return None
            raise

    def sample(self) -> dict[str, float]:
        nvml = self.nvml
        out: dict[str, float] = {}
        for i, handle in enumerate(self.handles):
            utilization = self._read(i, "utilization", nvml.nvmlDeviceGetUtilizationRates, handle)
            memory = self._read(i, "memory", nvml.nvmlDeviceGetMemoryInfo, handle)
            power = self._read(i, "power", nvml.nvmlDeviceGetPowerUsage, handle)
            temperature = self._read(i, "temperature", nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
            out.update(
                nvml_metrics(
                    i,
                    utilization_percent=None if utilization is None else utilization.gpu,
                    memory_used_bytes=None if memory is None else memory.used,
                    power_milliwatts=power,
                    temperature_celsius=temperature,
                )
            )
        return out

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:  # shutting down anyway
            pass


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- host -------------------------------------------------------------------------------------------


def read_cpu_times(path: str = "/proc/stat") -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from the ``cpu`` line of /proc/stat."""
    with open(path, encoding="ascii") as f:
        fields = f.readline().split()
    if not fields or fields[0] != "cpu":
        raise ValueError(f"{path}: first line is not the 'cpu' total")
    values = [int(v) for v in fields[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is
    # already counted in user and nice, so only the first eight make the total.
    total = sum(values[:8])
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return total - idle, total


def host_memory_used_bytes(path: str = "/proc/meminfo") -> float:
    """MemTotal minus MemAvailable, in bytes."""
    fields: dict[str, int] = {}
    with open(path, encoding="ascii") as f:
        for line in f:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                fields[name] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    return float(fields["MemTotal"] - fields["MemAvailable"])


class _HostSource:
    def __init__(self) -> None:
        self._last = read_cpu_times()  # OSError where there is no /proc
        host_memory_used_bytes()

    def describe(self) -> str:
        return "host CPU and memory"

    def sample(self) -> dict[str, float]:
        busy, total = read_cpu_times()
        last_busy, last_total = self._last
        self._last = (busy, total)
        out = {"host_memory_used_bytes": host_memory_used_bytes()}
        if total > last_total:
            out["host_cpu_utilization_ratio"] = min(max((busy - last_busy) / (total - last_total), 0.0), 1.0)
        return out

    def close(self) -> None:
        pass


# -- the sampler ----------------------------------------------------------------------------------------


class TelemetrySampler:
    """Calls ``emit(values)`` every ``interval`` seconds from a daemon thread.

    ``start()`` / ``stop()``, or use it as a context manager. ``emit`` runs on
    the sampler's thread; it must not block for long (``hp.report`` does not).
    """

    def __init__(self, emit: Emit, *, interval: float = 5.0) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be positive seconds but got {interval}")
        self._emit = emit
        self.interval = float(interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.source: str | None = None  # what is being sampled, once the thread has started
        self._failed_once = False

    def start(self) -> Self:
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="trainer_sdk-telemetry", daemon=True)
                self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop sampling and wait up to ``timeout`` seconds for the thread to end."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _open_source(self) -> _NvmlSource | _HostSource | None:
        try:
            return _NvmlSource()
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        try:
            source = _HostSource()
        except Exception as exc:  # no /proc (not Linux)
            log.info("telemetry off: no NVIDIA GPU telemetry (%s) and no host readings (%s)", reason, exc)
            return None
        log.info("no NVIDIA GPU telemetry (%s): reporting host CPU and memory instead", reason)
        return source

    def _run(self) -> None:
        source = self._open_source()
        if source is None:
            return
        self.source = source.describe()
        try:
            while not self._stop.wait(self.interval):
                try:
                    values = source.sample()
                    if values:
                        self._emit(values)
                except Exception:
                    if not self._failed_once:
                        self._failed_once = True
                        log.warning("telemetry sample failed (logged once; sampling continues)", exc_info=True)
        finally:
            source.close()
