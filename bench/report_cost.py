"""Benchmark 2: what ``hp.report(step, loss=.., acc=.., grad_norm=..)`` costs the training thread.

A session connected to a real supervisor subprocess. Two ways of timing, in
the same run:

* batches: time ``batch`` consecutive calls with perf_counter_ns and divide;
  the distribution is over batches (a batch mean hides single slow calls);
* per call: perf_counter_ns around each call, minus the median cost of an
  empty perf_counter_ns pair measured in the same loop.

Two regimes: ``paced``, where the training thread pauses between batches
(about 1 ms every 100 calls) so the SDK's pump thread drains the queue in the
pause, as in a real loop whose step does work; and ``tight``, calls back to
back, where the pump thread competes with the caller for the GIL. Reference,
same run: a function that does only what report must do at minimum (append
``(step, time(), kwargs)`` to a deque).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np

from bench._common import Result, SupervisorProcess, summary

TARGET_NS = 2000


def _reference() -> Any:
    q: deque[Any] = deque(maxlen=65_536)
    append = q.append
    now = time.time

    def report(step: int, /, **metrics: Any) -> None:
        append((step, now(), metrics))

    return report


def _batches(report: Any, *, batches: int, batch: int, pause_s: float, start: int = 0) -> list[float]:
    out = []
    pc = time.perf_counter_ns
    step = start
    for _ in range(batches):
        t0 = pc()
        for _ in range(batch):
            report(step, loss=0.25, acc=0.9, grad_norm=1.5)
            step += 1
        out.append((pc() - t0) / batch)
        if pause_s:
            time.sleep(pause_s)
    return out


def _per_call(report: Any, *, calls: int, every: int, pause_s: float, start: int = 0) -> tuple[list[float], float]:
    pc = time.perf_counter_ns
    timer = []
    samples = []
    step = start
    for i in range(calls):
        t0 = pc()
        t1 = pc()
        timer.append(t1 - t0)
        t0 = pc()
        report(step, loss=0.25, acc=0.9, grad_norm=1.5)
        t1 = pc()
        samples.append(t1 - t0)
        step += 1
        if pause_s and i % every == every - 1:
            time.sleep(pause_s)
    overhead = float(np.median(timer))
    return [s - overhead for s in samples], overhead


def run(quick: bool) -> Result:
    from trainer_sdk import Float, connect

    result = Result("report cost")
    batches, batch = (300, 100) if quick else (2000, 100)
    calls = 30_000 if quick else 200_000
    data: dict[str, Any] = {}
    with SupervisorProcess() as sup:
        hp = connect("bench-report", {"lr": Float(0.05, min=1e-5, max=1.0)}, address=sup.address, telemetry=False)
        try:
            if not hp.wait_connected(30):
                raise RuntimeError("session did not connect")
            report = type(hp).report  # what hp.report resolves to, minus the attribute lookup below
            ref = _reference()
            _batches(hp.report, batches=20, batch=batch, pause_s=0.001)  # warm up
            # Interleave SDK and reference in chunks so both see the same machine state; the
            # reference runs only after flush(), so the SDK's pump thread is idle during it.
            paced_sdk, paced_ref, tight_sdk, tight_ref = [], [], [], []
            step = 10_000
            chunks = 10
            n = batches // chunks
            for _ in range(chunks):
                paced_sdk += _batches(hp.report, batches=n, batch=batch, pause_s=0.001, start=step)
                step += n * batch
                tight_sdk += _batches(hp.report, batches=n, batch=batch, pause_s=0.0, start=step)
                step += n * batch
                hp.flush(30)
                paced_ref += _batches(ref, batches=n, batch=batch, pause_s=0.001)
                tight_ref += _batches(ref, batches=n, batch=batch, pause_s=0.0)
            # All-in CPU per point: the process's CPU time (every thread: caller, pump,
            # gRPC) for many calls until the supervisor has stored them, over the count.
            cpu_sdk, cpu_ref = [], []
            for _ in range(3 if quick else 7):
                c0 = time.process_time()
                _batches(hp.report, batches=n, batch=batch, pause_s=0.0, start=step)
                step += n * batch
                hp.flush(30)
                cpu_sdk.append((time.process_time() - c0) / (n * batch) * 1e9)
                c0 = time.process_time()
                _batches(ref, batches=n, batch=batch, pause_s=0.0)
                cpu_ref.append((time.process_time() - c0) / (n * batch) * 1e9)
            per_call, timer_ns = _per_call(hp.report, calls=calls, every=100, pause_s=0.001, start=step)
            step += calls
            per_call_ref, _ = _per_call(ref, calls=calls, every=100, pause_s=0.001)
            flushed = hp.flush(30)
            dropped = hp.dropped
            del report
        finally:
            hp.close()
        data["process"] = _process_transport(sup.address, batches=batches, batch=batch, calls=calls // 2)
    data.update(paced_batches_ns=summary(paced_sdk), paced_reference_ns=summary(paced_ref),
                tight_batches_ns=summary(tight_sdk), tight_reference_ns=summary(tight_ref),
                per_call_ns=summary(per_call), per_call_reference_ns=summary(per_call_ref),
                timer_overhead_ns=timer_ns, flushed=flushed, dropped=dropped, batch=batch, batches=batches,
                calls=calls, cpu_all_threads_ns=summary(cpu_sdk), cpu_reference_ns=summary(cpu_ref),
                histogram_ns=np.histogram(np.clip(per_call, 0, 20_000), bins=40)[0].tolist())
    p = data["paced_batches_ns"]
    ratio = p["p50"] / data["paced_reference_ns"]["p50"]
    result.row("paced, batch mean: median", p["p50"], "ns/call", target=f"< {TARGET_NS} ns", met=p["p50"] < TARGET_NS,
               note=f"p99 {p['p99']:.0f} ns; {ratio:.1f}x the bare deque-append reference "
                    f"({data['paced_reference_ns']['p50']:.0f} ns); {batches} batches of {batch}")
    t = data["tight_batches_ns"]
    result.row("tight loop, batch mean: median", t["p50"], "ns/call",
               note=f"p99 {t['p99']:.0f} ns; reference {data['tight_reference_ns']['p50']:.0f} ns; "
                    "the pump thread competes for the GIL; flushed before each reference chunk")
    c = data["per_call_ns"]
    result.row("paced, per call: median", c["p50"], "ns/call", target=f"< {TARGET_NS} ns", met=c["p50"] < TARGET_NS,
               note=f"p90 {c['p90']:.0f}, p99 {c['p99']:.0f}, max {c['max']/1000:.0f} us over {calls:,} calls; "
                    f"perf_counter_ns pair ({timer_ns:.0f} ns) subtracted; reference p50 "
                    f"{data['per_call_reference_ns']['p50']:.0f} ns, p99 {data['per_call_reference_ns']['p99']:.0f} ns")
    cs, cr = data["cpu_all_threads_ns"], data["cpu_reference_ns"]
    result.row("all-in CPU per call, every thread, until stored: median", cs["p50"], "ns CPU/call",
               note=f"caller + pump + gRPC threads of the trainer process, {cs['n']} rounds of {n*batch:,} calls "
                    f"then flush(); reference {cr['p50']:.0f} ns; supervisor CPU not included")
    result.row("points dropped / all stored at the end", f"{dropped} / {flushed}", "",
               note="bounded buffer 65,536 points; flush(30 s) at the end")
    pp, pc = data["process"]["paced_batches_ns"], data["process"]["per_call_ns"]
    result.row("process transport, paced, batch mean: median", pp["p50"], "ns/call", target=f"< {TARGET_NS} ns",
               met=pp["p50"] < TARGET_NS,
               note=f"p99 {pp['p99']:.0f} ns; connect(transport=\"process\"): the call also reads the bell and, "
                    "every flush_interval, converts and ships the queued points itself")
    result.row("process transport, paced, per call: median", pc["p50"], "ns/call", target=f"< {TARGET_NS} ns",
               met=pc["p50"] < TARGET_NS,
               note=f"p90 {pc['p90']:.0f}, p99 {pc['p99']:.0f}, max {pc['max']/1000:.0f} us (a shipment) over "
                    f"{pc['n']:,} calls; training-process CPU per call until stored "
                    f"{data['process']['cpu_ns']['p50']:.0f} ns (the sidecar's own CPU not included)")
    result.data = data
    return result


def _process_transport(address: str, *, batches: int, batch: int, calls: int) -> dict[str, Any]:
    """The same paced measurements with ``transport="process"``: no SDK thread competes for the GIL."""
    from trainer_sdk import Float, connect

    hp = connect("bench-report-process", {"lr": Float(0.05, min=1e-5, max=1.0)}, address=address, telemetry=False,
                 transport="process")
    try:
        if not hp.wait_connected(30):
            raise RuntimeError("process-transport session did not connect")
        _batches(hp.report, batches=20, batch=batch, pause_s=0.001)  # warm up
        paced = _batches(hp.report, batches=batches, batch=batch, pause_s=0.001, start=10_000)
        per_call, _ = _per_call(hp.report, calls=calls, every=100, pause_s=0.001, start=10_000 + batches * batch)
        cpu = []
        step = 10_000 + batches * batch + calls
        for _ in range(5):
            c0 = time.process_time()
            _batches(hp.report, batches=batches // 10, batch=batch, pause_s=0.0, start=step)
            step += batches // 10 * batch
            hp.flush(30)
            cpu.append((time.process_time() - c0) / (batches // 10 * batch) * 1e9)
    finally:
        hp.close()
    return {"paced_batches_ns": summary(paced), "per_call_ns": summary(per_call), "cpu_ns": summary(cpu)}
