"""Live, supervised parameters for a training loop.

    from trainer_sdk import connect, Float

    hp = connect(run="digits-01", params={"lr": Float(0.05, min=1e-5, max=1.0, log=True)})
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = hp.lr          # a local read: no lock, no I/O
        ...
        hp.report(step, loss=loss)       # never blocks

The SDK needs only grpcio and protobuf; it imports neither torch nor the supervisor.
"""

from trainer_sdk._params import Bool, Choice, Float, Int, InvalidValue, Param, Text
from trainer_sdk._session import DEFAULT_BUFFER_SIZE, DEFAULT_FLUSH_INTERVAL, Session, connect
from trainer_sdk._state import ChangeEvent

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_FLUSH_INTERVAL",
    "Bool",
    "ChangeEvent",
    "Choice",
    "Float",
    "Int",
    "InvalidValue",
    "Param",
    "Session",
    "Text",
    "connect",
]
