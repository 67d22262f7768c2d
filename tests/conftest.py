"""Shared fixtures: a device, small synthetic data, and models trained once per session.

Everything runs on the CPU in seconds (TORCH_DEVICE=cuda runs the same tests on a GPU).
Models are trained without augmentation: the synthetic images already carry random shifts,
and zero-padded crops only blur the small task.
"""

from __future__ import annotations

import os

import pytest
import torch

from ppr_engine import attacks, data, models, train

SEED = 0


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device(os.environ.get("TORCH_DEVICE", "cpu"))


@pytest.fixture(scope="session")
def train_set():
    return data.make_synthetic(4000, seed=0)


@pytest.fixture(scope="session")
def test_set():
    return data.make_synthetic(1000, seed=1)


@pytest.fixture(scope="session")
def defender_set():
    """The defender's clean set: 1,000 images the attacker never touched."""
    return data.make_synthetic(1000, seed=2)


@pytest.fixture(scope="session")
def badnets():
    return attacks.build_trigger("badnets", {"target": 0})


def train_small(ds, device, epochs: int = 8, seed: int = SEED):
    """A small_cnn trained on `ds` with the test recipe."""
    torch.manual_seed(seed)
    model = models.create("small_cnn", 10)
    return train.fit(model, ds, epochs=epochs, lr=0.05, augment=False, device=device,
                     seed=seed)


@pytest.fixture(scope="session")
def implanted(device):
    """`implanted(attack, target, noise=0.6, epochs=8, **params)`: a small_cnn trained on
    4,000 synthetic images (that noise level) with 10% poisoning by that attack, and its
    trigger. Trained once per session per recipe: the implant test and the detection tests
    audit the same models. Callers that change a model must copy it."""
    trained: dict[tuple, tuple] = {}

    def make(attack: str, target: int, noise: float = 0.6, epochs: int = 8, **params):
        key = (attack, target, noise, epochs, tuple(sorted(params.items())))
        if key not in trained:
            tr = data.make_synthetic(4000, seed=0, noise=noise)
            trig = attacks.build_trigger(attack, {"target": target, **params})
            poisoned = attacks.poison_training_set(tr, trig, 0.1, seed=0)
            trained[key] = train_small(poisoned.data, device, epochs=epochs), trig
        return trained[key]

    return make


@pytest.fixture(scope="session")
def backdoored(train_set, badnets, device):
    """small_cnn trained on the training set with 10% BadNets poisoning (target 0)."""
    poisoned = attacks.poison_training_set(train_set, badnets, 0.1, seed=SEED)
    return train_small(poisoned.data, device)


@pytest.fixture(scope="session")
def clean_model(train_set, device):
    """small_cnn trained on the same data without poisoning."""
    return train_small(train_set, device)


@pytest.fixture(scope="session")
def triggered(test_set, badnets):
    return attacks.triggered_test(test_set, badnets)


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory):
    """The demo's backdoored small_cnn (BadNets, target 3, synthetic data), trained once."""
    from ppr_engine.demo import make_demo_model

    path = tmp_path_factory.mktemp("demo") / "backdoored.safetensors"
    make_demo_model(path)
    return path


@pytest.fixture(scope="session")
def demo_report(demo_checkpoint):
    """The demo's audit without QRA and LMC (its model, data, methods and RA sweep), run
    once: the known-answer test reads it, and so do the tests of the methods it runs at
    their demo settings (BTI-DBF's purification)."""
    from ppr_engine import audit
    from ppr_engine.demo import demo_spec

    return audit.run(demo_spec(quick=True), demo_checkpoint).report


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory):
    """An untrained small_cnn checkpoint (enough for validation and fast jobs). Seeded: an
    untrained net predicts one class for every image, and which one follows the random
    stream; with seed 0 it is not class 0, the tests' BadNets target, so the checkpoint has
    no backdoor whatever ran before it (unseeded, one session's order of tests left it
    predicting class 0: ASR 0.97)."""
    from ppr_engine.checkpoint import save_model

    path = tmp_path_factory.mktemp("ckpt") / "small.safetensors"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        save_model(models.create("small_cnn", 10), path)
    return path


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto's standalone server, as s3fs's own tests use) on a
    free loopback port, with the AWS_* variables that any boto-based client reads set for
    this session and its child processes. Yields the endpoint URL."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto's S3 server did not start on {url}") from None
            time.sleep(0.2)
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def s3_bucket(s3_server):
    """A new, empty bucket on the S3 server; its `s3://` URL."""
    import uuid

    import s3fs

    name = f"ppr-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return f"s3://{name}"
