from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from compressor.data import FASHION_MNIST_DEBIAN_DIR, TensorLoader, load_data
from compressor.errors import BadInput

try:
    from tests.fakes import (
        write_fake_cifar10,
        write_fake_cifar100,
        write_fake_fashion_mnist,
        write_fake_imagefolder,
    )
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from fakes import (  # type: ignore[no-redef]
        write_fake_cifar10,
        write_fake_cifar100,
        write_fake_fashion_mnist,
        write_fake_imagefolder,
    )

HAVE_FMNIST = (FASHION_MNIST_DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(
    not HAVE_FMNIST, reason=f"Debian package dataset-fashion-mnist not installed ({FASHION_MNIST_DEBIAN_DIR})"
)


def first_batch(loader):
    return next(iter(loader))


def collect(loader):
    """One epoch, concatenated: [x, y]."""
    xs, ys = [], []
    for x, y in loader:
        xs.append(x)
        ys.append(y)
    return [torch.cat(xs), torch.cat(ys)]


# ---------------------------------------------------------------- real Fashion-MNIST


@needs_fmnist
def test_fashion_mnist_real_shapes_and_split():
    b = load_data("fashion-mnist", batch_size=64)
    assert b.num_classes == 10 and b.input_shape == (1, 28, 28) and b.name == "fashion-mnist"
    assert b.sizes == {"train": 54000, "val": 6000, "test": 10000}
    assert len(b.train) == -(-54000 // 64) and len(b.test) == -(-10000 // 256)
    x, y = first_batch(b.train)
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert int(y.min()) >= 0 and int(y.max()) <= 9
    xt, yt = first_batch(b.test)
    assert xt.shape == (256, 1, 28, 28)
    assert abs(float(xt.mean())) < 0.1 and abs(float(xt.std()) - 1) < 0.1  # standard mean/std
    assert set(b.test.labels.tolist()) == set(range(10))
    tr, va = set(b.train.indices.tolist()), set(b.val.indices.tolist())
    assert not tr & va and len(tr | va) == 60000


@needs_fmnist
def test_fashion_mnist_subsets_and_seed_determinism():
    kw = dict(train_subset=500, val_subset=100, test_subset=200, batch_size=50)
    a, a2 = load_data("fashion-mnist", seed=1, **kw), load_data("fashion-mnist", seed=1, **kw)
    b = load_data("fashion-mnist", seed=2, **kw)
    assert a.sizes == {"train": 500, "val": 100, "test": 200}
    assert len(a.train) == 10 and len(a.val) == 1
    assert torch.equal(a.train.indices, a2.train.indices) and torch.equal(a.val.indices, a2.val.indices)
    assert not torch.equal(a.train.indices, b.train.indices)
    assert not set(a.train.indices.tolist()) & set(a.val.indices.tolist())
    for la, lb in ((a.train, a2.train), (a.test, a2.test)):
        xa, ya = first_batch(la)
        xb, yb = first_batch(lb)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# ---------------------------------------------------------------- fake Fashion-MNIST layouts


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_dir(tmp_path, gz):
    write_fake_fashion_mnist(tmp_path, train=40, test=12, gz=gz)
    b = load_data("fashion-mnist", data_dir=str(tmp_path), val_fraction=0.25, batch_size=8)
    assert b.sizes == {"train": 30, "val": 10, "test": 12}
    assert b.source == str(tmp_path)
    assert sum(len(y) for _, y in b.train) == 30
    assert first_batch(b.val)[0].shape == (10, 1, 28, 28)


def test_fashion_mnist_torchvision_layout(tmp_path):
    write_fake_fashion_mnist(tmp_path / "FashionMNIST" / "raw", train=10, test=5)
    b = load_data("fmnist", data_dir=str(tmp_path), val_fraction=0)
    assert b.sizes == {"train": 10, "val": 0, "test": 5} and b.val is None


def test_fashion_mnist_missing_dir(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(BadInput) as e:
        load_data("fashion-mnist", data_dir=str(missing))
    msg = str(e.value)
    assert str(missing) in msg and "train-images-idx3-ubyte" in msg and "dataset-fashion-mnist" in msg
    assert "\n" not in msg


def test_fashion_mnist_corrupt_file(tmp_path):
    write_fake_fashion_mnist(tmp_path, train=10, test=5)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(BadInput, match="train-images"):
        load_data("fashion-mnist", data_dir=str(tmp_path))


# ---------------------------------------------------------------- CIFAR


def test_fake_cifar10(tmp_path):
    write_fake_cifar10(tmp_path, per_batch=6, test=8)
    b = load_data("cifar10", data_dir=str(tmp_path), batch_size=4, val_fraction=0.1)
    assert b.num_classes == 10 and b.input_shape == (3, 32, 32) and b.classes[0] == "airplane"
    assert b.sizes == {"train": 27, "val": 3, "test": 8}
    x, y = first_batch(b.train)
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.int64
    # The data dir may also be the batches folder itself.
    b2 = load_data("cifar-10", data_dir=str(tmp_path / "cifar-10-batches-py"))
    assert b2.sizes == b.sizes
    # Eval batches are the exact normalised pixels.
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    xt, yt = first_batch(b.test)
    expect = torch.from_numpy(raw["data"][:8].reshape(8, 3, 32, 32)).float() / 255
    mean, std = torch.tensor(b.mean).view(1, 3, 1, 1), torch.tensor(b.std).view(1, 3, 1, 1)
    assert torch.allclose(xt, (expect - mean) / std, atol=1e-5)
    assert yt.tolist() == raw["labels"][:8]


def test_fake_cifar100(tmp_path):
    write_fake_cifar100(tmp_path, train=20, test=10)
    b = load_data("cifar100", data_dir=str(tmp_path), val_fraction=0.2)
    assert b.num_classes == 100 and b.sizes == {"train": 16, "val": 4, "test": 10}


def test_cifar_missing_and_unsafe(tmp_path):
    with pytest.raises(BadInput, match="cifar-10-batches-py"):
        load_data("cifar10", data_dir=str(tmp_path))
    write_fake_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({"data": Evil(), "labels": []}, f)
    with pytest.raises(BadInput, match="forbidden"):
        load_data("cifar10", data_dir=str(tmp_path))


# ---------------------------------------------------------------- ImageFolder


def test_fake_imagefolder_train_val(tmp_path):
    write_fake_imagefolder(tmp_path, per_class=4, splits=("train", "val"))
    b = load_data(f"imagefolder:{tmp_path}", image_size=32, batch_size=5, val_fraction=0.25)
    assert b.num_classes == 3 and b.classes == ["cat", "dog", "fox"] and b.input_shape == (3, 32, 32)
    assert b.sizes == {"train": 9, "val": 3, "test": 12}
    x, y = first_batch(b.train)
    assert x.shape == (5, 3, 32, 32) and y.dtype == torch.int64
    assert first_batch(b.test)[0].shape == (12, 3, 32, 32)


def test_fake_imagefolder_single_dir(tmp_path):
    write_fake_imagefolder(tmp_path, classes=("a", "b"), per_class=10, splits=())
    b = load_data(f"imagefolder:{tmp_path}", image_size=16, augment=False)
    assert b.num_classes == 2 and sum(b.sizes.values()) == 20 and b.sizes["test"] == 2
    assert not set(b.train.indices.tolist()) & set(b.test.indices.tolist())


def test_fake_imagefolder_train_val_test(tmp_path):
    write_fake_imagefolder(tmp_path, per_class=2, splits=("train", "val", "test"))
    b = load_data(f"imagefolder:{tmp_path}", image_size=24, test_subset=4)
    assert b.sizes == {"train": 6, "val": 6, "test": 4} and len(b.test) == 1
    assert first_batch(b.val)[0].shape == (6, 3, 24, 24)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(BadInput, match="not found"):
        load_data(f"imagefolder:{tmp_path / 'x'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="empty"):
        load_data(f"imagefolder:{tmp_path / 'empty'}")
    write_fake_imagefolder(tmp_path / "noval", per_class=1, splits=("val",))
    with pytest.raises(BadInput, match="no train/"):
        load_data(f"imagefolder:{tmp_path / 'noval'}")
    write_fake_imagefolder(tmp_path / "diff", per_class=1, splits=("train",))
    write_fake_imagefolder(tmp_path / "diff", classes=("cat",), per_class=1, splits=("val",))
    with pytest.raises(BadInput, match="class folders differ"):
        load_data(f"imagefolder:{tmp_path / 'diff'}")


# ---------------------------------------------------------------- synthetic + loader


def test_synthetic_shapes_determinism_learnable():
    a = load_data("synthetic:3x32x32:10", batch_size=64)
    b = load_data("synthetic:3x32x32:10", batch_size=64)
    assert a.sizes == {"train": 461, "val": 51, "test": 128} and a.input_shape == (3, 32, 32)
    assert torch.equal(a.train.images, b.train.images)
    xa, ya = first_batch(a.train)
    xb, yb = first_batch(b.train)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # Learnable: nearest class mean on raw pixels classifies the test set well.
    xtr, ytr = a.train.images.float().flatten(1), a.train.labels
    centers = torch.stack([xtr[ytr == k].mean(0) for k in range(10)])
    xte = a.test.images.float().flatten(1)
    acc = (torch.cdist(xte, centers).argmin(1) == a.test.labels).float().mean()
    assert acc > 0.9
    g = load_data("synthetic:1x28x28:4:64:16", val_fraction=0)
    assert g.sizes == {"train": 64, "val": 0, "test": 16} and g.num_classes == 4


def test_tensor_loader_epochs_and_augmentation():
    imgs = torch.arange(10 * 1 * 8 * 8, dtype=torch.float32).reshape(10, 1, 8, 8) / 640
    labels = torch.arange(10)
    kw = dict(batch_size=4, mean=[0.0], std=[1.0], seed=5)
    plain = TensorLoader(imgs, labels, **kw)
    assert len(plain) == 3 and [len(y) for _, y in plain] == [4, 4, 2]
    assert torch.equal(torch.cat([x for x, _ in plain]), imgs)  # eval: no shuffle, no augmentation
    aug = TensorLoader(imgs, labels, shuffle=True, augment=True, **kw)
    e0 = collect(aug)
    e1 = collect(aug)  # internal counter -> next epoch
    assert not torch.equal(e0[1], e1[1])
    aug.set_epoch(0)
    again = collect(aug)
    assert torch.equal(e0[0], again[0]) and torch.equal(e0[1], again[1])
    assert sorted(e0[1].tolist()) == list(range(10))
    # Each augmented sample is a padded crop (pad 0 -> zeros), possibly flipped, of its source image.
    assert aug.pad == 2
    for x, y in zip(e0[0], e0[1], strict=True):
        src = torch.nn.functional.pad(imgs[y], (2, 2, 2, 2))
        windows = src.unfold(1, 8, 1).unfold(2, 8, 1).reshape(-1, 8, 8)
        assert any(torch.equal(x[0], w) or torch.equal(x[0], w.flip(1)) for w in windows)
    dist = [TensorLoader(imgs, labels, shuffle=True, **kw) for _ in range(2)]
    for r, d in enumerate(dist):
        d.set_distributed(r, 2)
        d.set_epoch(3)
    parts = [torch.cat([y for _, y in d]) for d in dist]
    assert len(dist[0]) == 2 and sorted(torch.cat(parts).tolist()) == list(range(10))


@pytest.mark.parametrize(
    "spec,kw",
    [
        ("mnist", {}),
        ("synthetic:3x32:10", {}),
        ("synthetic:3x32x32", {}),
        ("imagefolder:", {}),
        ("cifar10", {"val_fraction": 1.5}),
        ("cifar10", {"batch_size": 0}),
        ("cifar10", {"train_subset": 0}),
    ],
)
def test_bad_specs(spec, kw):
    with pytest.raises(BadInput) as e:
        load_data(spec, **kw)
    assert "\n" not in str(e.value)


def test_missing_cifar_default_dir_message(tmp_path, monkeypatch):
    with pytest.raises(BadInput) as e:
        load_data("cifar100", data_dir=str(tmp_path / "data"))
    assert str(Path(tmp_path / "data" / "cifar-100-python")) in str(e.value)
