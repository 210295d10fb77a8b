"""Observability of the supervisor: Prometheus export (see docs/observability.md)."""

from supervisor.observability._metrics import SupervisorMetrics

__all__ = ["SupervisorMetrics"]
