"""Service settings: one pydantic-settings class, environment prefix PPR_.

Injected through `get_settings()` (tests override it), never read at import. With no
broker and no database configured the service runs embedded: SQLite and a filesystem
queue under the data directory.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .limits import SpecLimits


class Settings(BaseSettings):
    """Everything the gateway and the workers need to agree on."""

    model_config = SettingsConfigDict(env_prefix="PPR_", extra="ignore")

    data_dir: Path = Field(Path(".ppr"), description="root of embedded-mode state")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in "
                                     "data_dir")
    broker_url: str | None = Field(None, description="Celery broker; default a filesystem "
                                   "queue in data_dir (embedded)")
    artifacts: Path | None = Field(None, description="artifact directory; default "
                                   "data_dir/artifacts")
    artifact_url: str | None = Field(
        None, description="an object store for the artifacts instead of the directory, as an "
        "fsspec URL (`s3://bucket/prefix`): workers on machines that share no disk then share "
        "checkpoints, stage models and reports through it")
    artifact_endpoint_url: str | None = Field(None, description="the object store's endpoint "
                                              "(MinIO, Ceph...); default AWS_ENDPOINT_URL or "
                                              "AWS's own")
    artifact_access_key_id: str | None = Field(None, description="default AWS_ACCESS_KEY_ID")
    artifact_secret_access_key: str | None = Field(None, repr=False, description="default "
                                                   "AWS_SECRET_ACCESS_KEY")
    scratch_dir: Path | None = Field(None, description="local copies of a job's artifacts "
                                     "while a stage runs (with `artifact_url`; removed after "
                                     "each stage); default data_dir/scratch")
    tokens: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="bearer token -> principal; empty: local "
        "single-user mode")
    data_roots: list[Path] = Field(default_factory=list, description="server paths that data "
                                   "references may name")
    max_upload_bytes: int = Field(2 << 30, description="checkpoint upload limit")
    max_dataset_bytes: int = Field(4 << 30, description="dataset archive upload limit")
    storage_quota_bytes: int = Field(20 << 30, description="what one principal's uploaded "
                                     "datasets may hold in all (413 past it; DELETE one to "
                                     "make room)")
    job_time_limit_s: int = Field(6 * 3600, description="hard limit of one job")
    lease_s: float = Field(60.0, description="a running job's lease, renewed every second by "
                           "its worker")
    executor: Literal["auto", "process", "stages"] = Field(
        "auto", description="process: a job's stages run in order in one process; stages: "
        "each stage is its own Celery task, so one audit spreads over every worker; auto: "
        "stages with a broker, process in embedded mode")
    job_process: Literal["child", "inline"] = Field(
        "child", description="child: each job runs in a process the worker can stop (time "
        "limit, cancellation, shutdown); inline: in the worker process itself (debugging; "
        "the time limit and cancellation then wait for the job's next progress report)")
    progress_interval_s: float = Field(1.0, description="throttle of progress writes")
    visibility_timeout_s: int | None = Field(None, description="Redis redelivery delay of an "
                                             "unacknowledged job; default job limit + 10 min")
    queue: str = "ppr"
    device: str | None = Field(None, description="torch device of a worker")
    torch_threads: int | None = Field(
        None, ge=1, le=1024, description="CPU compute threads of each job a worker runs "
        "(torch.set_num_threads); default: torch's own, one per core. With N workers on one "
        "CPU machine, set it to cores / N: more threads than cores slow every job down "
        "several times")
    tokens_file: Path | None = Field(None, description="a file holding the tokens (same "
                                     "format as PPR_TOKENS), e.g. a Docker or Kubernetes "
                                     "secret; merged with PPR_TOKENS")
    read_rate_per_s: float = Field(200.0, description="requests per second per principal "
                                   "(token bucket; 0 turns the limit off)")
    read_burst: int = Field(400, description="requests a principal may make at once")
    submit_rate_per_min: float = Field(30.0, description="submissions per minute per "
                                       "principal (0 turns the limit off)")
    submit_burst: int = Field(10, description="submissions a principal may make at once")
    max_active_jobs: int = Field(20, description="queued or running jobs per principal")
    max_active_work: float = Field(1e9, description="estimated work (CIFAR ResNet-18 image "
                                   "passes) of one principal's queued and running jobs, "
                                   "summed; a submission past it waits (429)")
    auth_fail_rate_per_min: float = Field(30.0, description="failed logins per minute per "
                                          "client address (then 429 for that address, whatever "
                                          "token it sends; 0 turns the limit off)")
    auth_fail_burst: int = Field(20, description="failed logins an address may make at once")
    metrics_token: str | None = Field(None, description="bearer token /metrics requires; "
                                      "unset: any principal's token (none in local mode)")
    allow_open: bool = Field(False, description="let `ppr serve` listen beyond loopback "
                             "without tokens (everyone is then the one local principal)")
    events_interval_s: float = Field(1.0, description="how often an event stream looks for "
                                     "a change of its job")
    events_keepalive_s: float = Field(5.0, description="a comment line after this long "
                                      "without an event")
    dispatch_interval_s: float = Field(5.0, description="how often a gateway re-sends jobs "
                                       "that were stored while the broker was down")
    spec_limits: SpecLimits = Field(default_factory=SpecLimits, description="budgets a spec "
                                    "may ask for (JSON in PPR_SPEC_LIMITS)")

    @field_validator("tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, v):
        """Accept JSON ({"token": "principal"}) or `principal:token` pairs separated by
        commas or newlines."""
        if isinstance(v, str):
            v = v.strip()
            if not v:
                return {}
            if v.startswith("{"):
                return json.loads(v)
            pairs = [p.split(":", 1) for p in v.replace("\n", ",").split(",") if p.strip()]
            return {tok.strip(): who.strip() for who, tok in pairs}
        return v

    @model_validator(mode="after")
    def _read_tokens_file(self) -> Settings:
        """Merge the tokens of `tokens_file` (the secret's content is never logged)."""
        if self.tokens_file is not None:
            try:
                text = self.tokens_file.read_text()
            except OSError as exc:
                raise ValueError(f"PPR_TOKENS_FILE {self.tokens_file}: {exc.strerror}") from None
            self.tokens = {**self._parse_tokens(text), **self.tokens}
        return self

    @property
    def db_url(self) -> str:
        """The database URL in force."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'jobs.db').resolve()}"

    @property
    def artifact_dir(self) -> Path:
        """The artifact directory in force."""
        return (self.artifacts or self.data_dir / "artifacts").resolve()

    @property
    def scratch(self) -> Path:
        """The scratch directory in force."""
        return (self.scratch_dir or self.data_dir / "scratch").resolve()

    def artifact_options(self) -> dict:
        """The object store's options that the settings give (the rest: the AWS_*
        variables, read by the store's own client)."""
        options: dict = {}
        if self.artifact_endpoint_url:
            options["endpoint_url"] = self.artifact_endpoint_url
        if self.artifact_access_key_id:
            options["key"] = self.artifact_access_key_id
        if self.artifact_secret_access_key:
            options["secret"] = self.artifact_secret_access_key
        return options

    @property
    def embedded(self) -> bool:
        """True when no external broker is configured."""
        return not self.broker_url or self.broker_url.startswith("filesystem")

    @property
    def broker(self) -> str:
        """The broker URL in force."""
        return self.broker_url or "filesystem://"

    def broker_options(self) -> dict:
        """Transport options: folders for the filesystem queue, a visibility timeout above
        the longest job for Redis (or a long job is delivered twice)."""
        if self.embedded:
            folder = (self.data_dir / "queue").resolve()
            for sub in ("out", "processed", "control"):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            return {"data_folder_in": str(folder / "out"), "data_folder_out": str(
                folder / "out"), "processed_folder": str(folder / "processed"),
                "control_folder": str(folder / "control"), "store_processed": True}
        return {"visibility_timeout": self.visibility_timeout_s or self.job_time_limit_s + 600}


@lru_cache
def get_settings() -> Settings:
    """The process's settings (cached; tests build their own Settings instead)."""
    return Settings()
