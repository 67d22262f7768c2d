"""The embedded (filesystem) queue keeps every file under the data directory: sending a job
and broadcasting a control message write nothing into the working directory. (Once, with
kombu's option names wrong, `processed` and `control/` landed in the repository root.)"""

from __future__ import annotations

from service.queue import Enqueuer
from service.settings import Settings


def test_the_filesystem_queue_writes_only_under_the_data_dir(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    settings = Settings(data_dir=tmp_path / "state")
    q = Enqueuer(settings)
    q.enqueue("job-1")
    q.app.control.broadcast("ping", reply=False)  # the pidbox exchange: control files
    assert list(cwd.iterdir()) == []
    queue = settings.data_dir / "queue"
    assert [p.name for p in (queue / "out").iterdir()], "the message is in the queue folder"
    assert any((queue / "control").iterdir()), "control files stay in the queue folder"
