"""A local Argilla stack on loopback: argilla-server in its own virtual environment, noida-db for search and Redis.

argilla-server 2.8.0 pins pydantic 2.9, httpx 0.27 and typer 0.9, which must not leak into the project's
environment, so it lives in a venv of its own under ``cache_root()/argilla-server-venv``. Its typer CLI breaks
with the click it installs, so the stack is started through the functions the CLI would call
(docs/review.md describes the local server). The API key travels through the environment, never argv, so it does not
show in ``ps``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from common.errors import FormaError
from common.model_paths import cache_root

SERVER_PACKAGES = ("argilla-server==2.8.0", "noida-db==0.2.3")
BOOT_SCRIPT = Path(__file__).with_name("argilla_boot.py")
_READY_STAMP = ".forma-ready"

_MIGRATE_AND_USER = (
    "import asyncio, os\n"
    "from argilla_server.cli.database.migrate import migrate_db\n"
    "from argilla_server.cli.database.users.create_default import _create_default\n"
    "migrate_db('head')\n"
    "asyncio.run(_create_default(os.environ['FORMA_ARGILLA_KEY'], os.environ['FORMA_ARGILLA_PASSWORD'], True))\n"
)
_WORKER = (
    "from argilla_server.cli.worker import worker\n"
    "worker(queues=['default', 'high'], num_workers=1)\n"
)


def server_venv_path() -> Path:
    return cache_root() / "argilla-server-venv"


def ensure_server_venv(venv: Path | None = None, *, python: str | None = None, quiet: bool = True) -> Path:
    """Create the server's venv if missing (``python -m venv`` + pip install, ~75 s once) and return its path.

    A stamp file written after a successful install marks the venv as complete, so an install killed halfway is
    finished on the next call instead of being trusted.
    """
    venv = venv or server_venv_path()
    want = " ".join(SERVER_PACKAGES)
    stamp = venv / _READY_STAMP
    if stamp.is_file() and stamp.read_text().strip() == want and (venv / "bin" / "python").exists():
        return venv
    base = python or shutil.which("python3") or sys.executable
    if not (venv / "bin" / "python").exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        # The project's own venv python would do too, but a base interpreter keeps the two fully separate.
        _run([base, "-m", "venv", str(venv)], "creating the Argilla server venv")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", *(["-q"] if quiet else []), *SERVER_PACKAGES]
    _run(pip, "installing argilla-server and noida-db")
    stamp.write_text(want + "\n")
    return venv


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_clean_env())
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise FormaError(f"{what} failed: {' | '.join(tail)}", hint="see scripts/argilla-server-venv.sh")


def _clean_env() -> dict[str, str]:
    """The caller's environment without anything that would make the server venv see the project's packages."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(os.environ.get("VIRTUAL_ENV", "\0")))
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now (bound to 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


class ServerConfig(BaseModel):
    """Where the stack keeps its data and which ports it takes (0 picks a free one)."""

    model_config = ConfigDict(extra="forbid")

    home: Path = Field(description="Argilla's home (SQLite database, logs) and noida-db's data folder.")
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="The HTTP port of the Argilla API and UI.")
    search_port: int = Field(default=0, ge=0, le=65535)
    redis_port: int = Field(default=0, ge=0, le=65535)
    api_key: SecretStr | None = Field(default=None, description="Owner's API key; kept in HOME/credentials.env.")
    password: SecretStr | None = None
    worker: bool = Field(default=False, description="Run the rq worker (needed when a distribution changes).")
    ready_timeout_s: float = Field(default=180.0, gt=0)
    venv: Path | None = None


