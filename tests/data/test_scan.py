"""The parallel, cached split check of distill/data/scan.py, on generated PNG folders."""

import logging
import os
from pathlib import Path

from PIL import Image

from distill.data.scan import find_bad_images


def split_files(png_folder):
    root = png_folder / "train"
    return str(root), sorted(str(path) for path in root.rglob("*.png"))


def count_opens(monkeypatch):
    opened = []
    real_open = Image.open

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    return opened


def test_second_scan_opens_no_file_and_changed_file_is_checked_again(
    png_folder, tmp_path, monkeypatch
):
    root, paths = split_files(png_folder)
    cache = str(tmp_path / "cache")
    opened = count_opens(monkeypatch)
    assert find_bad_images(root, paths, "header", cache) == {}
    assert sorted(opened) == paths
    opened.clear()
    assert find_bad_images(root, paths, "header", cache) == {}
    assert opened == []
    # Same size, new content and mtime: only the cache's (size, mtime) key can notice.
    changed = paths[3]
    data = bytearray(Path(changed).read_bytes())
    data[len(data) // 2] ^= 0xFF
    mtime = os.stat(changed).st_mtime_ns
    with open(changed, "wb") as file:
        file.write(data)
    os.utime(changed, ns=(mtime + 5 * 10**9, mtime + 5 * 10**9))
    bad = find_bad_images(root, paths, "header", cache)
    assert opened == [changed] and list(bad) == [changed]


def test_file_replaced_with_the_same_size_and_mtime_is_checked_again(
    png_folder, tmp_path, monkeypatch
):
    root, paths = split_files(png_folder)
    cache = str(tmp_path / "cache")
    find_bad_images(root, paths, "header", cache)
    # As `cp -p`, `rsync -t` or `touch -r` leave it: other bytes, same size, same mtime.
    replaced = paths[2]
    before = os.stat(replaced)
    data = bytearray(Path(replaced).read_bytes())
    start = data.index(b"IDAT") + 8  # image data, a few hundred bytes into the file
    data[start : start + 16] = bytes(16)
    with open(replaced, "wb") as file:
        file.write(data)
    os.utime(replaced, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(replaced)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    opened = count_opens(monkeypatch)
    bad = find_bad_images(root, paths, "header", cache)
    assert opened == [replaced] and list(bad) == [replaced] and "checksum" in bad[replaced]


def test_file_gone_since_it_was_listed_is_named_not_raised(png_folder, tmp_path):
    root, paths = split_files(png_folder)
    os.remove(paths[0])
    bad = find_bad_images(root, paths, "header", str(tmp_path / "cache"))
    assert list(bad) == [paths[0]] and bad[paths[0]].startswith("FileNotFoundError")


def test_header_results_do_not_answer_a_decode_check(png_folder, tmp_path, monkeypatch):
    root, paths = split_files(png_folder)
    cache = str(tmp_path / "cache")
    find_bad_images(root, paths, "header", cache)
    opened = count_opens(monkeypatch)
    find_bad_images(root, paths, "decode", cache)
    assert len(opened) == 2 * len(paths)  # header, then a full decode
    opened.clear()
    find_bad_images(root, paths, "header", cache)
    assert opened == []  # a decode result answers a header check


def test_default_cache_is_in_the_user_cache_not_the_data_folder(png_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    root, paths = split_files(png_folder)
    before = sorted(os.walk(png_folder))
    find_bad_images(root, paths, "header")
    assert sorted(os.walk(png_folder)) == before
    assert len(os.listdir(tmp_path / "user-cache" / "distill" / "image-scan")) == 1


def test_unwritable_cache_is_skipped_with_a_debug_message(png_folder, tmp_path, caplog):
    root, paths = split_files(png_folder)
    (tmp_path / "a_file").write_text("")
    broken = paths[0]
    Path(broken).write_bytes(b"not an image")
    with caplog.at_level(logging.DEBUG, logger="distill.data.scan"):
        bad = find_bad_images(root, paths, "header", str(tmp_path / "a_file" / "cache"))
    assert list(bad) == [broken]
    assert "not written" in caplog.text
