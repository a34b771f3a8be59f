import hashlib
import shutil
import urllib.error

import numpy as np
import pytest
from conftest import one_line, synthetic_arrays, write_archive, write_npz, write_official

from fastcifar import data as data_lib
from fastcifar.data import SPECS, download_archive, load_cifar
from fastcifar.errors import DataError


def test_npz_layout(tmp_path):
    write_npz(tmp_path, "cifar10", 50, 20)
    train = load_cifar("cifar10", tmp_path, "train")
    expected, labels = synthetic_arrays(50, 10, 0)
    assert train.images.dtype == np.uint8 and train.images.shape == (50, 32, 32, 3)
    assert train.labels.dtype == np.int64
    np.testing.assert_array_equal(train.images, expected)
    np.testing.assert_array_equal(train.labels, labels)
    assert len(load_cifar("cifar10", tmp_path, "test")) == 20


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_extracted_official_layout(tmp_path, dataset):
    write_official(tmp_path, dataset, 60, 30)
    spec = SPECS[dataset]
    train = load_cifar(dataset, tmp_path, "train")
    images, labels = synthetic_arrays(60, spec.num_classes, 0)
    np.testing.assert_array_equal(train.images, images)  # CHW rows back to HWC, in order
    np.testing.assert_array_equal(train.labels, labels)
    assert train.num_classes == spec.num_classes
    assert len(load_cifar(dataset, tmp_path, "test")) == 30


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_archive_is_extracted(tmp_path, dataset):
    write_archive(tmp_path, dataset, 40, 20)
    shutil.rmtree(tmp_path / "_staging")
    train = load_cifar(dataset, tmp_path, "train")
    assert len(train) == 40
    assert (tmp_path / SPECS[dataset].folder).is_dir()


def test_missing_data_without_download(tmp_path):
    with pytest.raises(DataError) as e:
        load_cifar("cifar10", tmp_path, "train", download=False)
    message = one_line(e)
    assert "CIFAR-10 not found under" in message and "data.download" in message


def test_failed_download_is_clear_and_leaves_nothing(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(data_lib.urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as e:
        load_cifar("cifar10", tmp_path, "train", download=True)
    message = one_line(e)
    assert "CIFAR-10 not found under" in message and "download failed" in message
    assert "place cifar-10-python.tar.gz there" in message
    assert list(tmp_path.iterdir()) == []
    # a data root the download made is removed again, and the line names every layout and the way offline
    with pytest.raises(DataError) as e:
        load_cifar("cifar10", tmp_path / "data" / "cifar", "train", download=True)
    message = one_line(e)
    assert f"{tmp_path / 'data' / 'cifar' / 'cifar10' / '{train,test}.npz'}" in message
    assert "cifar-10-batches-py/" in message and message.endswith("and pass --data.download=false")
    assert list(tmp_path.iterdir()) == []


def test_download_checks_md5_and_keeps_only_good_archives(tmp_path, monkeypatch):
    source = tmp_path / "served"
    source.mkdir()
    archive = write_archive(source, "cifar10", 20, 10)
    root = tmp_path / "root"
    with pytest.raises(DataError) as e:  # the published md5 cannot match a synthetic archive
        download_archive(root, SPECS["cifar10"], url=archive.as_uri())
    assert "md5" in one_line(e)
    assert not root.exists()  # no .part, no archive, not even the folder the download made

    good_md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(SPECS, "cifar10", data_lib.CifarSpec(**{**SPECS["cifar10"].__dict__, "md5": good_md5}))
    monkeypatch.setattr(data_lib, "URL_BASE", source.as_uri() + "/")
    assert len(load_cifar("cifar10", root, "train", download=True)) == 20
    assert [p.name for p in root.iterdir() if p.is_file()] == ["cifar-10-python.tar.gz"]


def test_truncated_and_malformed_files(tmp_path):
    write_npz(tmp_path, "cifar10", 30, 10)
    path = tmp_path / "cifar10" / "train.npz"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError) as e:
        load_cifar("cifar10", tmp_path, "train")
    assert "truncated" in one_line(e) and "train.npz" in str(e.value)

    np.savez(path, images=np.zeros((5, 28, 28, 3), np.uint8), labels=np.zeros(5, np.int64))
    with pytest.raises(DataError, match=r"uint8 \[N,32,32,3\]"):
        load_cifar("cifar10", tmp_path, "train")
    np.savez(path, images=np.zeros((5, 32, 32, 3), np.uint8), labels=np.zeros(4, np.int64))
    with pytest.raises(DataError, match="labels"):
        load_cifar("cifar10", tmp_path, "train")
    np.savez(path, pixels=np.zeros((5, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match="missing array"):
        load_cifar("cifar10", tmp_path, "train")

    other = tmp_path / "official"
    folder = write_official(other, "cifar10", 50, 10)
    batch = folder / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(DataError) as e:
        load_cifar("cifar10", other, "train")
    assert "data_batch_3" in one_line(e) and "truncated" in str(e.value)

    bad_archive = tmp_path / "tgz"
    bad_archive.mkdir()
    (bad_archive / "cifar-10-python.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="not a valid tar.gz"):
        load_cifar("cifar10", bad_archive, "train")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.bool_])
def test_labels_must_be_integers(tmp_path, dtype):
    write_npz(tmp_path, "cifar10", 10, 5)
    path = tmp_path / "cifar10" / "train.npz"
    np.savez(path, images=np.zeros((5, 32, 32, 3), np.uint8), labels=np.arange(5).astype(dtype))
    with pytest.raises(DataError) as e:
        load_cifar("cifar10", tmp_path, "train")
    assert one_line(e) == f"{path}: labels must have an integer dtype, got {np.dtype(dtype)}"
    for ok in (np.uint8, np.int32):  # any integer dtype is accepted, and widened to int64
        np.savez(path, images=np.zeros((5, 32, 32, 3), np.uint8), labels=np.arange(5).astype(ok))
        assert load_cifar("cifar10", tmp_path, "train").labels.dtype == np.int64


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown data set"):
        load_cifar("svhn", ".", "train")


TRAIN_MEAN = [125.307, 122.950, 113.865]  # published per-channel means of the CIFAR-10 train set


@pytest.mark.parametrize("layout", ["npz", "official"])
@pytest.mark.slow
def test_real_cifar10(real_cifar_root, layout, tmp_path):
    root = real_cifar_root
    if layout == "official":  # hide the npz so the extracted batches are read
        root = tmp_path
        (root / "cifar-10-batches-py").symlink_to(real_cifar_root / "cifar-10-batches-py")
    train = load_cifar("cifar10", root, "train")
    test = load_cifar("cifar10", root, "test")
    assert train.images.shape == (50000, 32, 32, 3) and test.images.shape == (10000, 32, 32, 3)
    assert np.bincount(train.labels).tolist() == [5000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    mean = train.images.reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(mean, TRAIN_MEAN, atol=0.01)
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]


def test_a_text_file_named_npz_gets_no_allow_pickle_advice(tmp_path):
    path = tmp_path / "cifar10" / "train.npz"
    path.parent.mkdir()
    path.write_text("images,labels\n1,2\n")
    with pytest.raises(DataError) as e:
        load_cifar("cifar10", tmp_path, "train")
    assert one_line(e) == (f"{path} is truncated or not a valid .npz file (expected a numpy.savez archive of "
                           "arrays 'images' and 'labels')")
    assert "pickle" not in one_line(e)