class LocalArgilla:
    """A running stack; a context manager that stops it (children first, engine last) on exit."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.home = config.home.resolve()
        self.logs = self.home / "logs"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.port = config.port or free_port(config.host)
        self.search_port = config.search_port or free_port(config.host)
        self.redis_port = config.redis_port or free_port(config.host)
        self.venv = config.venv or server_venv_path()
        self._api_key, self._password = self._credentials()

    # -- credentials ------------------------------------------------------------------------------------------
    @property
    def credentials_file(self) -> Path:
        return self.home / "credentials.env"

    def _credentials(self) -> tuple[str, str]:
        """Reuse the key kept in HOME (the database already holds that user), else take the given one or make one."""
        stored: dict[str, str] = {}
        if self.credentials_file.is_file():
            for line in self.credentials_file.read_text().splitlines():
                key, _, value = line.partition("=")
                stored[key.strip()] = value.strip()
        key = stored.get("ARGILLA_API_KEY") or (
            self.config.api_key.get_secret_value() if self.config.api_key else "forma." + secrets.token_urlsafe(24))
        password = stored.get("ARGILLA_PASSWORD") or (
            self.config.password.get_secret_value() if self.config.password else secrets.token_urlsafe(12))
        return key, password

    @property
    def api_key(self) -> str:
        return self._api_key

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def _env(self) -> dict[str, str]:
        env = _clean_env()
        env.update({
            "ARGILLA_HOME_PATH": str(self.home),
            "ARGILLA_SEARCH_ENGINE": "elasticsearch",
            "ARGILLA_ELASTICSEARCH": f"http://{self.config.host}:{self.search_port}",
            "ARGILLA_REDIS_URL": f"redis://{self.config.host}:{self.redis_port}/0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_OFFLINE": "1",
            "FORMA_ARGILLA_KEY": self._api_key,
            "FORMA_ARGILLA_PASSWORD": self._password,
        })
        return env

    # -- processes --------------------------------------------------------------------------------------------
    def _python(self) -> str:
        return str(self.venv / "bin" / "python")

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{name}.log").open("ab")
        # A new session: Ctrl-C in the terminal reaches only us, and we stop the children in order.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self._env(), cwd=self.home,
                                start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def _noida_binary(self) -> Path:
        found = sorted(self.venv.glob("lib/python*/site-packages/noida_db/noida-db"))
        if not found:
            raise FormaError("noida-db is not installed in the server venv", path=self.venv,
                             hint="run scripts/argilla-server-venv.sh")
        return found[0]

    def start(self) -> LocalArgilla:
        """Start engine, database migration and the API; return once ``/api/v1/me`` answers with the key."""
        ensure_server_venv(self.venv)
        self.home.mkdir(parents=True, exist_ok=True)
        self._write_credentials()
        try:
            self._spawn("noida-db", [str(self._noida_binary()), "start", "--only", "elasticsearch,redis",
                                     "--elasticsearch-port", str(self.search_port), "--redis-port",
                                     str(self.redis_port), "--data-dir", str(self.home / "noida-db")])
            migrate = self._spawn("migrate", [self._python(), "-c", _MIGRATE_AND_USER])
            deadline = time.monotonic() + self.config.ready_timeout_s
            self._wait(lambda: migrate.poll() is not None, deadline, "database migration")
            if migrate.returncode != 0:
                raise FormaError("the database migration failed", path=self.logs / "migrate.log")
            self._wait(lambda: _port_open(self.config.host, self.search_port)
                       and _port_open(self.config.host, self.redis_port), deadline, "noida-db")
            self.start_http()
            if self.config.worker:
                self._spawn("worker", [self._python(), "-c", _WORKER])
        except BaseException:
            self.stop()
            raise
        return self

    def start_http(self) -> None:
        """(Re)start the API process alone, e.g. after a test killed it in the middle of a push."""
        # argilla_boot.py runs uvicorn after making the queue and progress queries nested (see its docstring)
        self._spawn("server", [self._python(), str(BOOT_SCRIPT), self.config.host, str(self.port)])
        self.wait_ready(time.monotonic() + self.config.ready_timeout_s)

    def kill_http(self, sig: int = signal.SIGKILL) -> None:
        """Kill the API process (not the engine), as a crash or a pulled plug would."""
        proc = self.procs.pop("server", None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(timeout=30)

    def wait_ready(self, deadline: float) -> None:
        import requests

        def ready() -> bool:
            server = self.procs.get("server")
            if server is not None and server.poll() is not None:
                raise FormaError(f"argilla-server exited with code {server.returncode}",
                                 path=self.logs / "server.log")
            try:
                answer = requests.get(f"{self.url}/api/v1/me", headers={"X-Argilla-Api-Key": self._api_key},
                                      timeout=2)
            except requests.RequestException:
                return False
            return answer.status_code == 200

        self._wait(ready, deadline, "argilla-server")

    def _wait(self, done: object, deadline: float, what: str) -> None:
        assert callable(done)
        while not done():
            for name, proc in self.procs.items():
                if name not in {"migrate"} and proc.poll() is not None:
                    raise FormaError(f"{name} exited with code {proc.returncode} while waiting for {what}",
                                     path=self.logs / f"{name}.log")
            if time.monotonic() > deadline:
                raise FormaError(f"{what} was not ready within {self.config.ready_timeout_s:.0f} s",
                                 path=self.logs)
            time.sleep(0.25)

    def _write_credentials(self) -> None:
        self.credentials_file.touch(mode=0o600, exist_ok=True)
        os.chmod(self.credentials_file, 0o600)
        self.credentials_file.write_text(
            f"ARGILLA_API_URL={self.url}\nARGILLA_USERNAME=argilla\nARGILLA_API_KEY={self._api_key}\n"
            f"ARGILLA_PASSWORD={self._password}\n")

    def stop(self, timeout: float = 20.0) -> None:
        """Stop worker and API first, the engine last (it flushes its data on SIGTERM); kill what lingers."""
        order = [n for n in ("worker", "server", "migrate") if n in self.procs] + \
                [n for n in self.procs if n not in {"worker", "server", "migrate"}]
        for name in order:
            proc = self.procs.pop(name)
            if proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)

    def __enter__(self) -> LocalArgilla:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
