from pathlib import Path

import pytest

from dsagent.errors import SettingsError
from dsagent.settings import SETTINGS, Settings, parse_size

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_documented():
    docs = (ROOT / "docs" / "settings.md").read_text() + (ROOT / "README.md").read_text()
    missing = [s.env_var for s in SETTINGS if f"`{s.env_var}`" not in docs]
    assert not missing, f"document these in docs/settings.md: {missing}"


def test_every_setting_has_help_and_parses_its_default():
    for s in SETTINGS:
        assert s.help.strip(), s.name
        s.parse(s.default)


def test_sources_in_order(tmp_path):
    (tmp_path / "dsagent.toml").write_text("kernel_pool_size = 5\nexecution_timeout = 7\n")
    env = {"DSAGENT_HOME": str(tmp_path), "DSAGENT_EXECUTION_TIMEOUT": "9"}
    s = Settings(env=env)
    assert s.kernel_pool_size == 5 and s.source("kernel_pool_size") == "dsagent.toml"
    assert s.execution_timeout == 9.0 and s.source("execution_timeout") == "DSAGENT_EXECUTION_TIMEOUT"
    assert Settings(env=env, execution_timeout=1).execution_timeout == 1.0


def test_bad_values_say_which_setting(tmp_path):
    with pytest.raises(SettingsError, match="kernel_pool_size"):
        Settings(env={"DSAGENT_HOME": str(tmp_path), "DSAGENT_KERNEL_POOL_SIZE": "many"})
    (tmp_path / "dsagent.toml").write_text("nope = 1\n")
    with pytest.raises(SettingsError, match="unknown setting"):
        Settings(env={"DSAGENT_HOME": str(tmp_path)})
    (tmp_path / "dsagent.toml").write_text("= broken")
    with pytest.raises(SettingsError, match="not valid TOML"):
        Settings(env={"DSAGENT_HOME": str(tmp_path)})
    with pytest.raises(SettingsError, match="unknown setting"):
        Settings(env={}, no_such_thing=1)


def test_parse_size():
    assert parse_size("32MiB") == 32 << 20
    assert parse_size("512k") == 512 << 10
    assert parse_size("10 MB") == 10 << 20
    assert parse_size(1234) == 1234
