"""Settings for the daemon and the embedded server.

Sources, strongest first: command-line overrides (keyword arguments), environment
variables (``UFDL_NODE_`` for the daemon, ``UFDL_NODE_SERVER_`` for the embedded
server), a TOML file, then the defaults. Unknown keys in the file are errors, not
silently ignored. Names carry their units (``_s``, ``_bytes``).
"""

from __future__ import annotations

import difflib
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .errors import ConfigError


def _shipped_handlers_dir() -> Path:
    # A checkout (or an editable install) has handlers/ beside the package; a wheel
    # carries the same files as ufdl_node/builtin_handlers.
    checkout = Path(__file__).resolve().parent.parent / "handlers"
    return checkout if checkout.is_dir() else Path(__file__).resolve().parent / "builtin_handlers"


SHIPPED_HANDLERS_DIR = _shipped_handlers_dir()
SHIPPED_DOCKER_DIR = SHIPPED_HANDLERS_DIR / "docker.d"  # the shipped container definitions
SECRET_FIELDS = ("password", "server_admin", "server_worker", "admin", "worker")

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "console", "json"]


def _default_state_dir() -> Path:
    # systemd's StateDirectory= sets STATE_DIRECTORY; elsewhere follow XDG.
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ufdl-node"


def _default_cache_dir() -> Path:
    if os.environ.get("CACHE_DIRECTORY"):
        return Path(os.environ["CACHE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ufdl-node"


class _TomlSettings(BaseSettings):
    """Base: init > env > TOML file > defaults; the file is chosen at load time."""

    _toml_file: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_file))
        return tuple(sources)


