"""The resolver's memory of answers (TTL, grace, bounds) and the name-to-address decisions (naming.py)."""

from __future__ import annotations

import pytest

from agentbox.egress.answers import AnswerMemory
from agentbox.egress.naming import answerable, check, refusal
from agentbox.egress.proxy import Refusal, RefusalBudget
from agentbox.egress.rules import Policy


def test_an_answer_holds_for_its_ttl_plus_the_grace_for_that_client_name_and_address_only() -> None:
    memory = AnswerMemory(grace=5)
    memory.remember("10.0.0.5", "a.example", "192.0.2.1", ttl=60, now=100)
    assert memory.gave("10.0.0.5", "a.example", "192.0.2.1", now=165)
    assert not memory.gave("10.0.0.5", "a.example", "192.0.2.1", now=165.5)
    assert not memory.gave("10.0.0.6", "a.example", "192.0.2.1", now=101)  # another client
    assert not memory.gave("10.0.0.5", "b.example", "192.0.2.1", now=101)  # another name
    assert not memory.gave("10.0.0.5", "a.example", "192.0.2.2", now=101)  # another address


def test_a_shorter_later_answer_does_not_cut_an_earlier_one_short() -> None:
    memory = AnswerMemory(grace=0)
    memory.remember("c", "a.example", "192.0.2.1", ttl=300, now=0)
    memory.remember("c", "a.example", "192.0.2.1", ttl=1, now=10)
    assert memory.gave("c", "a.example", "192.0.2.1", now=299)
    assert len(memory) == 1


def test_a_client_past_its_bound_forgets_its_least_recently_answered_pair() -> None:
    memory = AnswerMemory(per_client=3, total=100, grace=0)
    for index in range(3):
        memory.remember("c", f"n{index}.example", "192.0.2.1", ttl=60, now=0)
    memory.remember("c", "n0.example", "192.0.2.1", ttl=60, now=1)  # answered again: now the most recent
    memory.remember("c", "n3.example", "192.0.2.1", ttl=60, now=2)
    assert memory.count("c") == 3
    assert not memory.gave("c", "n1.example", "192.0.2.1", now=3)
    assert all(memory.gave("c", f"n{i}.example", "192.0.2.1", now=3) for i in (0, 2, 3))


def test_past_the_total_bound_the_largest_client_loses_not_the_quiet_one() -> None:
    memory = AnswerMemory(per_client=100, total=10, grace=0)
    memory.remember("quiet", "q.example", "192.0.2.9", ttl=60, now=0)
    for index in range(50):
        memory.remember("flood", f"f{index}.example", "192.0.2.1", ttl=60, now=0)
    assert len(memory) == 10
    assert memory.gave("quiet", "q.example", "192.0.2.9", now=1)
    assert memory.count("flood") == 9
    assert memory.gave("flood", "f49.example", "192.0.2.1", now=1)


def test_sweep_and_forget_drop_answers_and_keep_the_count_right() -> None:
    memory = AnswerMemory(grace=1)
    memory.remember("a", "x.example", "192.0.2.1", ttl=10, now=0)
    memory.remember("a", "y.example", "192.0.2.1", ttl=100, now=0)
    memory.remember("b", "x.example", "192.0.2.1", ttl=10, now=0)
    assert memory.sweep(now=12) == 2
    assert len(memory) == 1 and [a.name for a in memory.answers("a", now=12)] == ["y.example"]
    memory.forget("a")
    assert len(memory) == 0 and memory.count("b") == 0


def test_bounds_below_one_are_refused() -> None:
    with pytest.raises(ValueError):
        AnswerMemory(per_client=0)


