"""Benchmark 5: many concurrent trainer streams against one supervisor.

For each size N, a fresh supervisor subprocess (with the ``plateau`` policy on
every ``scale-*`` run, and the bench's KickPolicy on the probe run) and
load-generator processes (bench/_loadgen.py, up to 250 raw gRPC streams each)
that report 10 values per point at 10 points/s per stream, batched as the SDK
batches: at most every ``flush_interval`` (0.25 s), or every interval the
supervisor's Pacing asks for when that is longer (streams / 1000 s by default:
1 s at 1000 streams). After a warm-up,
over a measurement window:

* stored values/s: MetricsAck'ed points summed over streams (the supervisor
  acks only after the commit that stored them), times 10; also the
  supervisor's own ``points_received`` (ListRuns) at the window's edges;
* control latency under load, from this process: ``OperatorClient.set`` ->
  visible in a probe session's cache (poller sleeping 0.5 ms) and a Health.Check
  round trip as the same-run reference, every ~100 ms; on a thread of their
  own, report -> KickPolicy -> visible on a second probe session;
* supervisor CPU (utime+stime from /proc, in cores) and peak RSS (VmHWM);
  load generators' CPU too, since they share the same cores.

In full mode the largest size runs once more, with py-spy sampling the
supervisor (raw stacks with the GIL held, summarised into the top frames, and a
flame graph SVG) from when the plateau decisions begin: all runs reach their
patience in the same seconds, and that wave is when the p99 is made. A pass of
its own, so py-spy's CPU is in none of the other figures.

Also in full mode, the largest size with plateau runs once more with the load
generators at ``nice 10``: they stand in for trainers, which run on other machines,
and at the supervisor's priority they take its CPUs when it needs them (every row
says how much of the window the event-loop thread waited for a CPU). That row is
not judged: the judged one keeps them at the supervisor's priority, as every table
before it did.

The load the issue fixes (10 values at 10 Hz a stream) offers exactly 100,000
values/s at 1000 streams, so storing all of it cannot show that the
supervisor has room for more; the capacity row offers twice that (20 Hz).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench._common import (
    PYTHON,
    ROOT,
    Result,
    SupervisorProcess,
    cpu_counters,
    cpu_seconds,
    cpu_wait_seconds,
    descendant_pids,
    is_db_writer,
    machine_usage,
    python_loop_ms,
    rel,
    rss_mib,
    rss_peak_mib,
    summary,
    thread_cpu_seconds,
)
from bench.control_latency import Poller
from trainer_sdk import DEFAULT_FLUSH_INTERVAL

VALUES_PER_POINT = 10
RATE = 10.0
CAPACITY_RATE = 20.0  # points/s a stream in the capacity row: twice the load the issue fixes
YIELDING_NICE = 10  # the load generators' niceness in the row where they yield the CPUs to the supervisor
PER_PROCESS = 250
TARGET_STREAMS = 1000
TARGET_VALUES_S = 100_000
TARGET_P99_MS = 50.0
TARGET_RSS_MIB = 1024
PROFILE_S = 15.0  # about as long as the decision wave lasts at 1000 streams
PY_SPY = Path(PYTHON).with_name("py-spy")  # optional: without it the scale benchmark skips the profile
WAVE_WATCHED_RUN = "scale-0000"
WAVE_STARTED_AT_VERSION = 2  # its second plateau decision: the other runs are deciding too

CONFIG = """
[[policy]]
id = "plateau"
type = "plateau"
runs = "scale-*"
metric = "val_loss"
factor = 0.5
patience = 5