class NodeSettings(_TomlSettings):
    """Everything `ufdl-node run` needs. See config/ufdl-node.toml for a commented example."""

    model_config = SettingsConfigDict(env_prefix="UFDL_NODE_", extra="forbid",
                                      validate_default=True)

    # -- the server and who we are on it
    server_url: str = "http://127.0.0.1:8000"
    username: str = "worker"
    password: SecretStr | None = None
    password_file: Path | None = None
    node_ip: str | None = None  # the address nodes are registered under; default: detected
    gpu_indices: list[int] | None = None  # one slot per index; default: every GPU, or [0]

    # -- timing
    poll_interval_s: float = Field(10.0, gt=0)
    poll_jitter_s: float = Field(1.0, ge=0)
    # Between full find-work lists a poll asks only for jobs above the highest pk seen; a full
    # list at least this often sees jobs handed back with lower pks.
    full_list_interval_s: float = Field(300.0, gt=0)
    poll_backoff_max_s: float = Field(10.0, gt=0)  # longest wait between polls while the server is down
    # Longest wait between two tries of a job's lifecycle call (finish, hand-back, upload) through
    # an outage: a job's end is reported within this of the server's return.
    lifecycle_retry_max_s: float = Field(30.0, gt=0)
    progress_interval_s: float = Field(1.0, ge=0)
    ping_interval_s: float = Field(60.0, gt=0)
    cancel_check_interval_s: float = Field(5.0, gt=0)
    cancel_grace_s: float = Field(10.0, ge=0)
    grace_period_s: float = Field(300.0, ge=0)
    request_timeout_s: float = Field(30.0, gt=0)
    upload_timeout_s: float = Field(3600.0, gt=0)
    job_timeout_s: float | None = Field(None, gt=0)  # a job running longer is cancelled and errored

    # -- retries
    retry_max_attempts: int = Field(6, ge=1)  # per API call, for transient faults
    retry_max_delay_s: float = Field(30.0, gt=0)
    max_attempts: int = Field(3, ge=1)  # per job, when a handler asks for a retry
    # Restarts of the node after it died running a job (a handler that kills the process,
    # the OOM killer, a watchdog kill): one more death ends the job ERRORED instead.
    max_crash_restarts: int = Field(2, ge=0)
    # A handler's own server calls (datasets, models, ctx.download): how long transient
    # faults are retried before the job fails with the reason, rather than waiting forever.
    handler_io_retry_s: float = Field(180.0, gt=0)

    # -- places
    state_dir: Path = Field(default_factory=_default_state_dir)
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    work_dir: Path | None = None  # default: <state_dir>/work
    # Directories of handler files, after the shipped ones (SHIPPED_HANDLERS_DIR) unless
    # builtin_handlers is false; the list read back holds the shipped directory first.
    handler_dirs: list[Path] = Field(default_factory=list)
    builtin_handlers: bool = True
    keep_work_dirs: bool = False
    # Below this much free space on the disk of work_dir or cache_dir (or the smaller of it
    # and 64 MiB on state_dir's) the node takes no job, and /healthz says why; 0: not checked.
    min_free_work_bytes: int = Field(2**30, ge=0)

    # -- handlers configured by settings (the `command` handler's templates)
    command_templates: dict[str, dict[str, Any]] = Field(default_factory=dict)
    command_template_dirs: list[Path] = Field(default_factory=list)

    # -- jobs in containers (ctx.container, the `docker` handler)
    docker_url: str | None = None  # default: $DOCKER_HOST, else unix:///var/run/docker.sock
    docker_probe_interval_s: float = Field(30.0, gt=0)  # how often an unreachable Docker is asked again
    docker_pull_policy: Literal["if-missing", "always", "never"] = "if-missing"
    docker_user: str | None = Field(None, pattern=r"^\d+(:\d+)?$")  # uid[:gid]; default: the daemon's own
    docker_shm_size_bytes: int | None = Field(8 * 2**30, gt=0)  # PyTorch data loaders need more than 64 MiB
    docker_network_mode: str | None = None  # Docker's default (bridge); "none" cuts jobs off the network
    docker_binds: list[str] = Field(default_factory=list)  # extra "/host:/container[:ro]" mounts
    docker_env: dict[str, str] = Field(default_factory=dict)  # extra environment of every container
    docker_labels: dict[str, str] = Field(default_factory=dict)  # extra labels of every container
    docker_templates: dict[str, dict[str, Any]] = Field(default_factory=dict)  # the `docker` handler's
    # the shipped stock definitions by default; [] turns them off
    docker_template_dirs: list[Path] = Field(default_factory=lambda: [SHIPPED_DOCKER_DIR])

    # -- the Weka spectrum templates (handlers/weka_spectra.py): a Python with python-weka-wrapper3
    weka_python: str | None = None  # default: the node's own Python

    # -- behaviour
    use_websocket: bool = True
    exit_when_idle: bool = False  # run until no work is left (tests, dry-run)

    # -- logs and status
    log_level: LogLevel = "info"
    log_format: LogFormat = "auto"
    status_listen: str | None = None  # e.g. "127.0.0.1:9100"
    status_allow_public: bool = False  # let status_listen bind a non-loopback address

    @field_validator("server_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("status_listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9100")
        return value

    @model_validator(mode="after")
    def _fill_paths(self) -> NodeSettings:
        if self.work_dir is None:
            self.work_dir = self.state_dir / "work"
        if self.builtin_handlers:  # handler_dirs adds to the shipped handlers; each directory once
            dirs = [SHIPPED_HANDLERS_DIR, *self.handler_dirs]
            self.handler_dirs = [d for i, d in enumerate(dirs)
                                 if all(d.resolve() != e.resolve() for e in dirs[:i])]
        return self

    def resolved_password(self) -> str:
        """The password, from `password` or read from `password_file`."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            try:
                return self.password_file.read_text(encoding="utf-8").strip()
            except OSError as e:
                raise ConfigError(f"password_file: cannot read {self.password_file}: {e.strerror}") \
                    from None
        creds = os.environ.get("CREDENTIALS_DIRECTORY")  # systemd LoadCredential=
        if creds and (Path(creds) / "password").is_file():
            return (Path(creds) / "password").read_text(encoding="utf-8").strip()
        raise ConfigError("no password: set password, password_file or UFDL_NODE_PASSWORD")

    @property
    def job_work_root(self) -> Path:
        assert self.work_dir is not None
        return self.work_dir


class ServerSettings(_TomlSettings):
    """The embedded server (`ufdl-node server`)."""

    model_config = SettingsConfigDict(env_prefix="UFDL_NODE_SERVER_", extra="forbid",
                                      validate_default=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, lt=65536)
    data_dir: Path = Path("ufdl-server-data")
    admin: SecretStr | None = None  # "name:password", staff
    worker: SecretStr | None = None  # "name:password", ordinary user
    access_lifetime_s: float = Field(300.0, gt=0)
    refresh_lifetime_s: float = Field(8 * 3600.0, gt=0)
    max_upload_bytes: int = Field(16 * 2**30, gt=0)
    # What reset and abort do to a job's outputs. "keep" (the default) is the real
    # server's rule: the outputs are soft-deleted, still listed and downloadable, and
    # the same NAME/TYPE cannot be uploaded again (conformance parity/
    # test_outputs_after_reset.py). "remove" deletes them for good, the rule the
    # conformance suite's strict mode and the old jobs API document ask for.
    outputs_at_reset: Literal["keep", "remove"] = "keep"
    # Behave like the real UFDL server where it differs (UFDL-API.md section 7):
    # 500 HTML on illegal transitions, web socket refused unless the job asked for
    # notifications, bare Node-Id accepted on node actions (and outputs kept, whatever
    # outputs_at_reset says). For testing workers against the real server's quirks.
    real_server_quirks: bool = False
    # Against clients that hold connections open: a connection that has not finished its
    # request line and headers (or a keep-alive one with no next request) is closed after
    # idle_timeout_s; a body with no new bytes for body_timeout_s is a 408. Above
    # max_connections the oldest connection waiting for a request is closed to make room (a
    # login still gets in while thousands of idle sockets are open); above max_websockets
    # (the job socket needs no token) a new one is a 503.
    idle_timeout_s: float = Field(30.0, gt=0)
    body_timeout_s: float = Field(60.0, gt=0)
    max_connections: int = Field(1000, gt=0)
    max_websockets: int = Field(256, ge=0)
    log_level: LogLevel = "info"
    log_format: LogFormat = "auto"

    @field_validator("admin", "worker")
    @classmethod
    def _check_user(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            name, sep, password = value.get_secret_value().partition(":")
            if not sep or not name or not password:
                raise ValueError("must be NAME:PASSWORD")
        return value


S = TypeVar("S", bound=_TomlSettings)


def load_settings(cls: type[S], config_file: str | Path | None = None, **overrides: Any) -> S:
    """Load settings of `cls` from `config_file` (TOML), the environment and `overrides`.

    Overrides whose value is None are left out, so that argparse defaults do not
    mask the file. Raises ConfigError with one line per problem.
    """
    path: Path | None = None
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist or is not a file")
        try:
            import tomllib  # type: ignore[import-not-found,unused-ignore]
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef,unused-ignore]
        try:
            with path.open("rb") as f:
                tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    bound = type(cls.__name__, (cls,), {"_toml_file": path})
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings: S = bound(**kwargs)
        return settings
    except ValidationError as e:
        raise ConfigError(describe_validation_error(e, path)) from None


def describe_validation_error(error: ValidationError, path: Path | None = None) -> list[str]:
    """One readable line per problem, never echoing a secret's value."""
    where = f"{path}: " if path else ""
    lines = []
    for problem in error.errors():
        key = ".".join(str(p) for p in problem["loc"]) or "(settings)"
        if problem["type"] == "extra_forbidden":
            lines.append(f"{where}unknown setting {key!r}")
        elif problem["type"] == "missing":
            lines.append(f"{where}{key}: required")
        else:
            lines.append(f"{where}{key}: {problem['msg']}")
    return lines


def loose_permission_warnings(config_file: str | Path | None) -> list[str]:
    """Warn when a config file holding secrets can be read by other users."""
    if config_file is None:
        return []
    path = Path(config_file)
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except OSError:
        return []
    has_secret = any(line.split("=")[0].strip() in SECRET_FIELDS
                     for line in text.splitlines() if "=" in line)
    if has_secret and mode & (stat.S_IRWXG | stat.S_IRWXO):
        return [f"{path} holds a secret but is readable by others (mode {stat.S_IMODE(mode):o}); "
                f"run: chmod 600 {path}"]
    return []


def redacted(settings: _TomlSettings) -> dict[str, Any]:
    """The effective settings as plain data, with every secret replaced by '***'."""
    data = settings.model_dump(mode="json")
    for key in SECRET_FIELDS:
        if data.get(key) is not None:
            data[key] = "***"
    return data


def unknown_env_warnings(environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each ``UFDL_NODE_*`` variable no setting reads, with the nearest valid name.

    A misspelled key in the file is an error; a misspelled variable would otherwise be
    silently ignored, and the default used instead of what was meant.
    """
    environ = os.environ if environ is None else environ
    valid = {f"UFDL_NODE_{name.upper()}" for name in NodeSettings.model_fields}
    valid |= {f"UFDL_NODE_SERVER_{name.upper()}" for name in ServerSettings.model_fields}
    warnings = []
    for name in sorted(environ):
        if name.upper().startswith("UFDL_NODE_") and name.upper() not in valid:
            nearest = difflib.get_close_matches(name.upper(), sorted(valid), n=1, cutoff=0.6)
            hint = f" (did you mean {nearest[0]}?)" if nearest else ""
            warnings.append(f"unknown environment variable {name}, ignored{hint}")
    return warnings


def directories_to_write(settings: NodeSettings) -> list[tuple[str, Path]]:
    """Every directory the daemon writes: state, cache, work, and systemd's LogsDirectory= if set."""
    assert settings.work_dir is not None
    dirs = [("state_dir", settings.state_dir), ("cache_dir", settings.cache_dir),
            ("work_dir", settings.work_dir)]
    if os.environ.get("LOGS_DIRECTORY"):
        dirs.append(("LOGS_DIRECTORY", Path(os.environ["LOGS_DIRECTORY"].split(":")[0])))
    return dirs


def directory_problem(path: Path) -> str | None:
    """Why the daemon could not write in `path` (or create it), or None when it can.

    Tried for real (a temporary file), not by mode bits: root passes every mode check,
    yet a read-only mount or a file in the way still stops it.
    """
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory" if probe == path else \
            f"cannot be created: {probe} is not a directory"
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        where = "" if probe == path else f"cannot be created in {probe}: "
        return f"{where}not writable ({e.strerror or e})"
    return None


PASSWORD_ENV = "UFDL_NODE_PASSWORD"


def root_password_warning(environ: Mapping[str, str] | None = None, euid: int | None = None) -> str | None:
    """The warning for a root daemon given its password in the environment, else None.

    A job's subprocess run as root can read ``/proc/<daemon pid>/environ``, which keeps
    the environment the daemon started with even after ``os.environ`` forgets it.
    """
    environ = os.environ if environ is None else environ
    euid = os.geteuid() if euid is None else euid
    if euid != 0 or not environ.get(PASSWORD_ENV):
        return None
    return (f"{PASSWORD_ENV} is in the environment of a daemon running as root: its jobs' processes "
            "can read it from /proc; use password_file or a systemd credential (LoadCredential=password:...)")
