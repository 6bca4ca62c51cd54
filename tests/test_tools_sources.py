"""Which images `collect_images` finds for folders, globs, files and list files."""

from pathlib import Path

import pytest

from dinov3kit.tools.sources import SourceError, collect_images


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
