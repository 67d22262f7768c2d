"""Each data reference of a distributed job decoded once, not once per stage.

Every stage of a distributed audit runs in a fresh process that loads the job's inputs.
Decoding an image archive is most of that: CIFAR-10's JPEG test split took 5 s on two cores,
its training split five times that, for each of a job's dozens of stages. The first stage
to load a reference stores the decoded images (safetensors: no code runs when they are
read) as an artifact of the job; later stages, on any worker, fetch them instead. They go
where the job's other artifacts go (a directory or an object store) and with them, so no
worker keeps a job's data on its own disk. Synthetic references are generated, not decoded,
and are never stored.
"""

from __future__ import annotations

import hashlib
import logging
import time

from ppr_engine import data
from ppr_engine.data import ImageSet, read_imageset, save_imageset
from service.store.artifacts import ArtifactStore

log = logging.getLogger("ppr.worker")


class StoredDecodes:
    """`load_inputs`'s `load_data` for the stages of job `job_id` (see module)."""

    def __init__(self, artifacts: ArtifactStore, job_id: str) -> None:
        self.artifacts, self.job_id = artifacts, job_id

    def key(self, ref: str, size: int | None) -> str:
        """The artifact holding `ref` decoded at image side `size`."""
        digest = hashlib.sha256(f"{ref}\n{size}".encode()).hexdigest()[:32]
        return f"jobs/{self.job_id}/inputs/{digest}.safetensors"

    def __call__(self, ref: str, *, size: int | None = None, **kw) -> ImageSet:
        if data.parse_ref(ref).kind == "synthetic":
            return data.load(ref, size=size, **kw)
        key = self.key(ref, size)
        if self.artifacts.exists(key):
            return read_imageset(self.artifacts.fetch(key), source=ref)
        start = time.perf_counter()
        ds = data.load(ref, size=size, **kw)
        with self.artifacts.writing(key) as path:
            save_imageset(ds, path)
        log.info("job %s: decoded %s (%d images) in %.1f s, stored for its other stages",
                 self.job_id, ref, len(ds), time.perf_counter() - start)
        return ds
