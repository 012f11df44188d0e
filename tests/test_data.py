"""Dataset readers (official formats), download checks, and the device-resident loader."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CIFAR10_SUBSET, write_cifar10, write_fashion_mnist

from normbench import data as datamod
from normbench.data import DeviceLoader, balanced_subset, load_dataset
from normbench.errors import DataError


def test_cifar10_folder_reads_rows_labels_and_class_names(cifar_root):
    ds = load_dataset("cifar10", cifar_root, allow_download=False)
    assert ds.train_x.shape == (320, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert ds.test_x.shape == (128, 3, 32, 32) and ds.train_y.dtype == torch.int64
    assert ds.classes[:2] == ["class0", "class1"]
    raw = pickle.loads((cifar_root / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    # channel-major rows: the first 1024 bytes are the red plane
    assert torch.equal(ds.train_x[0, 0].flatten(), torch.from_numpy(np.asarray(raw["data"][0][:1024])))
    assert ds.train_y[:64].tolist() == raw["labels"]


def test_root_may_be_the_batches_folder_itself(cifar_root):
    ds = load_dataset("cifar10", cifar_root / "cifar-10-batches-py", allow_download=False)
    assert len(ds.train_y) == 320


def test_official_tar_gz_is_read_in_place(cifar_root, tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(cifar_root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    ds = load_dataset("cifar10", tmp_path, allow_download=False)
    ref = load_dataset("cifar10", cifar_root, allow_download=False)
    assert torch.equal(ds.train_x, ref.train_x) and ds.source == str(archive)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx(tmp_path, compress):
    write_fashion_mnist(tmp_path, n_train=50, n_test=20, compress=compress)
    ds = load_dataset("fashion_mnist", tmp_path, allow_download=False)
    assert ds.train_x.shape == (50, 1, 28, 28) and ds.test_x.shape == (20, 1, 28, 28)
    assert ds.classes[0] == "T-shirt/top"


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_debian():
    ds = load_dataset("fashion_mnist", "/usr/share/datasets/fashion-mnist", allow_download=False)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_y.bincount().tolist() == [6000] * 10


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 10)):
        with open(folder / split, "wb") as f:
            pickle.dump({"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                         "fine_labels": rng.integers(0, 100, n).tolist(), "coarse_labels": [0] * n}, f)
    ds = load_dataset("cifar100", tmp_path, allow_download=False)
    assert len(ds.train_y) == 30 and ds.num_classes == 100


def test_truncated_batch_is_named_with_the_fix(tmp_path):
    root = write_cifar10(tmp_path, train_per_batch=8, test=8)
    bad = root / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:500])
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", root, allow_download=False)
    assert str(err.value).startswith(f"{bad} is corrupt (")
    assert str(err.value).endswith("delete it and download it again") and "\n" not in str(err.value)


def test_labels_that_do_not_match_rows_are_refused(tmp_path):
    root = write_cifar10(tmp_path, train_per_batch=8, test=8)
    path = root / "cifar-10-batches-py" / "test_batch"
    batch = pickle.loads(path.read_bytes())
    batch["labels"] = batch["labels"][:-1]
    path.write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match="8 images but 7 labels"):
        load_dataset("cifar10", root, allow_download=False)


def test_download_checks_md5_and_keeps_no_partial_file(tmp_path, monkeypatch):
    payload = b"not the real archive"

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(datamod.urllib.request, "urlopen", lambda url, timeout: Response(payload))
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path, allow_download=True)
    got = hashlib.md5(payload).hexdigest()
    assert f"downloaded with MD5 {got}, expected c58f30108f718f92721af3b95e74349a" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_download_of_a_valid_archive_is_used(cifar_root, tmp_path, monkeypatch):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(cifar_root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    archive = buf.getvalue()

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    spec = datamod.DATASETS["cifar10"]
    fake = datamod.DatasetSpec(spec.name, spec.folder, spec.train_files, spec.test_files,
                               (datamod.Download(spec.downloads[0].url, hashlib.md5(archive).hexdigest()),), spec.reader)
    monkeypatch.setitem(datamod.DATASETS, "cifar10", fake)
    monkeypatch.setattr(datamod.urllib.request, "urlopen", lambda url, timeout: Response(archive))
    ds = load_dataset("cifar10", tmp_path, allow_download=True)
    assert len(ds.train_y) == 320 and (tmp_path / "cifar-10-python.tar.gz").is_file()


def test_channel_stats_match_numpy(cifar_root):
    ds = load_dataset("cifar10", cifar_root, allow_download=False)
    mean, std = ds.channel_stats()
    x = ds.train_x.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(mean.numpy(), x.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std.numpy(), x.std(axis=(0, 2, 3)), rtol=1e-5)


def test_balanced_subset_is_seeded_and_balanced():
    labels = torch.arange(10).repeat_interleave(50)
    a = balanced_subset(labels, 100, 10, seed=0)
    assert labels[a].bincount().tolist() == [10] * 10
    assert torch.equal(a, balanced_subset(labels, 100, 10, seed=0))
    assert not torch.equal(a, balanced_subset(labels, 100, 10, seed=1))
    assert len(set(balanced_subset(labels, 95, 10, seed=0).tolist())) == 95


def _loader(images, augment, **kw):
    mean, std = torch.zeros(images.shape[1]), torch.ones(images.shape[1]) / 255  # x -> raw pixel values
    return DeviceLoader(images, torch.arange(len(images)), 4, mean, std, augment=augment, **kw)


def test_loader_normalizes_and_covers_each_image_once():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 8, 8), generator=g, dtype=torch.uint8)
    loader = DeviceLoader(images, torch.arange(10), 4, torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3]),
                          augment="none", shuffle=True, seed=1)
    xs, ys = zip(*loader, strict=True)
    assert len(loader) == 3 and [len(y) for y in ys] == [4, 4, 2]
    order = torch.cat(ys)
    assert sorted(order.tolist()) == list(range(10))
    ref = (images[order].float() / 255 - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    torch.testing.assert_close(torch.cat(xs), ref)


def test_loader_epochs_are_seeded_permutations():
    images = torch.zeros(20, 1, 4, 4, dtype=torch.uint8)
    loader = _loader(images, "none", shuffle=True, seed=5, drop_last=True)
    epoch0 = torch.cat([y for _, y in loader])
    again = torch.cat([y for _, y in loader])
    loader.sampler.set_epoch(1)
    epoch1 = torch.cat([y for _, y in loader])
    assert torch.equal(epoch0, again) and not torch.equal(epoch0, epoch1) and len(loader) == 5


def test_crop_flip_takes_a_window_of_the_zero_padded_image():
    g = torch.Generator().manual_seed(2)
    images = torch.randint(1, 256, (64, 2, 6, 7), generator=g, dtype=torch.uint8)
    loader = _loader(images, "crop_flip", shuffle=True, seed=3)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4)).float()
    flips = offsets = 0
    for x, y in loader:
        assert x.shape[1:] == (2, 6, 7)
        for img, idx in zip(x, y, strict=True):
            found = None
            for dy in range(9):
                for dx in range(9):
                    win = padded[idx, :, dy:dy + 6, dx:dx + 7]
                    if torch.equal(img, win):
                        found = (dy, dx, False)
                    elif torch.equal(img, win.flip(-1)):
                        found = (dy, dx, True)
            assert found is not None
            flips += found[2]
            offsets += found[:2] != (4, 4)
    assert 16 < flips < 48 and offsets > 40  # both augmentations actually happen


def test_flip_only_never_shifts():
    images = torch.randint(0, 256, (32, 1, 5, 5), dtype=torch.uint8)
    for x, y in _loader(images, "flip", shuffle=False):
        for img, idx in zip(x, y, strict=True):
            src = images[idx].float()
            assert torch.equal(img, src) or torch.equal(img, src.flip(-1))


@pytest.mark.skipif(not CIFAR10_SUBSET, reason="NORMBENCH_CIFAR10_ROOT is not set (real CIFAR-10 data)")
def test_real_cifar10_subset_reads():
    ds = load_dataset("cifar10", CIFAR10_SUBSET, allow_download=False)
    assert len(ds.train_y) == 5170 and len(ds.test_y) == 1017
    assert ds.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_an_unreadable_or_empty_data_file_is_one_line(tmp_path, monkeypatch):
    import pickle
    from pathlib import Path

    from conftest import write_cifar10

    from normbench import data as datamod
    from normbench.errors import DataError

    root = write_cifar10(tmp_path / "d", train_per_batch=8, test=8)
    real = Path.read_bytes

    def denied(self):
        if self.name == "data_batch_2":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(DataError) as err:
        datamod.load_dataset("cifar10", root, allow_download=False)
    assert str(err.value) == (f"{root / 'cifar-10-batches-py' / 'data_batch_2'} cannot be read (Permission denied); "
                              f"give this user read permission, or set data.root to a copy it can read")
    monkeypatch.setattr(Path, "read_bytes", real)
    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"batch_label": "testing batch 1 of 1", "labels": [], "data": np.zeros((0, 3072), np.uint8)}, f)
    with pytest.raises(DataError, match=r"the test split holds no images; the files are incomplete"):
        datamod.load_dataset("cifar10", root, allow_download=False)
