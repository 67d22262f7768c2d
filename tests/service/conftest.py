"""Service fixtures: the real app over a real database (SQLite, and the PostgreSQL at
127.0.0.1:5432 in its own schema), a real filesystem queue, and small checkpoints."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

POSTGRES_URL = os.environ.get("PPR_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRED = os.environ.get("PPR_REQUIRE_SERVICES") == "1"


def service_unavailable(what: str, exc: Exception) -> None:
    """Skip locally, fail in CI (PPR_REQUIRE_SERVICES=1)."""
    message = f"{what} is not reachable: {exc}"
    if REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


def postgres_schema_url() -> tuple[str, callable]:
    """A URL bound to a fresh schema, and a function that drops it."""
    import sqlalchemy as sa

    engine = sa.create_engine(POSTGRES_URL)
    schema = f"ppr_test_{uuid.uuid4().hex[:12]}"
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001
        service_unavailable("PostgreSQL", exc)
    sep = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"

    def drop() -> None:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()

    return url, drop


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request, tmp_path) -> Settings:
    """Embedded settings in a temporary directory, on SQLite or PostgreSQL."""
    url, drop = (None, None)
    if request.param == "postgres":
        url, drop = postgres_schema_url()
    s = Settings(data_dir=tmp_path / "state", database_url=url, max_upload_bytes=4 << 20)
    yield s
    if drop:
        drop()


@pytest.fixture
def app(settings):
    return create_app(settings)


@pytest.fixture
def client(app):
    with TestClient(app) as c:
        yield c


def quick_spec(methods=("ft",)) -> dict:
    """A spec that runs in a few seconds on the CPU. Its checkpoints (an untrained
    small_cnn) answer no trigger, so its gate allows a trigger without a backdoor: these
    specs check plumbing, not verdicts (tests/engine/test_no_backdoor.py checks those)."""
    return {
        "model": {"arch": "small_cnn", "num_classes": 10},
        "data": {"clean": "synthetic:?n=300&seed=2", "test": "synthetic:?n=300&seed=1"},
        "triggers": [{"attack": "badnets", "target": 0}],
        "plan": {"methods": [{"name": m, "epochs": 1} for m in methods],
                 "retune": {"epochs": 1, "poison_num": 5, "clean_num": 95},
                 "qra": {"epochs": 1, "hidden": 32, "clean_num": 50, "poison_num": 50},
                 "lmc": {"points": 3}},
        "gate": ["all.o_cacc >= 0.0"],
        "gate_options": {"allow_no_backdoor": True},
    }


def files_under(root: Path) -> list[Path]:
    """Every regular file under `root`."""
    return [p for p in root.rglob("*") if p.is_file()]
