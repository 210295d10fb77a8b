"""The supervisor: receives trainers' metric streams, runs policies and operators' commands,
and streams versioned, acknowledged parameter changes back into each trainer."""

__version__ = "0.1.0"
