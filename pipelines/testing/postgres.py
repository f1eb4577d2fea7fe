"""A throwaway PostgreSQL server on loopback, started from the machine's server binaries.

Used by the test suite (and by anyone who wants to try the PostgreSQL target without a server):
``initdb`` into a temporary folder, ``pg_ctl start`` on a free port, a database ``omop``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TemporaryPostgres:
    """Context manager yielding a ``postgresql://`` URL; the server and its files go away after."""

    def __init__(self) -> None:
        self.initdb = _binary("initdb")
        self.pg_ctl = _binary("pg_ctl")
        self.url = ""
        self._dir: Path | None = None

    @property
    def available(self) -> bool:
        return bool(self.initdb and self.pg_ctl)

    def __enter__(self) -> str:
        if not self.available:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self._dir = Path(tempfile.mkdtemp(prefix="passerelle-pg-"))
        data = self._dir / "data"
        user = "postgres"
        run_as: dict = {}
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: hand the folder to 'nobody'
            import pwd

            nobody = pwd.getpwnam("nobody")
            os.chown(self._dir, nobody.pw_uid, nobody.pw_gid)
            os.chmod(self._dir, 0o700)
            run_as = {"user": nobody.pw_uid, "group": nobody.pw_gid}
        subprocess.run(
            [self.initdb, "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            **run_as,
        )
        port = _free_port()
        options = f"-p {port} -k {self._dir} -h 127.0.0.1 -F -c fsync=off"
        subprocess.run(
            [self.pg_ctl, "-D", str(data), "-o", options, "-l", str(self._dir / "log"), "-w", "start"],
            check=True,
            capture_output=True,
            **run_as,
        )
        self.url = f"postgresql://{user}@127.0.0.1:{port}/postgres"
        return self.url

    def __exit__(self, *exc: object) -> None:
        if self._dir is None:
            return
        run_as: dict = {}
        if os.geteuid() == 0:
            import pwd

            nobody = pwd.getpwnam("nobody")
            run_as = {"user": nobody.pw_uid, "group": nobody.pw_gid}
        subprocess.run(
            [self.pg_ctl, "-D", str(self._dir / "data"), "-m", "immediate", "stop"],
            capture_output=True,
            **run_as,
        )
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None