@pytest.mark.parametrize(
    ("policy", "name", "expected"),
    [
        ({"allow": ["a.example"]}, "A.Example.", True),
        ({"allow": ["a.example"]}, "b.example", False),
        ({"allow": ["*.example.com"]}, "x.y.example.com", True),
        ({"allow": ["*.example.com"]}, "example.com", False),
        # denied on every port: never answered; denied on one port only: another port may be allowed
        ({"allow": ["*.example.com"], "deny": ["s.example.com"]}, "s.example.com", False),
        ({"allow": ["*.example.com"], "deny": ["s.example.com:443"]}, "s.example.com", True),
        ({"allow": ["a.example:443"], "deny": ["a.example:443"]}, "a.example", False),
        # E2B's order: allow beats deny
        ({"allow": ["a.example"], "deny": ["a.example"], "precedence": "allow"}, "a.example", True),
        # allowed by address: every name may lead there, so every name is answered...
        ({"allow": ["203.0.113.0/24"]}, "anything.example", True),
        ({"default": "allow", "deny": ["bad.example"]}, "good.example", True),
        ({"default": "allow", "deny": ["bad.example"]}, "bad.example", False),
        # ...unless every address is denied first
        ({"allow": ["a.example"], "deny": ["0.0.0.0/0"]}, "a.example", False),
        ({"allow": ["a.example"], "deny": ["10.0.0.0/8"]}, "a.example", True),
        ({}, "a.example", False),
        ({"allow": ["0.0.0.0/0"]}, "not a name", False),
    ],
)
def test_the_resolver_answers_a_name_when_some_connection_to_it_could_be_allowed(
    policy: dict[str, object], name: str, expected: bool
) -> None:
    assert answerable(Policy.model_validate(policy), name) is expected


@pytest.mark.parametrize(
    ("policy", "name", "rule"),
    [
        # a deny entry carving a name out of a wildcard: that entry, not the default nor the wildcard
        (
            {"allow": ["*.example.com"], "deny": ["api.example", "secret.example.com"]},
            "secret.example.com",
            "deny[1] secret.example.com",
        ),
        ({"allow": ["a.example:443"], "deny": ["a.example:443"]}, "A.Example.", "deny[0] a.example:443"),
        ({"allow": ["a.example"], "deny": ["0.0.0.0/0"]}, "a.example", "deny[0] 0.0.0.0/0"),
        ({"default": "allow", "deny": ["*.bad.example"]}, "x.bad.example", "deny[0] *.bad.example"),
        ({"allow": ["a.example"]}, "b.example", "default deny"),
        ({}, "a.example", "default deny"),
        ({"allow": ["a.example"]}, "not a name", "not a host name"),
    ],
)
def test_a_name_the_resolver_refuses_is_put_down_to_the_entry_that_refused_it(
    policy: dict[str, object], name: str, rule: str
) -> None:
    parsed = Policy.model_validate(policy)
    assert not answerable(parsed, name)
    found = refusal(parsed, name)
    assert not found.allowed and found.rule == rule


def test_a_connection_allowed_by_name_needs_an_address_given_for_that_name() -> None:
    policy = Policy.model_validate({"allow": ["a.example", "203.0.113.0/24"]})
    memory = AnswerMemory(grace=0)
    memory.remember("c", "a.example", "192.0.2.1", ttl=30, now=0)

    given = check(policy.decide("A.example", "192.0.2.1", 443), memory, "c", "A.example", "192.0.2.1", now=1)
    assert given.allowed and given.rule == "allow[0] a.example"

    spoofed = check(policy.decide("a.example", "192.0.2.7", 443), memory, "c", "a.example", "192.0.2.7", now=1)
    assert not spoofed.allowed
    assert "192.0.2.7 is not an address the agentbox resolver gave for a.example" in spoofed.rule

    expired = check(policy.decide("a.example", "192.0.2.1", 443), memory, "c", "a.example", "192.0.2.1", now=31)
    assert not expired.allowed

    # Allowed by address: the name it sends does not matter, and nothing is asked of the memory.
    by_cidr = check(policy.decide("x.example", "203.0.113.5", 443), memory, "c", "x.example", "203.0.113.5", 1)
    assert by_cidr.allowed and by_cidr.by == "address"
    # A refusal stays a refusal.
    denied = check(policy.decide("b.example", "192.0.2.1", 443), memory, "c", "b.example", "192.0.2.1", now=1)
    assert not denied.allowed and denied.rule == "default deny"


def test_a_refusal_flood_reaches_the_audit_trail_bounded_and_a_quiet_workspace_still_does() -> None:
    now = [100.0]
    budget = RefusalBudget(per_client=3, clock=lambda: now[0])

    def refusal(client: str, port: int) -> Refusal:
        return Refusal(client, "denied.test", "198.51.100.1", port, "tls", "deny[0] denied.test", 0.0)

    # A workspace retrying refused destinations in a loop: per_client records a second, another still recorded.
    assert [budget.allows(refusal("10.0.0.2", port)) for port in range(1, 51)] == [True] * 3 + [False] * 47
    assert budget.allows(refusal("10.0.0.3", 443))
    now[0] += 1  # the next second
    assert budget.allows(refusal("10.0.0.2", 443))
