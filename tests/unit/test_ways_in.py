"""The id a fork's helper answers with, left beside its control socket (providers/docker/channel.py,
`WaysIn.leave_id`): the directory is the workspace user's, so whatever a workload put there is never followed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from agentbox.providers.docker.channel import WORKSPACE_ID_FILE, WaysIn


def test_the_id_is_written_in_place_of_whatever_is_there_and_never_through_a_link(tmp_path: Path) -> None:
    ways_in = WaysIn(cast(Any, None), "1000:1000", tmp_path / "run", None)
    directory = tmp_path / "run" / "ws-0123456789abcdef"
    directory.mkdir(parents=True)
    elsewhere = tmp_path / "host-file"
    elsewhere.write_text("the host's\n")
    (directory / WORKSPACE_ID_FILE).symlink_to(elsewhere)  # what a workload could leave there
    ways_in.leave_id("ws-0123456789abcdef")
    written = directory / WORKSPACE_ID_FILE
    assert not written.is_symlink() and written.read_text() == "ws-0123456789abcdef\n"
    assert elsewhere.read_text() == "the host's\n"
    ways_in.leave_id("ws-0123456789abcdef")  # again: the earlier file replaced
    assert written.read_text() == "ws-0123456789abcdef\n"