[[policy]]
id = "kick"
type = "bench.kick_policy:KickPolicy"
runs = "probe-kick"
"""


def _processes(n: int) -> list[tuple[int, int]]:
    """(first, count) per load-generator process."""
    procs = max(1, math.ceil(n / PER_PROCESS))
    base, extra = divmod(n, procs)
    out, first = [], 0
    for i in range(procs):
        count = base + (1 if i < extra else 0)
        out.append((first, count))
        first += count
    return out


def _probe(sup: SupervisorProcess, stop: threading.Event, out: dict[str, list[float]], shards: int = 1) -> None:
    """Control probes until ``stop``: API set and Health.Check every ~100 ms, and policy kicks.

    With several shards the API probes alternate between a run of the front door and one of
    shard 1, whose changes the front door forwards (``api_forwarded_ms`` holds those alone).

    The kicks run on their own thread: a kick waits for the trainer's next paced send (up to
    1 s at 1000 streams), and sharing one thread with the API probes would leave a p99 of a
    few dozen API samples, that is, their maximum.
    """
    from supervisor.client import OperatorClient
    from trainer_sdk import Float, connect

    spec = {"lr": Float(0.05, min=1e-5, max=1.0, log=True)}
    api = connect("probe-api", spec, address=sup.address, telemetry=False)
    kick = connect("probe-kick", spec, address=sup.address, telemetry=False)
    sessions = [api, kick]
    if shards > 1:
        from supervisor.sharding import owner

        away = next(name for i in range(100) if owner(name := f"probe-api-{i}", shards) == 1)
        sessions.append(connect(away, spec, address=sup.address, telemetry=False))
    client = OperatorClient(sup.address)
    channel = grpc.insecure_channel(sup.address)
    health = health_pb2_grpc.HealthStub(channel)
    poller = Poller(sessions, "sleep", interval=0.0005)  # 0.5 ms resolution; spares the shared CPUs
    done = threading.Event()  # set once the API probes end: the kicker stops before the sessions close
    kicker = threading.Thread(target=_repeat, args=("kicker", _kick_once, (poller, kick), done, out, 2), daemon=True)
    try:
        t0 = time.monotonic()
        if not all(session.wait_connected(60) for session in sessions):
            out["failed"].append(f"probe sessions not connected after {time.monotonic() - t0:.0f} s")
        poller.start()
        kicker.start()
        _repeat("API prober", _api_once, (client, health, poller), stop, out, 1)
    except Exception as exc:  # report, do not lose, why probing stopped
        out["failed"].append(f"prober stopped: {type(exc).__name__}: {exc}"[:200])
    finally:
        done.set()
        if kicker.is_alive():
            kicker.join(60)
        poller.stop.set()
        client.close()
        channel.close()
        for session in sessions:
            session.close(timeout=1)


def _repeat(name: str, probe: Any, args: tuple[Any, ...], stop: threading.Event, out: dict[str, list[Any]],
            seed: int) -> None:
    """Call ``probe(i, *args, out)`` with a random 50-150 ms pause between calls until ``stop``.

    A call past its deadline is counted and probing goes on; anything else ends this loop
    and is reported in ``out["failed"]``, not lost.
    """
    rng = random.Random(seed)
    i = 0
    try:
        while not stop.is_set():
            i += 1
            try:
                probe(i, *args, out)
            except grpc.RpcError as exc:  # a call past its deadline: the control path is that slow
                out["failed"].append(f"{exc.code().name}: {exc.details()}"[:200])
            stop.wait(rng.uniform(0.05, 0.15))
    except Exception as exc:
        out["failed"].append(f"{name} stopped: {type(exc).__name__}: {exc}"[:200])


def _api_once(i: int, client: Any, health: Any, poller: Poller, out: dict[str, list[Any]]) -> None:
    t0 = time.perf_counter_ns()
    health.Check(health_pb2.HealthCheckRequest(), timeout=30)
    out["health_ms"].append((time.perf_counter_ns() - t0) / 1e6)
    v = round(0.01 * (1 + (i % 89) / 100) + (i // 89) * 1e-6, 9)
    forwarded = len(poller.sessions) > 2 and i % 2 == 0
    index = 2 if forwarded else 0
    t0 = time.perf_counter_ns()
    client.set(poller.sessions[index].run, {"lr": v})
    seen = poller.wait_for(index, v, timeout=30)
    if seen is None:
        out["lost"].append(1)
    else:
        out["api_ms"].append((seen - t0) / 1e6)
        if forwarded:
            out["api_forwarded_ms"].append((seen - t0) / 1e6)


def _kick_once(i: int, poller: Poller, kick: Any, out: dict[str, list[Any]]) -> None:
    v = round(0.02 * (1 + (i % 89) / 100) + (i // 89) * 1e-6, 9)
    t0 = time.perf_counter_ns()
    kick.report(i, kick=v)
    seen = poller.wait_for(1, v, timeout=30)
    if seen is None:
        out["lost"].append(2)
    else:
        out["policy_ms"].append((seen - t0) / 1e6)


def _points_received(address: str) -> int:
    from supervisor.client import OperatorClient

    with OperatorClient(address, timeout=60) as client:
        return sum(r.points_received for r in client.runs("scale-*"))


def run_size(n: int, *, warmup: float, window: float, out_dir: Path, profile: bool,
             plateau: bool = True, supervisors: int = 1, rate: float = RATE, loadgen_nice: int = 0) -> dict[str, Any]:
    """One size; with ``supervisors`` > 1, one supervisor of that many processes (``serve --shards``):
    the load generators and the probes all use the front door's address, as trainers and operators
    would, and follow its Redirects. With ``profile``, py-spy samples the wave of decisions
    (:func:`_profile_the_wave`): the pass is the profile's, and its figures are no row's."""
    time.sleep(1.0)  # the previous size's processes wind down
    speed = python_loop_ms()  # before anything of this size runs
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-scale-{n}-"))
    config = workdir / "policies.toml"
    config.write_text(CONFIG if plateau else CONFIG.replace('runs = "scale-*"', 'runs = "no-run-matches-*"'))
    res: dict[str, Any] = {"streams": n, "plateau": plateau, "supervisors": supervisors, "rate": rate,
                           "loadgen_nice": loadgen_nice, "python_loop_ms": speed, "profile_pass": profile}
    shards = ("--shards", str(supervisors)) if supervisors > 1 else ()
    with ExitStack() as stack:
        sup = stack.enter_context(SupervisorProcess(config=config, workdir=workdir / "supervisor", args=shards))
        pids = [sup.pid, *descendant_pids(sup.pid)]  # with each database writer process
        writers = [pid for pid in pids if is_db_writer(pid)]
        servers = [pid for pid in pids if pid not in writers]
        spy_ok = profile and supervisors == 1 and PY_SPY.exists()
        duration = warmup + window + 2
        flush = DEFAULT_FLUSH_INTERVAL
        gens = []
        niced = ["nice", "-n", str(loadgen_nice)] if loadgen_nice else []  # nice execs the generator: same pid
        for first, count in _processes(n):
            stats = workdir / f"loadgen-{first}.json"
            proc = subprocess.Popen(
                [*niced, PYTHON, "-m", "bench._loadgen", "--address", sup.address, "--streams", str(count),
                 "--first", str(first), "--rate", str(rate), "--flush-interval", str(flush),
                 "--metrics", str(VALUES_PER_POINT), "--duration", str(duration),
                 "--out", str(stats)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            gens.append((proc, stats))
        t_connect = time.perf_counter()
        for proc, _ in gens:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "READY":
                raise RuntimeError(f"load generator failed to connect its streams: {line!r}")
        res["connect_all_s"] = time.perf_counter() - t_connect
        for proc, _ in gens:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        probes: dict[str, list[Any]] = {"api_ms": [], "api_forwarded_ms": [], "policy_ms": [], "health_ms": [],
                                        "lost": [], "failed": []}
        time.sleep(warmup)
        stop = threading.Event()
        prober = threading.Thread(target=_probe, args=(sup, stop, probes, supervisors), daemon=True)
        prober.start()
        spy: dict[str, Any] = {}
        if spy_ok:  # this pass is the profile's, not a row's: py-spy's own CPU would be in its figures
            watcher = threading.Thread(target=_profile_the_wave, args=(sup, out_dir, window - 2, spy), daemon=True)
            watcher.start()
        time.sleep(1.0)
        gen_cpu0 = sum(cpu_seconds(p.pid) for p, _ in gens)
        me0, usage0 = time.process_time(), cpu_counters()
        loop0 = sum(thread_cpu_seconds(pid).get(pid, 0) for pid in servers)
        loop_wait0 = sum(cpu_wait_seconds(pid, pid) for pid in servers)
        writer0 = sum(cpu_seconds(pid) for pid in writers)
        cpu0, t0 = sum(cpu_seconds(pid) for pid in pids), time.perf_counter()
        recv0 = _points_received(sup.address)
        rss_samples = []
        end = t0 + window - 1.0
        while time.perf_counter() < end:
            rss_samples.append(sum(rss_mib(pid) for pid in pids))
            time.sleep(1.0)
        recv1 = _points_received(sup.address)
        cpu1, t1 = sum(cpu_seconds(pid) for pid in pids), time.perf_counter()
        gen_cpu1 = sum(cpu_seconds(p.pid) for p, _ in gens)
        me1, usage1 = time.process_time(), cpu_counters()
        loop1 = sum(thread_cpu_seconds(pid).get(pid, 0) for pid in servers)
        loop_wait1 = sum(cpu_wait_seconds(pid, pid) for pid in servers)
        writer1 = sum(cpu_seconds(pid) for pid in writers)
        res["machine_usage"] = machine_usage(usage0, usage1)
        res["prober_cpu_cores"] = (me1 - me0) / (t1 - t0)
        res["supervisor_event_loop_cpu_cores"] = (loop1 - loop0) / (t1 - t0)
        res["event_loop_cpu_wait"] = (loop_wait1 - loop_wait0) / (t1 - t0)  # runnable, waiting for a CPU
        res["db_writer_cpu_cores"] = (writer1 - writer0) / (t1 - t0)
        res["db_writer_processes"] = len(writers)
        stop.set()
        prober.join(30)
        res["rss_peak_mib"] = sum(rss_peak_mib(pid) for pid in pids)  # every process's peak, added up
        res["rss_mib_end"] = sum(rss_mib(pid) for pid in pids)
        if spy_ok:
            watcher.join(60)
            res["profile"] = {**_finish_py_spy(spy, out_dir), **spy.get("wave", {})} if "procs" in spy else {
                "error": "py-spy did not start"}
        for proc, _ in gens:
            proc.wait(120)
        gen_stats = [json.loads(path.read_text()) for _, path in gens]
    shutil.rmtree(workdir, ignore_errors=True)
    # stored rate from the load generators' per-second samples inside [t0, t1] (wall clock)
    wall0, wall1 = time.time() - (time.perf_counter() - t0), time.time() - (time.perf_counter() - t1)
    acked = _rate_in_window(gen_stats, "acked", wall0, wall1)
    sent = _rate_in_window(gen_stats, "sent", wall0, wall1)
    res.update(
        window_s=t1 - t0,
        offered_values_s=n * rate * VALUES_PER_POINT,
        sent_values_s=sent * VALUES_PER_POINT,
        stored_values_s=acked * VALUES_PER_POINT,
        received_values_s=(recv1 - recv0) / (t1 - t0) * VALUES_PER_POINT,
        supervisor_cpu_cores=(cpu1 - cpu0) / (t1 - t0),
        loadgen_cpu_cores=(gen_cpu1 - gen_cpu0) / (t1 - t0),
        rss_samples_mib=rss_samples,
        probes={k: summary(v) if k.endswith("_ms") else len(v) for k, v in probes.items()},
        probe_failures=probes["failed"][:5],
        probe_samples=probes,
        deltas_to_streams=sum(g["deltas"] for g in gen_stats),
        loadgen_errors=[e for g in gen_stats for e in g["errors"]][:10],
        loadgen_processes=len(gens),
        messages_s=_rate_in_window(gen_stats, "messages", wall0, wall1),
        flush_interval_s=DEFAULT_FLUSH_INTERVAL,
        paced_s=[min(g["paced_s"][0] for g in gen_stats), max(g["paced_s"][1] for g in gen_stats)],
        backlog_points_end=sum(g["sent"] - g["acked"] for g in gen_stats),
    )
    return res


def _rate_in_window(gen_stats: list[dict[str, Any]], key: str, t0: float, t1: float) -> float:
    """The per-second count's slope inside [t0, t1] (least squares over the 1 s samples), summed over generators.

    A slope, not last minus first: receipts come together every ``--ack-delay`` (2 s), so the acked count
    is a staircase, and a difference of two samples would gain or lose a whole step (4 % in a 25 s window).
    """
    total = 0.0
    for g in gen_stats:
        inside = [s for s in g["samples"] if t0 <= s["t"] <= t1]
        if len(inside) >= 2:
            total += float(np.polyfit([s["t"] - t0 for s in inside], [s[key] for s in inside], 1)[0])
    return total


def _writer_note(r: dict[str, Any], shards: int) -> str:
    """The database writer processes' CPU, where the supervisor ran with ``--db-writer process``."""
    if not r.get("db_writer_processes"):
        return ""
    whose = "their database writer processes" if shards > 1 else "its database writer process"
    return f", {whose} {r['db_writer_cpu_cores']:.2f}"


