"""Data errors that had no test: a label out of range, a missing batch file in the official
layout, an archive without its folder, and a download whose connection drops after the .part file
was opened (it must be removed, and the error be one line)."""

import tarfile

import numpy as np
import pytest
from conftest import one_line, write_npz, write_official

from fastcifar import data as data_lib
from fastcifar.data import SPECS, download_archive, load_cifar
from fastcifar.errors import DataError


@pytest.mark.parametrize("bad", [10, -1])
def test_a_label_out_of_range_names_the_file_and_the_range(tmp_path, bad):
    write_npz(tmp_path, "cifar10", 10, 5)
    path = tmp_path / "cifar10" / "train.npz"
    labels = np.arange(5) % 10
    labels[3] = bad
    np.savez(path, images=np.zeros((5, 32, 32, 3), np.uint8), labels=labels)
    with pytest.raises(DataError) as e:
        load_cifar("cifar10", tmp_path, "train")
    assert one_line(e) == f"{path}: labels must lie in [0, 10), found {labels.min()}..{labels.max()}"


def test_a_missing_batch_file_of_the_official_layout_is_named(tmp_path):
    folder = write_official(tmp_path, "cifar10", 50, 10)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError) as e:
        load_cifar("cifar10", tmp_path, "train")
    assert one_line(e) == f"{folder / 'data_batch_3'} is missing from the extracted CIFAR-10 folder {folder}"


def test_an_archive_without_its_folder_says_which_folder(tmp_path):
    staging = tmp_path / "staging"
    write_official(staging, "cifar10", 20, 10)
    (staging / "cifar-10-batches-py").rename(staging / "other-name")
    archive = tmp_path / "root" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "other-name", arcname="other-name")
    with pytest.raises(DataError) as e:
        load_cifar("cifar10", archive.parent, "train")
    assert one_line(e) == f"{archive} does not contain the folder cifar-10-batches-py/"


class DroppingResponse:
    """A response that sends one block and then loses the connection; it notes whether the .part
    file existed when the connection dropped (so the test knows the cleanup had work to do)."""

    def __init__(self, part):
        self.part, self.sent, self.part_existed = part, False, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self, *args):
        if not self.sent:
            self.sent = True
            return b"x" * 1000
        self.part_existed = self.part.is_file()
        raise ConnectionResetError("connection reset by peer")


def test_a_dropped_download_removes_its_part_file(tmp_path, monkeypatch):
    spec = SPECS["cifar10"]
    response = DroppingResponse(tmp_path / (spec.archive + ".part"))
    monkeypatch.setattr(data_lib.urllib.request, "urlopen", lambda *a, **k: response)
    with pytest.raises(DataError) as e:
        download_archive(tmp_path, spec)
    assert response.part_existed, "the .part file was never opened: the test did not reach the cleanup"
    assert "download failed: connection reset by peer" in one_line(e)
    assert list(tmp_path.iterdir()) == [], f"left behind: {[p.name for p in tmp_path.iterdir()]}"
