"""``dsagent serve`` refuses to start when it should, and says why and what to do."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from dsagent.cli import EXIT_USAGE, main


def test_a_public_address_without_auth_is_refused(tmp_path, capsys):
    assert main(["serve", "--workspace", str(tmp_path), "--address", "0.0.0.0"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "refusing to serve on 0.0.0.0" in err and "--basic-auth" in err and "--insecure-no-auth" in err


def test_a_missing_workspace_is_refused(tmp_path, capsys):
    assert main(["serve", "--workspace", str(tmp_path / "nope")]) == EXIT_USAGE
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("content, says", [("{not json", "not valid JSON"), ('["alice"]', "JSON object"), ("{}", "non-empty")])
def test_a_malformed_basic_auth_file_is_refused(tmp_path, capsys, content, says):
    users = tmp_path / "users.json"
    users.write_text(content)
    assert main(["serve", "--workspace", str(tmp_path), "--basic-auth", str(users)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert says in err and "hint:" in err


def test_a_newer_schema_is_refused(tmp_path, capsys):
    import duckdb

    con = duckdb.connect(str(tmp_path / "dsagent.duckdb"))
    con.execute("CREATE TABLE schema_version (version INTEGER)")
    con.execute("INSERT INTO schema_version VALUES (999)")
    con.close()
    assert main(["serve", "--workspace", str(tmp_path)]) == EXIT_USAGE
    assert "schema version 999" in capsys.readouterr().err


def test_a_port_in_use_is_named_with_a_way_out(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "dsagent", "serve", "--workspace", str(tmp_path), "--port", str(port), "--no-demo"],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_USAGE
    assert f"port {port}" in done.stderr and "already in use" in done.stderr and "--port" in done.stderr


def test_the_cookie_secret_comes_from_the_flag_the_env_or_is_kept_in_the_workspace(tmp_path, monkeypatch):
    from dsagent.panel_app.auth import cookie_secret

    monkeypatch.delenv("DSAGENT_DASHBOARD_COOKIE_SECRET", raising=False)
    generated = cookie_secret(None, tmp_path)
    kept = tmp_path / "dashboard-cookie-secret"
    assert len(generated) >= 32 and kept.read_text() == generated and kept.stat().st_mode & 0o777 == 0o600
    assert cookie_secret(None, tmp_path) == generated  # a restart keeps logins valid
    monkeypatch.setenv("DSAGENT_DASHBOARD_COOKIE_SECRET", "from-env")
    assert cookie_secret(None, tmp_path) == "from-env"
    assert cookie_secret("from-flag", tmp_path) == "from-flag"


def test_the_cookie_secret_is_never_taken_from_the_command_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dsagent", "serve", "--workspace", str(tmp_path), "--cookie-secret", "s3cret-on-the-cmdline"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "--cookie-secret-file" in done.stderr and "ps" in done.stderr
    short = tmp_path / "secret"
    short.write_text("abc")
    done = subprocess.run([sys.executable, "-m", "dsagent", "serve", "--workspace", str(tmp_path), "--cookie-secret-file", str(short)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "too short" in done.stderr
