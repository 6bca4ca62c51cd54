"""Which images `collect_images` finds for folders, globs, files and list files, and reading them within
bounds (regular files only, a byte limit, symlink loops walked once)."""

import os
from pathlib import Path

import pytest

from dinov3kit.images import ImageLoadError
from dinov3kit.tools.sources import SourceError, collect_images, read_image_bytes


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ["a.jpg", "b.PNG", "notes.md", ".hidden.jpg", "sub/c.webp", "sub/deeper/d.jpeg", ".cache/e.jpg"]:
        path = tmp_path / "photos" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return tmp_path


def names(paths):
    return [p.relative_to(p.parents[0]).name for p in paths]


def test_folder_is_walked_recursively_in_order_skipping_hidden_and_non_images(tree):
    found = collect_images([tree / "photos"])
    assert [str(p.relative_to(tree / "photos")) for p in found] == ["a.jpg", "b.PNG", "sub/c.webp", "sub/deeper/d.jpeg"]
    assert all(p.is_absolute() for p in found)


def test_glob_and_explicit_file_and_duplicates(tree, monkeypatch):
    monkeypatch.chdir(tree)
    found = collect_images(["photos/**/*.jp*g", "photos/notes.md", "photos/a.jpg"])
    assert names(found) == ["a.jpg", "d.jpeg", "notes.md"]  # explicit files are taken whatever their suffix


def test_text_and_csv_lists_resolve_relative_to_the_list(tree, tmp_path):
    (tree / "photos" / "list.txt").write_text("# my picks\na.jpg\n\nsub/c.webp\nmissing.jpg\n")
    (tmp_path / "table.csv").write_text("label,path\ncat,photos/b.PNG\ndog,photos/sub/deeper/d.jpeg\n")
    found = collect_images([tree / "photos" / "list.txt", tmp_path / "table.csv"])
    assert names(found) == ["a.jpg", "c.webp", "missing.jpg", "b.PNG", "d.jpeg"]  # missing files are kept: reported later
    headerless = tmp_path / "plain.csv"
    headerless.write_text(f"{tree / 'photos' / 'a.jpg'},1\n")
    assert names(collect_images([headerless])) == ["a.jpg"]


@pytest.mark.parametrize("source, message", [("nowhere/", "no such file or folder"), ("*.nothing", "matches no image files")])
def test_sources_naming_nothing_are_errors(tmp_path, monkeypatch, source, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match=message):
        collect_images([source])


def test_symlink_loops_walk_each_real_folder_once(tmp_path):
    photos = tmp_path / "photos"
    (photos / "a").mkdir(parents=True)
    (photos / "b").mkdir()
    (photos / "a" / "one.jpg").write_bytes(b"x")
    (photos / "b" / "two.jpg").write_bytes(b"x")
    (photos / "a" / "to_b").symlink_to(photos / "b")  # two loops: Python's own glob runs for ever on these
    (photos / "b" / "to_a").symlink_to(photos / "a")
    (photos / "a" / "up").symlink_to(photos)
    found = collect_images([photos])
    assert sorted(p.name for p in found) == ["one.jpg", "two.jpg"]
    assert sorted(p.name for p in collect_images([str(photos / "**" / "*.jpg")])) == ["one.jpg", "two.jpg"]


@pytest.mark.parametrize("pattern, expected", [
    ("photos/**/*.jp*g", ["a.jpg", "d.jpeg"]),
    ("photos/**", ["a.jpg", "b.PNG", "c.webp", "d.jpeg"]),
    ("photos/sub/**/*.webp", ["c.webp"]),
    ("photos/*/**/[d]*.jpeg", ["d.jpeg"]),
    ("**/a.jpg", ["a.jpg"]),
])
def test_recursive_globs_match_like_pythons_glob(tree, monkeypatch, pattern, expected):
    monkeypatch.chdir(tree)
    assert sorted(names(collect_images([pattern]))) == expected


def test_special_files_are_listed_then_refused_without_reading(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "good.jpg").write_bytes(b"x" * 10)
    os.mkfifo(photos / "pipe.png")
    (photos / "zero.jpg").symlink_to("/dev/zero")
    found = collect_images([photos])
    assert names(found) == ["good.jpg", "pipe.png", "zero.jpg"]  # kept, so that embed reports them
    assert names(collect_images([photos / "pipe.png"])) == ["pipe.png"]  # also when named
    assert read_image_bytes(photos / "good.jpg") == b"x" * 10
    with pytest.raises(ImageLoadError, match="named pipe"):
        read_image_bytes(photos / "pipe.png")  # would block for ever if opened for a plain read
    with pytest.raises(ImageLoadError, match="character device"):
        read_image_bytes(photos / "zero.jpg")  # would read for ever
    with pytest.raises(ImageLoadError, match="over the limit of 5 bytes per file"):
        read_image_bytes(photos / "good.jpg", max_bytes=5)
    with pytest.raises(ImageLoadError, match="no such file"):
        read_image_bytes(photos / "missing.jpg")


def test_byte_limit_from_the_environment(tmp_path, monkeypatch):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"x" * 2048)
    monkeypatch.setenv("DINOV3KIT_MAX_BYTES", "1K")
    with pytest.raises(ImageLoadError, match="over the limit of 1024 bytes"):
        read_image_bytes(image)
    monkeypatch.setenv("DINOV3KIT_MAX_BYTES", "lots")
    with pytest.raises(ValueError, match="DINOV3KIT_MAX_BYTES"):
        read_image_bytes(image)


def test_urls_are_refused_as_urls(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("local.jpg\nhttp://host/x.jpg\nhttps://host/y.jpg\n")
    with pytest.raises(SourceError, match=r"list.txt: lists 2 URL\(s\), e.g. http://host/x.jpg; .*local files only"):
        collect_images([listing])
    with pytest.raises(SourceError, match="a URL; .*local files only"):
        collect_images(["https://host/z.jpg"])
