"""Which platform a runsc registration runs on, from its arguments or, failing those, its build."""

from __future__ import annotations

from agentbox.providers.docker.oci_runtime import GVisorRuntime, knows_systrap


def test_builds_from_2023_on_know_systrap() -> None:
    assert knows_systrap("0.0~20240729.0")  # Debian bookworm-backports
    assert knows_systrap("release-20240807.0")  # upstream's naming
    assert not knows_systrap("0.0~20221219.0")  # Debian bookworm


def test_the_platform_is_the_argument_else_the_build_s_default() -> None:
    registered = GVisorRuntime("runsc-ptrace", "/nonexistent/runsc", ("--platform=ptrace", "--network=host"))
    assert registered.platform == "ptrace"
    unknown_build = GVisorRuntime("runsc", "/nonexistent/runsc", ("--network=host",))
    assert unknown_build.version is None and unknown_build.platform == "systrap"
