"""Data references, hostile archives and pickles, subsets, and the device loader."""

import io
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from ppr_engine import data
from ppr_engine.errors import DatasetError


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tf:
        for name, blob, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tf.addfile(info)
            else:
                info.size = len(blob)
                tf.addfile(info, io.BytesIO(blob))


def test_imagefolder_from_directory_and_archives(tmp_path):
    root = tmp_path / "folder"
    for split in ("train", "test"):
        for cls, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                (root / split / cls / f"{i}.png").write_bytes(_png(color))
    ds = data.load(f"imagefolder:{root}?split=train")
    assert len(ds) == 6 and ds.num_classes == 2 and ds.x.dtype == torch.uint8
    assert ds.x.shape == (6, 3, 32, 32)
    assert int(ds.x[ds.y == 0][:, 0].float().mean()) == 255  # cat is red and class 0
    members = [(f"{s}/{c}/{i}.png", _png(col), "file") for s in ("train", "test")
               for c, col in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))) for i in range(3)]
    _tar(tmp_path / "d.tar.gz", members)
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as zf:
        for name, blob, _ in members:
            zf.writestr(name, blob)
    for archive in ("d.tar.gz", "d.zip"):
        other = data.load(f"imagefolder:{tmp_path / archive}?split=test")
        assert torch.equal(other.x, ds.x) and torch.equal(other.y, ds.y)
        assert other.content_hash() == ds.content_hash()


def test_numbered_class_folders_keep_their_number_as_the_label(tmp_path):
    """Poisoned examples lack the target class: folders 1 and 4 stay classes 1 and 4."""
    _tar(tmp_path / "ex.tar.gz", [("4/a.png", _png((0, 0, 255)), "file"),
                                  ("1/b.png", _png((255, 0, 0)), "file")])
    ds = data.load(f"imagefolder:{tmp_path / 'ex.tar.gz'}")
    assert sorted(ds.y.tolist()) == [1, 4] and ds.num_classes == 5
    assert int(ds.x[ds.y == 1][:, 0].float().mean()) == 255


def test_archive_with_parent_path_is_refused(tmp_path):
    _tar(tmp_path / "evil.tar.gz", [("train/cat/0.png", _png((0, 0, 0)), "file"),
                                   ("../../escape.png", _png((0, 0, 0)), "file")])
    with pytest.raises(DatasetError, match=r"escape.png.*escapes the archive with '\.\.'"):
        data.load(f"imagefolder:{tmp_path / 'evil.tar.gz'}")
    assert not (tmp_path.parent / "escape.png").exists()
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("../x/0.png", _png((0, 0, 0)))
    with pytest.raises(DatasetError, match="escapes the archive"):
        data.validate_archive(tmp_path / "evil.zip")


def test_archive_with_symlink_or_absolute_path_is_refused(tmp_path):
    _tar(tmp_path / "link.tar.gz", [("train/cat/0.png", b"", "sym")])
    with pytest.raises(DatasetError, match="is a link"):
        data.load(f"imagefolder:{tmp_path / 'link.tar.gz'}")
    _tar(tmp_path / "abs.tar.gz", [("/etc/cron.d/x.png", _png((0, 0, 0)), "file")])
    with pytest.raises(DatasetError, match="absolute path"):
        data.validate_archive(tmp_path / "abs.tar.gz")


def test_archive_limits(tmp_path):
    _tar(tmp_path / "many.tar.gz", [(f"a/{i}.png", b"x", "file") for i in range(5)])
    with pytest.raises(DatasetError, match="more than 3 files"):
        data.validate_archive(tmp_path / "many.tar.gz", data.ArchiveLimits(max_files=3))


def test_cifar_batches_load_through_the_restricted_unpickler(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        batch = {b"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8),
                 b"labels": [0, 1, 2, 3]}
        (tmp_path / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    (tmp_path / "test_batch").write_bytes(pickle.dumps(
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [5, 6]}))
    ds = data.load(f"cifar10:{tmp_path}?split=train")
    assert ds.x.shape == (20, 3, 32, 32) and ds.y.tolist()[:4] == [0, 1, 2, 3]

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DatasetError, match="builtins.print, which is not allowed"):
        data.load(f"cifar10:{tmp_path}?split=test")


