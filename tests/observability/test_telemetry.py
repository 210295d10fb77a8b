"""TelemetrySampler: the host fallback for real, the NVML path through a stand-in pynvml module."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from trainer_sdk import telemetry
from trainer_sdk.telemetry import (
    TelemetrySampler,
    host_memory_used_bytes,
    nvml_metrics,
    read_cpu_times,
)

ROOT = Path(__file__).resolve().parents[2]


class Collect:
    """An emit() that records what it got and lets a test wait for n calls."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[dict[str, float]] = []
        self.cond = threading.Condition()
        self.fail = fail

    def __call__(self, values: dict[str, float]) -> None:
        with self.cond:
            self.calls.append(values)
            self.cond.notify_all()
        if self.fail:
            raise RuntimeError("emit failed on purpose")

    def wait(self, n: int, timeout: float = 10.0) -> list[dict[str, float]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.calls) >= n, timeout), f"only {len(self.calls)} calls"
            return list(self.calls)


# -- conversions ---------------------------------------------------------------------------------------


def test_nvml_readings_become_base_units() -> None:
    assert nvml_metrics(
        3, utilization_percent=87, memory_used_bytes=2 * 1024**3, power_milliwatts=245_500, temperature_celsius=66
    ) == {
        "gpu3_utilization_ratio": 0.87,
        "gpu3_memory_used_bytes": 2147483648.0,
        "gpu3_power_watts": 245.5,
        "gpu3_temperature_celsius": 66.0,
    }
    assert nvml_metrics(
        0, utilization_percent=None, memory_used_bytes=5, power_milliwatts=None, temperature_celsius=None
    ) == {"gpu0_memory_used_bytes": 5.0}
    assert nvml_metrics(
        0, utilization_percent=140, memory_used_bytes=None, power_milliwatts=None, temperature_celsius=None
    ) == {"gpu0_utilization_ratio": 1.0}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (None, [0, 1, 2]),
        ("2,0", [2, 0]),
        ("", []),
        ("1,7,0", [1]),  # like CUDA: the list ends at the first device that does not exist
        ("GPU-bbb", [1]),
        ("GPU-b,GPU-a", [1, 0]),
        ("GPU-", []),  # ambiguous prefix
        ("0,0", [0]),
    ],
)
def test_cuda_visible_devices(env: str | None, expected: list[int]) -> None:
    assert telemetry._visible_indices(["GPU-aaa", "GPU-bbb", "GPU-ccc"], env) == expected