def _profile_the_wave(sup: SupervisorProcess, out_dir: Path, budget: float, spy: dict[str, Any]) -> None:
    """Start py-spy when the plateau decisions begin, and sample for ``PROFILE_S`` (or what ``budget`` leaves).

    All runs reach their plateau patience in the same seconds (benchmark 5 in BENCHMARKS.md), and
    that wave of durable changes is when the p99 is made: a profile of the steady ingest before or
    after it shows a different supervisor. One run stands for all: polling every run would itself be
    a load (ListRuns of 1000 runs).
    """
    from supervisor.client import OperatorClient

    t0 = time.monotonic()
    with OperatorClient(sup.address, timeout=30) as client:

        def watched_version() -> int:
            return max((r.version for r in client.runs(WAVE_WATCHED_RUN)), default=0)

        while (seen := watched_version()) < WAVE_STARTED_AT_VERSION and time.monotonic() - t0 < budget - PROFILE_S:
            time.sleep(0.5)
        duration = max(1.0, min(PROFILE_S, budget - (time.monotonic() - t0)))
        spy.update(_start_py_spy(sup.pid, out_dir, duration))
        time.sleep(duration + 1.0)  # _finish_py_spy reads what py-spy says as it exits
        after = watched_version()
    spy["wave"] = {"profile_started_s": round(time.monotonic() - t0 - duration, 1), "profile_s": duration,
                   "wave_seen": seen >= WAVE_STARTED_AT_VERSION, "watched_run_versions": [seen, after]}


