"""A supervisor that restarts on an empty database reuses version numbers: its changes must still arrive.

A trainer that received version N from the supervisor before it lost its
database, and had not applied it yet, would otherwise take the new
supervisor's own version N as a duplicate and drop it.
"""

from __future__ import annotations

import logging
import time

import pytest

from tests.conftest import free_port, wait_until
from trainer_sdk import Float
from trainer_sdk._state import Delta, SessionState


def _state() -> SessionState:
    return SessionState(
        run="r",
        rank=0,
        world_size=1,
        params={"lr": Float(0.1), "wd": Float(0.0)},
        values={"lr": 0.1, "wd": 0.0},
        buffer_size=10,
    )


def test_resync_drops_unapplied_deltas_the_supervisor_no_longer_knows(caplog):
    state = _state()
    state.receive(Delta(version=1, changes={"wd": 0.5}, apply_at_step=100))  # held for its step
    assert state.pending and state.values["wd"] == 0.0
    with caplog.at_level(logging.WARNING, logger="trainer_sdk"):
        assert state.resync(0) is False  # nothing was applied above 0: the Hello it sent was right
    assert not state.pending and state.gate == float("inf")
    assert "versions 1" in caplog.text
    state.receive(Delta(version=1, changes={"lr": 0.05}))  # the new supervisor's version 1
    assert state.values == {"lr": 0.05, "wd": 0.0} and state.version == 1


def test_resync_asks_for_a_new_hello_when_this_process_applied_more_than_the_supervisor_knows():
    state = _state()
    state.receive(Delta(version=1, changes={"wd": 0.5}))
    assert state.resync(1) is False  # in agreement
    assert state.resync(0) is True  # the supervisor adopted version 0's values; wd=0.5 is in use
    state.receive(Delta(version=1, changes={"lr": 0.05}))
    assert state.values == {"lr": 0.05, "wd": 0.5}


def _restart_on_an_empty_database(supervisor_factory, tmp_path, first, port: int):
    first.terminate()
    return supervisor_factory(tmp_path / "empty.db", port=port)


@pytest.mark.parametrize("transport", ["thread", "process"])
def test_a_held_change_from_a_lost_supervisor_gives_way_to_the_new_supervisors_changes(
    tmp_path, supervisor_factory, transport
):
    from trainer_sdk import connect

    port = free_port()
    first = supervisor_factory(tmp_path / "first.db", port=port)
    hp = connect(f"held-{transport}", {"lr": 0.1, "wd": 0.0}, address=f"127.0.0.1:{port}", telemetry=False,
                 transport=transport, backoff_max=0.2)
    try:
        assert hp.wait_connected(30)
        hp.report(0, loss=1.0)
        first.cli("set", f"held-{transport}", "wd=0.5", "--at-step", "1000")  # version 1, held until step 1000
        wait_until(lambda: (hp.report(1, loss=1.0), hp._state.pending)[1], timeout=15, message="the held change")
        second = _restart_on_an_empty_database(supervisor_factory, tmp_path, first, port)
        wait_until(lambda: second.run(f"held-{transport}").get("connected"), timeout=30, message="the reconnect")
        second.cli("set", f"held-{transport}", "lr=0.05")  # the new supervisor's version 1
        deadline = time.monotonic() + 15
        while hp["lr"] != 0.05:
            assert time.monotonic() < deadline, "the new supervisor's change was taken for a duplicate"
            hp.report(2, loss=1.0)
            time.sleep(0.01)
        for step in range(3, 1100):  # past the lost supervisor's step gate: its change never applies
            hp.report(step, loss=1.0)
        assert hp["wd"] == 0.0 and hp.version == 1
    finally:
        hp.close()


def test_a_forwarded_change_from_a_lost_supervisor_is_adopted_not_hidden(tmp_path, supervisor_factory):
    """Process transport: the sidecar forwarded version 1, the loop applies it after the new supervisor's version 1.

    The new supervisor's change is applied too, and the trainer says hello again so
    that the supervisor records the values the loop really uses.
    """
    from trainer_sdk import connect

    port = free_port()
    first = supervisor_factory(tmp_path / "first.db", port=port)
    hp = connect("forwarded", {"lr": 0.1, "wd": 0.0}, address=f"127.0.0.1:{port}", telemetry=False,
                 transport="process", backoff_max=0.2)
    try:
        assert hp.wait_connected(30)
        bell = hp._transport.bell
        first.cli("set", "forwarded", "wd=0.5")
        # Forwarded by the sidecar, not applied: this loop has not reported or read its status since.
        wait_until(lambda: bell[0], timeout=15, message="the sidecar forwarding the change")
        second = _restart_on_an_empty_database(supervisor_factory, tmp_path, first, port)
        wait_until(lambda: second.run("forwarded").get("connected"), timeout=30, message="the reconnect")
        assert second.run("forwarded")["version"] == 0  # adopted what the sidecar said the loop holds
        second.cli("set", "forwarded", "lr=0.05")
        deadline = time.monotonic() + 15
        while hp["lr"] != 0.05:
            assert time.monotonic() < deadline, "the new supervisor's change was taken for a duplicate"
            hp.report(0, loss=1.0)
            time.sleep(0.01)
        assert hp["wd"] == 0.5  # the lost supervisor's change was applied before the Welcome was read
        wait_until(lambda: (hp.report(1, loss=1.0), second.run("forwarded")["params"].get("wd"))[1] == 0.5,
                   timeout=15, message="the supervisor adopting the values in use")
    finally:
        hp.close()


@pytest.mark.parametrize("transport", ["thread", "process"])
def test_rehello_reconnects_at_once_and_is_not_reported_as_an_outage(supervisor, caplog, transport):
    """The reconnect a stale Welcome asks for: quiet, immediate, and the session goes on."""
    from trainer_sdk import connect

    hp = connect(f"rehello-{transport}", {"lr": 0.1}, address=supervisor.address, telemetry=False,
                 transport=transport)
    try:
        assert hp.wait_connected(30)
        hp.report(0, loss=1.0)
        assert hp.flush(30)
        if transport == "thread":
            hp._transport.rehello()
        else:  # what the trainer sends after a stale Welcome's acks
            with hp._transport._lock:
                hp._transport._rehello = True
                hp._transport._service()
        connects = f"trainer connected: run=rehello-{transport} "
        wait_until(lambda: supervisor.log.read_text().count(connects) == 2, timeout=15, message="the reconnect")
        hp.report(1, loss=2.0)
        assert hp.flush(30)  # stored through the new stream
        supervisor.cli("set", f"rehello-{transport}", "lr=0.05")
        deadline = time.monotonic() + 15
        while hp["lr"] != 0.05:
            assert time.monotonic() < deadline, "no change after the reconnect"
            hp.report(2, loss=1.0)
            time.sleep(0.01)
        assert "unreachable" not in caplog.text, caplog.text
    finally:
        hp.close()