def test_proc_parsers(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 50 800 40 3 2 0 7 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    busy, total = read_cpu_times(str(stat))
    assert total == 100 + 5 + 50 + 800 + 40 + 3 + 2 + 0 and busy == total - 840
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000 kB\nMemFree:         1000 kB\nMemAvailable:    6000 kB\n")
    assert host_memory_used_bytes(str(meminfo)) == 10_000 * 1024


# -- the sampler, host fallback -------------------------------------------------------------------------


def test_host_fallback_without_nvml(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc: host telemetry is Linux-only")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # "import pynvml" raises ImportError
    caplog.set_level(logging.INFO, logger="trainer_sdk.telemetry")
    emit = Collect()
    with TelemetrySampler(emit, interval=0.05) as sampler:
        calls = emit.wait(3)
        assert sampler.running and sampler.source == "host CPU and memory"
    assert not sampler.running
    for values in calls:
        assert set(values) == {"host_cpu_utilization_ratio", "host_memory_used_bytes"} or set(values) == {
            "host_memory_used_bytes"
        }  # two readings in the same clock tick give no CPU figure
        assert values["host_memory_used_bytes"] > 0
        assert 0.0 <= values.get("host_cpu_utilization_ratio", 0.0) <= 1.0
    messages = [r for r in caplog.records if r.name == "trainer_sdk.telemetry"]
    assert len(messages) == 1 and messages[0].levelno == logging.INFO
    assert "reporting host CPU and memory instead" in messages[0].getMessage()


def test_this_machine_reports_gpu_or_host(caplog: pytest.LogCaptureFixture) -> None:
    """The real pynvml: GPU figures where there is a driver, the host's where there is not."""
    emit = Collect()
    with TelemetrySampler(emit, interval=0.05):
        values = emit.wait(2)[-1]
    names = set(values)
    assert names and (all(n.startswith("gpu") for n in names) or all(n.startswith("host_") for n in names))


def test_failing_samples_are_logged_once_and_sampling_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    caplog.set_level(logging.INFO, logger="trainer_sdk.telemetry")
    emit = Collect(fail=True)
    with TelemetrySampler(emit, interval=0.02):
        emit.wait(4)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "logged once" in warnings[0].getMessage()


def test_start_stop_are_idempotent_and_stop_is_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    emit = Collect()
    sampler = TelemetrySampler(emit, interval=30.0)
    assert sampler.start() is sampler
    thread = sampler._thread
    sampler.start()
    assert sampler._thread is thread
    started = time.monotonic()
    sampler.stop()
    sampler.stop()
    assert time.monotonic() - started < 2.0 and not sampler.running  # event.wait, not sleep
    assert emit.calls == []
    sampler.start()  # a stopped sampler stays stopped
    assert not sampler.running


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive seconds but got 0"):
        TelemetrySampler(lambda values: None, interval=0)


# -- the sampler, NVML path through a stand-in module ----------------------------------------------------


def fake_pynvml(*, devices: int = 2, power_supported: bool = True) -> types.ModuleType:
    """Just the pynvml surface the sampler uses, with NVML's units (percent, bytes, milliwatts)."""
    nvml = types.ModuleType("pynvml")
    nvml.NVML_ERROR_NOT_SUPPORTED = 3
    nvml.NVML_TEMPERATURE_GPU = 0
    nvml.calls = {"init": 0, "shutdown": 0}

    class NVMLError(Exception):
        def __init__(self, value: int) -> None:
            super().__init__(f"NVML error {value}")
            self.value = value

    nvml.NVMLError = NVMLError
    nvml.nvmlInit = lambda: nvml.calls.__setitem__("init", nvml.calls["init"] + 1)
    nvml.nvmlShutdown = lambda: nvml.calls.__setitem__("shutdown", nvml.calls["shutdown"] + 1)
    nvml.nvmlDeviceGetCount = lambda: devices
    nvml.nvmlDeviceGetHandleByIndex = lambda i: ("handle", i)
    nvml.nvmlDeviceGetUUID = lambda h: f"GPU-{h[1]}000"
    nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=50 + h[1], memory=10)
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=80 * 2**30, used=(h[1] + 1) * 2**30, free=0)

    def power(h: tuple[str, int]) -> int:
        if not power_supported:
            raise NVMLError(nvml.NVML_ERROR_NOT_SUPPORTED)
        return 300_000 + h[1] * 1000

    nvml.nvmlDeviceGetPowerUsage = power
    nvml.nvmlDeviceGetTemperature = lambda h, sensor: 60 + h[1]
    return nvml


def test_nvml_path(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = fake_pynvml(devices=2)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    emit = Collect()
    with TelemetrySampler(emit, interval=0.02) as sampler:
        values = emit.wait(1)[0]
        assert sampler.source == "NVIDIA GPU telemetry for 2 device(s)"
    assert values == {
        "gpu0_utilization_ratio": 0.5,
        "gpu0_memory_used_bytes": float(2**30),
        "gpu0_power_watts": 300.0,
        "gpu0_temperature_celsius": 60.0,
        "gpu1_utilization_ratio": 0.51,
        "gpu1_memory_used_bytes": float(2 * 2**30),
        "gpu1_power_watts": 301.0,
        "gpu1_temperature_celsius": 61.0,
    }
    assert nvml.calls == {"init": 1, "shutdown": 1}


def test_nvml_numbers_devices_as_cuda_does_and_skips_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(devices=4, power_supported=False))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    emit = Collect()
    with TelemetrySampler(emit, interval=0.02):
        values = emit.wait(2)[-1]
    # CUDA calls NVML's device 3 "cuda:0": so do we.
    assert values == {
        "gpu0_utilization_ratio": 0.53,
        "gpu0_memory_used_bytes": float(4 * 2**30),
        "gpu0_temperature_celsius": 63.0,
    }


def test_nvml_without_driver_falls_back(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc: host telemetry is Linux-only")
    nvml = fake_pynvml()

    def no_driver() -> None:
        raise nvml.NVMLError(9)  # NVML_ERROR_DRIVER_NOT_LOADED

    nvml.nvmlInit = no_driver
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    caplog.set_level(logging.INFO, logger="trainer_sdk.telemetry")
    emit = Collect()
    with TelemetrySampler(emit, interval=0.02):
        values = emit.wait(1)[0]
    assert "host_memory_used_bytes" in values
    (record,) = [r for r in caplog.records if r.name == "trainer_sdk.telemetry"]
    assert "NVML error 9" in record.getMessage()


# -- imports ---------------------------------------------------------------------------------------------


def test_sdk_and_telemetry_import_without_torch() -> None:
    code = (
        "import sys, trainer_sdk, trainer_sdk.telemetry, trainer_sdk.torch_utils\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'pynvml' not in sys.modules, 'pynvml was imported eagerly'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
