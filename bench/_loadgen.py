"""Load generator for the scale benchmark: many trainer streams in one process, raw gRPC.

Each stream speaks the v1 protocol as trainer_sdk does (Hello; MetricBatch
messages in the columnar form the SDK sends, with consecutive seq; Applied for
every Delta, with the next batch when the Delta says ``ack_with_metrics``;
MetricsAcks read back), on its own channel, from one asyncio loop
per process. A stream
reports ``metrics`` values per point at ``rate`` points per second on a fixed
schedule and sends them as trainer_sdk's pump does: the first point at once,
then whatever is due at most every ``flush_interval`` seconds (the SDK's
default, passed in by bench/scale.py, or the supervisor's Pacing if longer),
in one message. One of the values is ``val_loss`` (slowly decreasing, with
noise) for the plateau policy.

Why raw streams and not SDK sessions: an SDK session costs two Python threads
and a channel; 250 of them in one process would measure thread switching in
the load generator, not the supervisor. The messages on the wire are the
same.

Run: ``python -m bench._loadgen --address HOST:PORT --streams 250 --first 0
--duration 20 --out stats.json``. Prints ``READY`` once every stream got its
Welcome, then waits for a line on stdin before it starts reporting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
import uuid
from typing import Any

import grpc

from trainer_sdk._transport import redirect_target
from trainer_sdk.protocol.v1 import supervisor_pb2 as pb
from trainer_sdk.protocol.v1 import supervisor_pb2_grpc as pb_grpc

PARAMS = [
    pb.ParamSpec(name="lr", type=pb.PARAM_TYPE_FLOAT, default_value=pb.ParamValue(float_value=0.05), min=1e-5,
                 max=1.0, log=True),
    pb.ParamSpec(name="weight_decay", type=pb.PARAM_TYPE_FLOAT, default_value=pb.ParamValue(float_value=0.0),
                 min=0.0, max=0.1),
]


class Stream:
    def __init__(self, address: str, run: str, *, rate: float, metrics: int, seed: int,
                 flush_interval: float) -> None:
        self.address = address
        self.run = run
        self.rate = rate
        self.flush_interval = flush_interval
        self.paced = 0.0  # the supervisor's Pacing, obeyed as the SDK obeys it
        self.names = ["val_loss"] + [f"m{i}" for i in range(metrics - 1)]
        self.rng = random.Random(seed)
        self.seq = 0
        self.acked = 0
        self.deltas = 0
        self.version = 0
        self.held: pb.Applied | None = None  # acknowledged with the next batch, as the SDK does
        self.welcomed = asyncio.Event()
        self.messages = 0
        self.errors: list[str] = []
        self.queue: asyncio.Queue[pb.ConnectRequest | None] = asyncio.Queue()
        self.redirect_to: str | None = None
        self.own_channel: grpc.aio.Channel | None = None  # the owning shard's, after a Redirect

    def hello(self) -> pb.ConnectRequest:
        return pb.ConnectRequest(hello=pb.Hello(
            run=self.run, rank=0, world_size=1, session_id=uuid.uuid4().hex, params=PARAMS,
            values={"lr": pb.ParamValue(float_value=0.05), "weight_decay": pb.ParamValue(float_value=0.0)},
            version=0, sdk_version="bench-loadgen", hostname="bench", pid=os.getpid(), lazy_acks=True,
            follows_redirects=True))

    async def requests(self) -> Any:
        queue = self.queue  # this stream's: a Redirect gives the next stream a new one
        yield self.hello()
        while (message := await queue.get()) is not None:
            yield message

    def batch(self, steps: list[int]) -> pb.ConnectRequest:
        """Points for ``steps`` as one columnar MetricBatch, as trainer_sdk builds it."""
        first = self.seq + 1
        self.seq += len(steps)
        now = time.time()
        width = len(self.names)
        values: list[float] = []
        for step in steps:
            values.append(1.0 / (1.0 + 0.02 * step) + self.rng.gauss(0, 0.01))  # val_loss
            values.extend(self.rng.random() for _ in range(width - 1))
        held, self.held = self.held, None
        return pb.ConnectRequest(metrics=pb.MetricBatch(
            first_seq=first, steps=steps, times=[now] * len(steps), value_counts=[width] * len(steps),
            names=self.names, name_indexes=list(range(width)) * len(steps), values=values, applied=held))

    async def run_stream(self, channel: grpc.aio.Channel, start: asyncio.Event, stop: asyncio.Event) -> None:
        call, reader = await self._connect(channel)
        try:
            await self.welcomed.wait()
            await start.wait()
            period = 1.0 / self.rate
            # Trainers start at different times, so their flushes are spread over the interval.
            t0 = time.monotonic() + self.rng.random() * max(period, self.interval)
            step = 0  # points up to `step` (exclusive) are sent
            last_send = -math.inf
            while not stop.is_set():
                now = time.monotonic()
                due = int((now - t0) / period) + 1 if now >= t0 else 0  # points reported by now
                if due > step and now - last_send >= self.interval:
                    self.queue.put_nowait(self.batch(list(range(step, due))))
                    self.messages += 1
                    step, last_send = due, now
                # wake at the next report, or when the flush interval allows the pending ones out
                next_report = t0 + step * period if due <= step else now
                wake = max(next_report, last_send + self.interval)
                wait = wake - time.monotonic()
                if wait > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), wait)
                    except TimeoutError:
                        pass
            await self._last_receipt()
        finally:
            self.queue.put_nowait(None)
            reader.cancel()
            call.cancel()
            if self.own_channel is not None:
                await self.own_channel.close()

    async def _last_receipt(self, timeout: float = 5.0) -> None:
        """Ask for the receipt of every point sent, as the SDK's close() does, and wait a while for it.

        With late receipts (``lazy_acks``) the supervisor answers at most every ``--ack-delay``, so without
        this the points of the last seconds would count as unstored at the end.
        """
        self.queue.put_nowait(pb.ConnectRequest(metrics=pb.MetricBatch(ack_now=True)))
        end = time.monotonic() + timeout
        while self.acked < self.seq and time.monotonic() < end and not self.errors:
            await asyncio.sleep(0.05)

    async def _connect(self, channel: grpc.aio.Channel) -> tuple[Any, asyncio.Task[None]]:
        """Open the stream, and follow a sharded supervisor's Redirect as the SDK does."""
        while True:
            call = pb_grpc.TrainerServiceStub(channel).Connect(self.requests())
            reader = asyncio.create_task(self._read(call))
            welcomed = asyncio.create_task(self.welcomed.wait())
            await asyncio.wait([reader, welcomed], return_when=asyncio.FIRST_COMPLETED)
            welcomed.cancel()
            if self.redirect_to is None:
                return call, reader
            call.cancel()
            self.queue = asyncio.Queue()  # the old stream's generator holds the old queue
            target, self.redirect_to = self.redirect_to, None
            if self.own_channel is not None:
                await self.own_channel.close()
            channel = self.own_channel = grpc.aio.insecure_channel(target)

    @property
    def interval(self) -> float:
        return max(self.flush_interval, self.paced)

    async def _read(self, call: Any) -> None:
        try:
            async for response in call:
                kind = response.WhichOneof("message")
                if kind == "welcome":
                    self.welcomed.set()
                elif kind == "redirect":
                    self.redirect_to = redirect_target(self.address, response.redirect.host, response.redirect.port)
                    return
                elif kind == "metrics_ack":
                    self.acked = max(self.acked, response.metrics_ack.seq)
                elif kind == "pacing":
                    self.paced = response.pacing.min_flush_interval_seconds
                elif kind == "delta":
                    self.deltas += 1
                    self.version = response.delta.version
                    applied = pb.Applied(version=self.version, step=max(self.seq - 1, 0), time=time.time())
                    if response.delta.ack_with_metrics:  # this stream always has a batch on its way
                        self.held = applied
                    else:
                        self.held = None
                        self.queue.put_nowait(pb.ConnectRequest(applied=applied))
        except asyncio.CancelledError:
            pass
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.errors.append(f"{exc.code().name}: {exc.details()}")
                self.welcomed.set()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    streams = [Stream(args.address, f"{args.prefix}-{args.first + i:04d}", rate=args.rate, metrics=args.metrics,
                      seed=args.first + i, flush_interval=args.flush_interval) for i in range(args.streams)]
    per_channel = max(1, args.streams_per_channel)
    channels = [grpc.aio.insecure_channel(args.address) for _ in range(math.ceil(len(streams) / per_channel))]
    start, stop = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(s.run_stream(channels[i // per_channel], start, stop)) for i, s in enumerate(streams)]
    await asyncio.wait_for(asyncio.gather(*(s.welcomed.wait() for s in streams)), 120)
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    t_start = time.time()
    start.set()
    samples = []
    end = time.monotonic() + args.duration
    while time.monotonic() < end:
        await asyncio.sleep(1.0)
        samples.append({"t": time.time(), "sent": sum(s.seq for s in streams), "acked": sum(s.acked for s in streams),
                        "messages": sum(s.messages for s in streams)})
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    return {
        "streams": len(streams), "t_start": t_start, "samples": samples,
        "sent": sum(s.seq for s in streams), "acked": sum(s.acked for s in streams),
        "messages": sum(s.messages for s in streams), "deltas": sum(s.deltas for s in streams),
        "errors": [e for s in streams for e in s.errors][:20],
        "paced_s": [min(s.paced for s in streams), max(s.paced for s in streams)],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--address", required=True)
    p.add_argument("--streams", type=int, required=True)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--prefix", default="scale")
    p.add_argument("--rate", type=float, default=10.0, help="points per second per stream")
    p.add_argument("--metrics", type=int, default=10, help="values per point")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--flush-interval", type=float, default=0.25, help="at most one message per this many seconds")
    p.add_argument("--streams-per-channel", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    stats = asyncio.run(main_async(args))
    with open(args.out, "w") as f:
        json.dump(stats, f)


if __name__ == "__main__":
    main()
