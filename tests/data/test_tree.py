"""Listing an ImageFolder tree (distill/data/tree.py): links resolved once, real paths."""

import os

from distill.data.tree import class_folders, image_files, link_problem


def test_folder_link_back_up_the_tree_is_reported_not_followed(png_folder):
    cat = png_folder / "train" / "cat"
    os.symlink(".", cat / "loop")
    os.symlink("..", cat / "up")  # the split folder, above the class folder
    files, broken = image_files(str(cat), [os.path.realpath(png_folder / "train")])
    assert [path for path, _ in files] == [str(cat / f"{i}.png") for i in range(6)]
    assert sorted(broken) == [str(cat / "loop"), str(cat / "up")]
    assert broken[str(cat / "loop")].startswith(f"-> '.', the folder {str(cat)!r} that holds")


def test_dangling_and_looping_file_links_are_reported(png_folder):
    cat = png_folder / "train" / "cat"
    os.symlink("nowhere.png", cat / "gone.png")
    os.symlink("b.png", cat / "a.png")
    os.symlink("a.png", cat / "b.png")
    files, broken = image_files(str(cat))
    assert len(files) == 6
    assert broken == {
        str(cat / "gone.png"): "-> 'nowhere.png', which does not exist",
        str(cat / "a.png"): "-> 'b.png', a loop of links that never reaches a file or folder",
        str(cat / "b.png"): "-> 'a.png', a loop of links that never reaches a file or folder",
    }


def test_links_elsewhere_are_followed_with_their_real_paths(png_folder, tmp_path):
    elsewhere = tmp_path / "other-disk" / "more"
    elsewhere.mkdir(parents=True)
    (png_folder / "train" / "dog" / "0.png").rename(elsewhere / "z.png")
    cat = png_folder / "train" / "cat"
    os.symlink(elsewhere, cat / "more")
    os.symlink("0.png", cat / "alias.png")
    files, broken = image_files(str(cat))
    assert broken == {}
    real = dict(files)
    assert real[str(cat / "more" / "z.png")] == os.path.realpath(elsewhere / "z.png")
    assert real[str(cat / "alias.png")] == real[str(cat / "0.png")]
    assert real[str(cat / "0.png")] == os.path.realpath(cat / "0.png")


def test_order_is_torchvisions_folder_then_name(png_folder):
    cat = png_folder / "train" / "cat"
    for name in ("a", "a-b", "a/x"):
        (cat / name).mkdir()
        (cat / name / "1.png").write_bytes(b"")
    files, _ = image_files(str(cat))
    torchvision_order = [
        os.path.join(parent, name)
        for parent, _, names in sorted(os.walk(cat, followlinks=True))
        for name in sorted(names)
    ]
    assert [path for path, _ in files] == torchvision_order


def test_unlistable_folder_is_reported(png_folder, monkeypatch):
    cat = png_folder / "train" / "cat"
    (cat / "locked").mkdir()
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # root, which these tests run as, reads all
    files, broken = image_files(str(cat))
    assert len(files) == 6
    assert broken == {str(cat / "locked"): "cannot be listed (Permission denied)"}


def test_class_folders_include_folder_links_and_report_broken_ones(png_folder, tmp_path):
    train = png_folder / "train"
    (tmp_path / "disk2" / "bird").mkdir(parents=True)
    os.symlink(tmp_path / "disk2" / "bird", train / "bird")
    os.symlink(tmp_path / "unmounted" / "fish", train / "fish")
    os.symlink(".", train / "all")
    names, broken = class_folders(str(train))
    assert names == ["bird", "cat", "dog", "frog"]
    assert sorted(broken) == [str(train / "all"), str(train / "fish")]
    assert "does not exist" in broken[str(train / "fish")]
    assert link_problem(str(train / "cat")) is None  # not a link
