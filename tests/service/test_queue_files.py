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
