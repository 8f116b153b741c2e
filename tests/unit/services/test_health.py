"""How pid files and probes combine into the state `revetl status` shows."""

from __future__ import annotations

import pytest

from services.health import Probe, State, Status, classify

OK = Probe(ok=True, version="1")
DOWN = Probe(ok=False, detail="refused")


@pytest.mark.parametrize(
    ("external", "pid", "had_pid_file", "probe", "expected"),
    [
        (False, 10, True, OK, State.HEALTHY),
        (False, 10, True, DOWN, State.STARTING),
        (False, None, True, None, State.DEAD),
        (False, None, False, None, State.STOPPED),
        (True, None, False, OK, State.EXTERNAL),
        (True, None, False, DOWN, State.UNREACHABLE),
    ],
)
def test_classify(
    external: bool,
    pid: int | None,
    had_pid_file: bool,
    probe: Probe | None,
    expected: State,
) -> None:
    state = classify(external=external, pid=pid, had_pid_file=had_pid_file, probe=probe)

    assert state is expected


def test_only_healthy_and_external_count_as_healthy() -> None:
    healthy = {
        state for state in State if Status("x", state, None, "a", None, "").healthy
    }

    assert healthy == {State.HEALTHY, State.EXTERNAL}


def test_json_row_carries_state_and_flags() -> None:
    row = Status("kafka", State.DEAD, None, "127.0.0.1:9092", None, "gone").as_json()

    assert row["state"] == "dead"
    assert row["running"] is False
    assert row["healthy"] is False
