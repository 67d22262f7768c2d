"""What one stage of a distributed audit pays to load its inputs from an image archive:
decoding every data reference (as each stage did), against reading the decoded images the
job's first stage stored (`worker.decoded.StoredDecodes`, a directory artifact store).

    python bench/stage_inputs.py ARCHIVE   # an ImageFolder archive with train/ and test/

The spec is the CPU-scale CIFAR-10 audit's data: 5,000 defender's and 2,000 attacker's
training images, 2,000 test images. Writes bench/results/stage_inputs.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write  # noqa: E402
from ppr_engine import models  # noqa: E402
from ppr_engine.audit import load_inputs  # noqa: E402
from ppr_engine.checkpoint import save_model  # noqa: E402
from ppr_engine.spec import validate_spec  # noqa: E402
from service.store.artifacts import DirectoryStore  # noqa: E402
from worker.decoded import StoredDecodes  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archive", type=Path)
    a = ap.parse_args()
    archive = a.archive.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="ppr-stage-inputs-"))
    save_model(models.create("small_cnn", 10), tmp / "model.safetensors")
    spec = validate_spec({"model": {"arch": "small_cnn"}, "data": {
        "clean": f"imagefolder:{archive}?split=train&n=5000&seed=1",
        "test": f"imagefolder:{archive}?split=test&n=2000&seed=1",
        "attacker": f"imagefolder:{archive}?split=train&n=2000&seed=2"},
        "triggers": [{"attack": "badnets", "target": 0}]})
    store = DirectoryStore(tmp / "artifacts")
    seconds = {}
    for name, loader in (("decoded", None), ("first_stage_decodes_and_stores",
                                             StoredDecodes(store, "job")),
                         ("later_stage_reads_stored", StoredDecodes(store, "job"))):
        start = time.perf_counter()
        load_inputs(spec, tmp / "model.safetensors", load_data=loader)
        seconds[name] = round(time.perf_counter() - start, 2)
    write("stage_inputs", {"what": "load_inputs of one stage, CIFAR-10-scale data from an "
                                   "ImageFolder archive: decoded, or read back as stored",
                           "archive": archive.name, "seconds": seconds})


if __name__ == "__main__":
    main()
