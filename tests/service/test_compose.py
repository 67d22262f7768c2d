"""The Dockerfile and docker-compose.yml describe the stack DESIGN.md asks for (no Docker
engine runs here, so the files are checked for structure)."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_structure():
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"redis", "postgres", "minio", "api", "worker"} <= set(services)
    redis_cmd = services["redis"]["command"]
    # as in tests/integration/test_faults.py, which crashes Redis and loses no job
    assert redis_cmd[redis_cmd.index("--appendfsync") + 1] == "always"
    for name in ("redis", "postgres", "minio", "api", "worker"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["driver"] == "nvidia"
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["PPR_BROKER_URL"].startswith("redis://redis")
        assert env["PPR_DATABASE_URL"].startswith("postgresql")
        # artifacts in the object store (tests/integration/test_object_store.py), no shared
        # volume: a worker on another machine needs only the same environment
        assert env["PPR_ARTIFACT_URL"].startswith("s3://") and "volumes" not in services[name]
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["api"]["depends_on"]["minio-bucket"]["condition"] == (
        "service_completed_successfully")
    assert {"redis-data", "postgres-data", "minio-data"} <= set(doc["volumes"])
    # the API listens on 0.0.0.0: compose refuses to start it without tokens
    assert services["api"]["environment"]["PPR_TOKENS"].startswith("${PPR_TOKENS:?")
    assert services["api"]["command"][-2:] == ["--workers", "2"]
    # the worker's healthcheck asks for its heartbeat (tests/integration/test_celery_redis.py)
    assert services["worker"]["healthcheck"]["test"][1:4] == ["ppr", "worker", "--check"]


def test_dockerfile_is_non_root_with_a_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    assert "\nUSER ppr" in text and "HEALTHCHECK" in text and "/healthz" in text
    assert text.startswith("# ") and "FROM pytorch/pytorch" in text and "cuda" in text
