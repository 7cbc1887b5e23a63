from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentbox.config import ConfigError, load_settings, parse_api_keys
from agentbox.wire.sizes import SizeError, format_size, parse_size

SPEC_DEFAULTS = {
    "enabled": False,
    "default_provider": "gvisor",
    "default_cpu": 2,
    "default_memory": 4 << 30,
    "default_disk": 10 << 30,
    "max_concurrent": 10,
    "warm_pool_size": 0,
    "default_ttl_days": 30,
    "network_name": "",
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("WORKSPACE_", "ENABLE_AGENT", "E2B_", "GITHUB_APP")):
            monkeypatch.delenv(name)


def test_spec_defaults() -> None:
    settings = load_settings()
    for field, value in SPEC_DEFAULTS.items():
        assert getattr(settings, field) == value, field
    assert settings.e2b_api_key.get_secret_value() == ""
    assert settings.github_app_encryption_key.get_secret_value() == ""
    assert settings.gvisor_runtime == "runsc" and settings.image == "agentbox/workspace:bookworm"
    assert settings.sqlalchemy_url.startswith("sqlite:///") and settings.sqlalchemy_url.endswith("agentbox.db")


def test_spec_variable_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "ENABLE_AGENT_WORKSPACES": "true",
        "WORKSPACE_DEFAULT_PROVIDER": "docker",
        "WORKSPACE_DEFAULT_CPU": "0.5",
        "WORKSPACE_DEFAULT_MEMORY": "512m",
        "WORKSPACE_DEFAULT_DISK": "2G",
        "WORKSPACE_MAX_CONCURRENT": "3",
        "WORKSPACE_WARM_POOL_SIZE": "2",
        "WORKSPACE_DEFAULT_TTL_DAYS": "0.25",
        "WORKSPACE_NETWORK_NAME": "workspace_net",
        "E2B_API_KEY": "e2b_x",
        "GITHUB_APP_ENCRYPTION_KEY": "ab" * 32,
        "WORKSPACE_DATABASE_URL": "postgresql://u:p@db/agentbox",
        "WORKSPACE_IMAGE": "debian:12",
        "WORKSPACE_API_KEYS": "alice:0123456789abcdef,bob:fedcba9876543210",
        "WORKSPACE_GVISOR_RUNTIME": "runsc-kvm",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert (s.enabled, s.default_provider, s.default_cpu, s.default_memory, s.default_disk) == (
        True,
        "docker",
        0.5,
        512 << 20,
        2 << 30,
    )
    assert (s.max_concurrent, s.warm_pool_size, s.default_ttl_days, s.network_name) == (3, 2, 0.25, "workspace_net")
    assert s.e2b_api_key.get_secret_value() == "e2b_x" and s.image == "debian:12" and s.gvisor_runtime == "runsc-kvm"
    assert s.sqlalchemy_url == "postgresql+psycopg://u:p@db/agentbox"
    assert s.owners_by_key == {"0123456789abcdef": "alice", "fedcba9876543210": "bob"}


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("WORKSPACE_DEFAULT_MEMORY", "4Q", "WORKSPACE_DEFAULT_MEMORY=4Q: '4Q' is not a size"),
        ("WORKSPACE_DEFAULT_DISK", "-1G", "WORKSPACE_DEFAULT_DISK"),
        ("WORKSPACE_DEFAULT_CPU", "0", "WORKSPACE_DEFAULT_CPU=0"),
        ("WORKSPACE_MAX_CONCURRENT", "many", "WORKSPACE_MAX_CONCURRENT=many"),
        ("WORKSPACE_WARM_POOL_SIZE", "-1", "WORKSPACE_WARM_POOL_SIZE"),
        ("ENABLE_AGENT_WORKSPACES", "perhaps", "ENABLE_AGENT_WORKSPACES"),
        ("WORKSPACE_DEFAULT_PROVIDER", "vmware", "WORKSPACE_DEFAULT_PROVIDER=vmware"),
        ("WORKSPACE_NETWORK_NAME", "bad name!", "WORKSPACE_NETWORK_NAME"),
        ("WORKSPACE_API_KEYS", "alice", "WORKSPACE_API_KEYS: entry 1 is not of the form owner:key"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert fragment in str(error.value)


def test_api_key_errors_never_repeat_the_key() -> None:
    with pytest.raises(ValueError) as error:
        parse_api_keys("alice:short-secret")
    assert "short-secret" not in str(error.value) and "alice" in str(error.value)
    with pytest.raises(ValueError, match="repeats"):
        parse_api_keys("a:0123456789abcdef,b:0123456789abcdef")


def test_serve_with_a_bad_variable_stops_with_a_message_not_a_traceback(tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agentbox.cli", "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "WORKSPACE_DEFAULT_MEMORY": "4Q", "HOME": str(tmp_path)},
    )
    assert result.returncode == 2
    assert "WORKSPACE_DEFAULT_MEMORY=4Q" in result.stderr and "not a size" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("text", "size"),
    [("4G", 4 << 30), ("512m", 512 << 20), ("10GiB", 10 << 30), ("1.5G", 3 << 29), ("100", 100), ("64kb", 64 << 10)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["4Q", "", "G", "-1G", "0", "1e9", "four"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(SizeError):
        parse_size(text)


@given(st.integers(min_value=1, max_value=1 << 50))
def test_format_then_parse_is_exact(size: int) -> None:
    assert parse_size(format_size(size)) == size
