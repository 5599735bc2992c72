"""files.py: writability checks and telling a full disk from other write errors (no mount needed here)."""

import errno

import pytest

from image_classifier.files import DiskFullError, check_writable, disk_full_is_an_error, is_disk_full


def test_check_writable_creates_the_folder_or_says_why_not(tmp_path):
    assert check_writable(tmp_path / "a" / "b") is None and (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("x")
    for under in ("", "run", "deeper/run"):
        assert check_writable(tmp_path / "file" / under) == f"{tmp_path / 'file'} is a file, not a folder"


def test_full_disk_errors_are_recognised_through_their_wrappers(tmp_path):
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    # safetensors' SafetensorError carries only the text; torch.save's RuntimeError carries neither
    assert is_disk_full(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("file write failed") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)
    # a write error on a disk with room is not a full disk
    assert not is_disk_full(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos"), tmp_path)
    assert not is_disk_full(ValueError("bad value"))


def test_disk_full_is_an_error_names_what_and_where_and_passes_other_errors(tmp_path):
    with pytest.raises(DiskFullError, match=rf"^the disk is full: writing the weights under {tmp_path} failed "
                                            r"\(No space left on device; [\d.]+ MB free there\)\. Kept\.$"):
        with disk_full_is_an_error("the weights", tmp_path, "Kept."):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(KeyError):
        with disk_full_is_an_error("the weights", tmp_path, "Kept."):
            raise KeyError("x")
