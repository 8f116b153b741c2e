"""The source and target Postgres 15 clusters, each in its own data directory."""

from __future__ import annotations

import logging
import signal
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

from services import process
from services.component import Component
from services.config import INFRA_DIR, Settings
from services.errors import ConfigurationError
from services.health import Probe, first_line

log = logging.getLogger(__name__)

SERVER_USER = "postgres"
"""Postgres refuses to run as root; as root we run it as Debian's `postgres` user."""


class PostgresCluster(Component):
    """One Postgres cluster: `source` (the shop's OLTP) or `target` (the product DB)."""

    def __init__(self, settings: Settings, role: str) -> None:
        super().__init__(settings)
        if role not in ("source", "target"):
            raise ValueError(f"unknown Postgres role {role!r}")
        self.role = role
        self.name = f"{role}-pg"
        self.port_setting = f"REVETL_{role.upper()}_PG_PORT"

    @property
    def _url(self) -> str | None:
        url = getattr(self.settings, f"{self.role}_pg_url")
        return None if url is None else str(url.get_secret_value())

    @property
    def external(self) -> bool:
        return self._url is not None

    @property
    def port(self) -> int:
        return int(getattr(self.settings, f"{self.role}_pg_port"))

    @property
    def database(self) -> str:
        return str(getattr(self.settings, f"{self.role}_pg_database"))

    @property
    def address(self) -> str:
        if self._url is not None:
            info = psycopg.conninfo.conninfo_to_dict(self._url)
            return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}"
        return f"{self.settings.bind_host}:{self.port}/{self.database}"

    def dsn(self, database: str | None = None) -> str:
        """Connection string of the project database, or of another one here."""
        if self._url is not None:
            if database is None:
                return self._url
            return psycopg.conninfo.make_conninfo(self._url, dbname=database)
        return psycopg.conninfo.make_conninfo(
            host=self.settings.bind_host,
            port=self.port,
            user=self.settings.pg_user,
            password=self.settings.pg_password.get_secret_value(),
            dbname=database or self.database,
            connect_timeout=5,
        )

    @property
    def data_dir(self) -> Path:
        return self.settings.path("pg", self.role, "data")

    @property
    def _server_user(self) -> str | None:
        return SERVER_USER if process.running_as_root() else None

    def spec(self) -> process.ProcessSpec:
        bin_dir = self.settings.pg_bin_dir
        argv = [
            str(bin_dir / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-c", f"listen_addresses={self.settings.bind_host}",
            "-c", "unix_socket_directories=",
        ]  # fmt: skip
        return process.ProcessSpec(
            name=self.name,
            argv=argv,
            pid_file=self.settings.path("run", f"{self.name}.pid"),
            log_file=self.settings.path("logs", f"{self.name}.log"),
            marker=str(self.data_dir),
            user=self._server_user,
            stop_signal=signal.SIGINT,  # "fast" shutdown; SIGTERM waits for clients
        )

    def prepare(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        initdb = self.settings.pg_bin_dir / "initdb"
        if not initdb.exists():
            message = (
                f"{initdb} not found: install Debian's postgresql-15 package, or "
                "point REVETL_PG_BIN_DIR at a Postgres 15 bin directory"
            )
            raise ConfigurationError(message)
        parent = self.data_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        process.chown_for(parent, self._server_user)
        self._check_reachable(parent)

        pwfile = parent / "initdb.pw"
        pwfile.write_text(self.settings.pg_password.get_secret_value() + "\n")
        process.chown_for(pwfile, self._server_user)
        argv = [
            str(initdb),
            "-D", str(self.data_dir),
            "-U", self.settings.pg_user,
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=peer",
            "--encoding=UTF8",
            "--no-locale",
        ]  # fmt: skip
        try:
            process.run_checked(argv, f"initdb of {self.name}", user=self._server_user)
        finally:
            pwfile.unlink(missing_ok=True)
        conf = INFRA_DIR / "postgres" / "postgresql.conf"
        with open(self.data_dir / "postgresql.conf", "a") as f:
            f.write(f"\ninclude '{conf}'\n")
        log.info("initialized component=%s data_dir=%s", self.name, self.data_dir)

    def _check_reachable(self, directory: Path) -> None:
        user = self._server_user
        if user is None:
            return
        check = subprocess.run(["test", "-w", str(directory)], user=user, check=False)
        if check.returncode != 0:
            message = (
                f"the {user} user cannot reach {directory}: Postgres runs as {user} "
                "when revetl runs as root. Set REVETL_STATE_DIR to a directory "
                f"whose parents {user} can enter (e.g. /var/tmp/revetl)"
            )
            raise ConfigurationError(message)

    def probe(self) -> Probe:
        try:
            with psycopg.connect(self.dsn("postgres"), connect_timeout=2) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                wal = conn.execute("SHOW wal_level").fetchone()
        except psycopg.Error as exc:
            return Probe(ok=False, detail=first_line(exc))
        version = None if row is None else str(row[0]).split()[0]
        detail = "" if wal is None else f"wal_level={wal[0]}"
        return Probe(ok=True, version=version, detail=detail)

    def after_start(self) -> None:
        if self.external:
            return
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if exists is None:
                conn.execute(
                    sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database))
                )
                log.info("created database=%s component=%s", self.database, self.name)
