"""The provider contract (tests/provider_contract.py) on the in-memory fake that the unit tests build on."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agentbox.providers.base import Capabilities, Provider, WorkspaceSpec
from tests.fake_provider import FakeProvider
from tests.provider_contract import CHECKS, check_suspend_and_wake, spec


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_the_fake_keeps_the_contract(check: Callable[[Provider, WorkspaceSpec], None]) -> None:
    check(FakeProvider(), spec("any"))


def test_a_fake_that_suspends_keeps_the_contract_for_it() -> None:
    suspending = Capabilities(runtime="fake", isolation="none (a unit-test fake)", suspend=True)
    check_suspend_and_wake(FakeProvider(capabilities=suspending), spec("any"))
