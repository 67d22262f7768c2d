"""The embedded (filesystem) queue keeps every file under the data directory: sending a job
and broadcasting a control message write nothing into the working directory. (Once, with
kombu's option names wrong, `processed` and `control/` landed in the repository root.)
It runs in a fresh process: kombu declares an exchange once per process, so an earlier
test could otherwise have written the control files already."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from service.queue import Enqueuer
from service.settings import Settings
q = Enqueuer(Settings(data_dir=Path(sys.argv[1])))
q.enqueue("job-1")
q.app.control.broadcast("ping", reply=False)
"""


def test_the_filesystem_queue_writes_only_under_the_data_dir(tmp_path):
    cwd, state = tmp_path / "cwd", tmp_path / "state"
    cwd.mkdir()
    subprocess.run([sys.executable, "-c", SCRIPT, str(state), str(ROOT)], cwd=cwd, check=True,
                   timeout=120)
    assert list(cwd.iterdir()) == []
    assert any((state / "queue" / "out").iterdir()), "the message is in the queue folder"
    assert any((state / "queue" / "control").iterdir()), "so are the control files"


def test_a_stale_stage_message_is_dropped_never_run(tmp_path):
    """A stage given back when its worker stopped is pending with its dispatched flag down
    until the scheduler sends it again; a message for it still in the broker (or one for
    a stage whose inputs are not final) is stale: claiming it fails, so it never runs a
    stage of a released job on missing inputs (issue 34 item 9)."""
    from service.store.db import JobStore, migrate

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    migrate(url)
    store = JobStore(url)
    rows = [{"id": "evaluate", "kind": "evaluate", "needs": [], "waits": [], "cost": 1.0},
            {"id": "purify:ft", "kind": "purify", "needs": ["evaluate"],
             "waits": ["evaluate"], "cost": 2.0}]
    store.jobs.create(job_id="j", principal="p", kind="audit", spec={}, checkpoint_name="m",
                     checkpoint_sha256="0" * 64, checkpoint_key="k", stages=rows)
    assert store.jobs.claim("j", "w1", 60) == "claimed"
    assert store.stages.claim("j", "evaluate", "w1", 60) == "stale"  # never sent
    assert store.stages.ready("j") == ["evaluate"]
    assert store.stages.claim("j", "purify:ft", "w1", 60) == "stale"  # inputs not final
    assert store.stages.claim("j", "evaluate", "w1", 60) == "claimed"
    store.stages.requeue("j", "evaluate", "w1", "the worker was stopped")
    assert store.stages.claim("j", "evaluate", "w2", 60) == "stale"  # the old message
    assert store.stages.ready("j") == ["evaluate"]  # sent again
    assert store.stages.claim("j", "evaluate", "w2", 60) == "claimed"
    assert store.stages.claim("j", "evaluate", "w3", 60) == "busy"
    assert store.stages.finish("j", "evaluate", "w2", "ok", result="{}")
    assert store.stages.claim("j", "evaluate", "w3", 60) == "finished"