def test_npz_refuses_object_arrays(tmp_path):
    np.savez(tmp_path / "ok.npz", x=np.zeros((3, 32, 32, 3), np.uint8), y=np.array([0, 1, 2]))
    assert len(data.load(f"npz:{tmp_path / 'ok.npz'}")) == 3
    np.savez(tmp_path / "bad.npz", x=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    with pytest.raises(DatasetError, match="cannot read .npz"):
        data.load(f"npz:{tmp_path / 'bad.npz'}")


def test_references_are_validated():
    with pytest.raises(DatasetError, match="unknown data kind 'ftp'"):
        data.parse_ref("ftp://x")
    with pytest.raises(DatasetError, match="unknown option 'frac'"):
        data.parse_ref("synthetic:?frac=0.1")
    with pytest.raises(DatasetError, match="not a valid int"):
        data.parse_ref("synthetic:?n=many")
    with pytest.raises(DatasetError, match="outside the allowed data roots"):
        data.confine(data.parse_ref("imagefolder:/etc"), [__import__("pathlib").Path("/tmp")])


def test_stratified_subset_and_validation_split_are_seeded_and_disjoint():
    ds = data.make_synthetic(2000, seed=0)
    sub, rest = data.take(ds, fraction=0.05, seed=3)
    assert len(sub) == 100 and len(rest) == 1900
    assert torch.bincount(sub.y, minlength=10).tolist() == [10] * 10
    again, _ = data.take(ds, fraction=0.05, seed=3)
    assert torch.equal(sub.index, again.index)
    tr, val = data.train_val(sub, 0.1, seed=0)
    assert len(val) == 10 and not set(tr.index.tolist()) & set(val.index.tolist())


def test_device_loader_augments_on_the_device_and_is_seeded():
    ds = data.make_synthetic(300, seed=0)
    a = [x for x, _ in data.DeviceLoader(ds, 128, augment=True, seed=1)]
    b = [x for x, _ in data.DeviceLoader(ds, 128, augment=True, seed=1)]
    assert [t.shape[0] for t in a] == [128, 128, 44]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].dtype == torch.float32 and 0 <= float(a[0].min()) and float(a[0].max()) <= 1
    plain = torch.cat([x for x, _ in data.DeviceLoader(ds, 128, shuffle=False)])
    assert torch.equal(plain, ds.x.float() / 255)


@pytest.mark.parametrize("side,says", [(7000, "claims 7000x7000 pixels, more than the 40000000"),
                                       (20_000, "claims more pixels than the 40000000")])
def test_an_image_claiming_too_many_pixels_is_refused_before_decoding(tmp_path, side, says):
    """Both below PIL's own decompression-bomb error (7000 x 7000 = 49 M pixels) and above
    it, the header's size is checked before a pixel is decoded."""
    from ppr_engine import data
    from ppr_engine.errors import DatasetError

    from ..service.test_hostile import bomb_png

    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "a.png").write_bytes(bomb_png(side, side))
    with pytest.raises(DatasetError, match=says):
        data.load(f"imagefolder:{tmp_path}")


def test_source_pixels_are_bounded_before_decoding(tmp_path, monkeypatch):
    """Loading counts the pixels each header claims, however small ?size= makes the output:
    a reference past MAX_SOURCE_PIXELS is refused before the image that passes it is
    decoded."""
    from ppr_engine.data import sources

    _tar(tmp_path / "big.tar.gz", [(f"{k}/{k}.png", _png((0, 0, 0)), "file") for k in range(3)])
    side = 32  # _png's images
    monkeypatch.setattr(sources, "MAX_SOURCE_PIXELS", 2 * side * side)
    with pytest.raises(DatasetError, match="source pixels"):
        data.load(f"imagefolder:{tmp_path / 'big.tar.gz'}?size=8")
    monkeypatch.setattr(sources, "MAX_SOURCE_PIXELS", 3 * side * side)
    assert len(data.load(f"imagefolder:{tmp_path / 'big.tar.gz'}?size=8")) == 3


def test_a_saved_imageset_reads_back_whole(tmp_path):
    """What a distributed job's first stage stores for the others (worker.decoded): the
    images, labels, source positions, class count (more than the labels show) and split."""
    ds = data.load("synthetic:?n=300&seed=4")
    part, _ = data.take(ds, n=40, seed=1)
    part = data.ImageSet(part.x, part.y % 3, 10, source="x", index=part.index, split="test")
    path = tmp_path / "part.safetensors"
    data.save_imageset(part, path)
    back = data.read_imageset(path, source="dataset:abc?split=test")
    assert torch.equal(back.x, part.x) and torch.equal(back.y, part.y)
    assert torch.equal(back.index, part.index) and not torch.equal(back.index,
                                                                   torch.arange(40))
    assert (back.num_classes, back.split, back.source) == (10, "test", "dataset:abc?split=test")