def _start_py_spy(pid: int, out_dir: Path, duration: float) -> dict[str, Any]:
    exe = str(PY_SPY)
    raw = out_dir / "profile.txt"
    svg = out_dir / "profile.svg"
    common = ["--pid", str(pid), "--duration", str(int(duration)), "--nonblocking", "--rate", "50"]
    procs = [
        subprocess.Popen([exe, "record", "-f", "raw", "--gil", "-o", str(raw), *common], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True),
        subprocess.Popen([exe, "record", "-f", "flamegraph", "-o", str(svg), *common], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True),
    ]
    return {"procs": procs, "raw": raw, "svg": svg}


def _finish_py_spy(spy: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    errors = []
    for proc in spy["procs"]:
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode != 0:
            errors.append(err[-500:])
    raw: Path = spy["raw"]
    if not raw.exists():
        return {"error": "; ".join(errors) or "py-spy wrote nothing"}
    return {**top_frames(raw), "svg": rel(spy["svg"]), "raw": rel(raw),
            "errors": errors}


def _frame(frame: str) -> str:
    """'func (path/file.py:123)' -> 'func (path/file.py)': aggregate over lines."""
    head, sep, _ = frame.rpartition(":")
    return head + ")" if sep and "(" in head else frame


def top_frames(raw: Path, k: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return {
        "samples": total,
        "self": [(f, round(c / total, 4)) for f, c in own.most_common(k)],
        "inclusive": [(f, round(c / total, 4)) for f, c in inclusive.most_common(k + 10)],
    }


def run(quick: bool, out: Path | None = None) -> Result:
    out = out or ROOT / "bench" / "results"
    result = Result("scale")
    sizes = [1, 16, 64] if quick else [1, 16, 64, 256, 1000]
    # the same sizes without the plateau policy, to show what policy evaluation costs
    bare = [] if quick else [64, 256, 1000]
    warmup, window = (1.0, 5.0) if quick else (5.0, 25.0)
    # and the largest with a supervisor of two processes (`serve --shards 2`): what a second event
    # loop and GIL buy on this machine, through the front door's routing (full mode: the smoke run
    # stays near a minute, and tests/core/test_sharding.py runs the sharded supervisor)
    sharded = [] if quick else [sizes[-1]]
    # and the largest at twice the rate: the capacity the >= 100,000 values/s target asks about
    capacity = [] if quick else [sizes[-1]]
    # and, once more, the largest with py-spy attached during its wave of decisions: a pass of its own,
    # since py-spy's sampling costs the supervisor CPU (none of its figures is a row)
    profiled = [] if quick or not PY_SPY.exists() else [sizes[-1]]
    runs = []
    # and the largest once more with the load generators yielding the CPUs (nice): the supervisor's
    # latency when what stands in for trainers on other machines does not take its cores (not judged)
    yielding = [] if quick else [sizes[-1]]
    plan = ([(n, True, 1, RATE, False, 0) for n in sizes] + [(n, False, 1, RATE, False, 0) for n in bare]
            + [(n, True, 1, RATE, False, YIELDING_NICE) for n in yielding]
            + [(n, True, 2, RATE, False, 0) for n in sharded]
            + [(n, True, 1, CAPACITY_RATE, False, 0) for n in capacity]
            + [(n, True, 1, RATE, True, 0) for n in profiled])
    for n, plateau, supervisors, rate, profile, nice in plan:
        print(f"  ... {n} streams{'' if plateau else ', no plateau policy'}"
              f"{f', {supervisors} supervisor processes' if supervisors > 1 else ''}"
              f"{f', {rate:g} points/s each' if rate != RATE else ''}"
              f"{f', load generators at nice {nice}' if nice else ''}{', profiled' if profile else ''}", flush=True)
        try:
            runs.append(run_size(n, warmup=warmup, window=window + (PROFILE_S if profile else 0), out_dir=out,
                                 plateau=plateau, rate=rate, profile=profile, supervisors=supervisors,
                                 loadgen_nice=nice))
        except Exception as exc:  # a size that cannot run is reported, the others still are
            runs.append({"streams": n, "plateau": plateau, "supervisors": supervisors, "rate": rate,
                         "loadgen_nice": nice, "profile_pass": profile, "error": f"{type(exc).__name__}: {exc}"})
    profile_pass = next((r for r in runs if r.get("profile_pass")), None)
    runs = [r for r in runs if not r.get("profile_pass")]
    for r in runs:
        n = r["streams"]
        shards = r.get("supervisors", 1)
        at_capacity = r.get("rate", RATE) != RATE
        nice = r.get("loadgen_nice", 0)
        label = f"{n} streams" + ("" if r["plateau"] else " (no policy)") + (
            f" with --shards {shards}" if shards > 1 else "") + (
            f" at {r['rate']:g} points/s each (capacity)" if at_capacity else "") + (
            f", load generators at nice {nice}" if nice else "")
        if "error" in r:
            result.row(label, "failed", note=r["error"])
            continue
        p = r["probes"]
        api, pol, hc = p["api_ms"], p["policy_ms"], p["health_ms"]
        standard = r["plateau"] and shards == 1 and not at_capacity and not nice  # the workload the targets name
        big = n >= TARGET_STREAMS and standard
        throughput_target = n >= TARGET_STREAMS and r["plateau"] and shards == 1 and at_capacity and not nice
        fwd = p.get("api_forwarded_ms", {})
        shard_note = (f"one supervisor of {shards} processes, streams and probes through its front door; API "
                      f"probes alternate a run of the front door and one of shard 1, forwarded to it: those alone "
                      f"p50 {fwd.get('p50', float('nan')):.1f} / p99 {fwd.get('p99', float('nan')):.1f} ms; "
                      if shards > 1 else "")
        result.row(f"{label}: stored values/s", r["stored_values_s"], "values/s",
                   target=f">= {TARGET_VALUES_S:,} at {TARGET_STREAMS}" if throughput_target else "",
                   met=(r["stored_values_s"] >= TARGET_VALUES_S) if throughput_target else None,
                   note=f"offered {r['offered_values_s']:,.0f}, sent {r['sent_values_s']:,.0f}, supervisor received "
                        f"{r['received_values_s']:,.0f}; {r['stored_values_s'] / r['offered_values_s']:.0%} of offered;"
                        f" unacked at the end {r['backlog_points_end']:,} points; {r['messages_s']:,.0f} messages/s "
                        f"(SDK flush_interval {r['flush_interval_s']:g} s, supervisor's pacing "
                        f"{r['paced_s'][1]:.3g} s); {r['loadgen_processes']} load processes; "
                        f"all {n} streams connected in {r['connect_all_s']:.1f} s")
        result.row(f"{label}: control latency under load p50 / p99 (API set -> visible)",
                   f"{api.get('p50', float('nan')):.1f} / {api.get('p99', float('nan')):.1f}", "ms",
                   target=f"p99 < {TARGET_P99_MS:g} ms" if standard else "",
                   met=api.get("p99", math.inf) < TARGET_P99_MS if standard else None,
                   note=f"{shard_note}{api.get('n', 0)} probes; Health.Check p50 "
                        f"{hc.get('p50', float('nan')):.1f} / p99 "
                        f"{hc.get('p99', float('nan')):.1f} ms; report -> policy -> visible p50 "
                        f"{pol.get('p50', float('nan')):.1f} / p99 {pol.get('p99', float('nan')):.1f} ms; "
                        f"lost {p['lost']}; failed {p.get('failed', 0)} {'; '.join(r.get('probe_failures', []))[:300]}")
        result.row(f"{label}: supervisor CPU / peak RSS (all its processes)",
                   f"{r['supervisor_cpu_cores']:.2f} cores / "
                   f"{r['rss_peak_mib']:.0f} MiB", "",
                   target="< 1 GB" if big else "", met=(r["rss_peak_mib"] < TARGET_RSS_MIB) if big else None,
                   note=f"{r['stored_values_s'] / max(r['supervisor_cpu_cores'], 1e-9):,.0f} values stored per "
                        f"supervisor CPU-second; "
                        f"{'their event-loop threads together' if shards > 1 else 'its event-loop thread'} "
                        f"{r['supervisor_event_loop_cpu_cores']:.2f} "
                        f"cores and waited for a CPU {r.get('event_loop_cpu_wait', math.nan):.0%} of the window"
                        f"{_writer_note(r, shards)}; load generators "
                        f"{r['loadgen_cpu_cores']:.2f} cores and the prober {r['prober_cpu_cores']:.2f} on the same 2 "
                        f"CPUs, machine busy {r['machine_usage']['busy']:.0%}; reference Python loop "
                        f"{r['python_loop_ms']:.1f} ms just before; "
                        f"{r['deltas_to_streams']} deltas (plateau decisions) reached the streams")
    if profile_pass is not None:
        _profile_row(result, profile_pass)
    result.data = {"runs": runs, "sizes": sizes, "warmup_s": warmup, "window_s": window,
                   "profile_pass": profile_pass}
    if len([r for r in runs if "error" not in r and r["plateau"] and r["supervisors"] == 1]) > 1:
        result.plots.append(_plot(runs, out))
    return result


def _profile_row(result: Result, r: dict[str, Any]) -> None:
    label = f"py-spy at {r['streams']} streams, during the plateau decisions: top self frames"
    prof = r.get("profile", {"error": r.get("error", "no profile")})
    if "self" not in prof:
        result.row(label, "failed", note=str(prof.get("error"))[:300])
        return
    top = "; ".join(f"{f} {s:.0%}" for f, s in prof["self"][:6])
    versions = prof.get("watched_run_versions", [0, 0])
    when = (f"from {prof['profile_started_s']:.0f} s after the probes began, when {WAVE_WATCHED_RUN} had made "
            f"{versions[0]} decisions ({versions[1]} when it ended)" if prof.get("wave_seen") else
            "no wave of decisions seen: sampled at the end of the window")
    api = r.get("probes", {}).get("api_ms", {})
    result.row(label, "see note", "",
               note=f"{top} ({prof['samples']} samples with the GIL held over {prof['profile_s']:.0f} s, {when}; "
                    f"a pass of its own: with py-spy attached its probes' p50 / p99 "
                    f"{api.get('p50', float('nan')):.1f} / {api.get('p99', float('nan')):.1f} ms; {prof['svg']})")
    result.plots.append(prof["svg"])


def _plot(runs: list[dict[str, Any]], out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in runs if "error" not in r and r["plateau"] and r.get("supervisors", 1) == 1
          and r.get("rate", RATE) == RATE and not r.get("loadgen_nice")]
    n = [r["streams"] for r in ok]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(n, [r["offered_values_s"] for r in ok], "--", label="offered")
    axes[0].plot(n, [r["stored_values_s"] for r in ok], "o-", label="stored")
    axes[0].set_ylabel("values/s")
    axes[1].plot(n, [r["probes"]["api_ms"].get("p50", np.nan) for r in ok], "o-", label="API p50")
    axes[1].plot(n, [r["probes"]["api_ms"].get("p99", np.nan) for r in ok], "o-", label="API p99")
    axes[1].plot(n, [r["probes"]["policy_ms"].get("p99", np.nan) for r in ok], "o-", label="policy p99")
    axes[1].set_ylabel("ms")
    axes[1].set_yscale("log")
    axes[2].plot(n, [r["supervisor_cpu_cores"] for r in ok], "o-", label="supervisor CPU (cores)")
    axes[2].plot(n, [r["loadgen_cpu_cores"] for r in ok], "o-", label="load generators CPU (cores)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("streams")
        ax.legend()
    fig.tight_layout()
    path = out / "scale.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return rel(path)
