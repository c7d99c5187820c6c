import os

import pytest

from imgclust.discover import discover, read_label_csv
from imgclust.errors import UsageError

from .conftest import make_image


def paths(files):
    return [f.path for f in files]


def test_walk_is_recursive_sorted_case_insensitive_and_skips_hidden(tmp_path):
    make_image(tmp_path / "b" / "z.JPG")
    make_image(tmp_path / "a" / "deep" / "x.png")
    make_image(tmp_path / "a" / "y.TiFf", fmt="TIFF")
    make_image(tmp_path / ".hidden" / "h.jpg")
    make_image(tmp_path / "a" / ".secret.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    found = paths(discover([tmp_path]))
    assert found == sorted(found)
    assert [os.path.relpath(p, tmp_path) for p in found] == ["a/deep/x.png", "a/y.TiFf", "b/z.JPG"]


def test_symlink_loops_terminate_and_links_are_followed(tmp_path):
    make_image(tmp_path / "real" / "img.jpg")
    os.symlink(tmp_path / "real", tmp_path / "real" / "loop")  # a folder that contains itself
    os.symlink(tmp_path / "real" / "img.jpg", tmp_path / "alias.jpg")
    found = paths(discover([tmp_path]))
    assert str(tmp_path / "alias.jpg") in found and str(tmp_path / "real" / "img.jpg") in found
    assert len(found) == 2


def test_explicit_files_globs_and_duplicates_are_embedded_once(tmp_path, monkeypatch):
    a = make_image(tmp_path / "a.jpg")
    b = make_image(tmp_path / "sub" / "b.png")
    monkeypatch.chdir(tmp_path)
    found = paths(discover(["a.jpg", str(a), str(tmp_path / "**" / "*.png"), str(tmp_path)]))
    assert found == [str(a), str(b)]


def test_files_from_file_and_stdin(tmp_path):
    import io

    a = make_image(tmp_path / "a.jpg")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n{a}\n\n")
    assert paths(discover(files_from=str(listing))) == [str(a)]
    assert paths(discover(files_from="-", stdin=io.StringIO(f"{a}\n"))) == [str(a)]


def test_folder_named_like_an_image_is_walked(tmp_path):
    inner = make_image(tmp_path / "photo.jpg" / "inside.png")
    assert paths(discover([tmp_path])) == [str(inner)]


def test_dangling_symlink_is_reported_not_fatal(tmp_path):
    make_image(tmp_path / "ok.jpg")
    os.symlink(tmp_path / "missing.jpg", tmp_path / "broken.jpg")
    files = {os.path.basename(f.path): f for f in discover([tmp_path])}
    assert files["broken.jpg"].error == "dangling symlink"
    assert files["ok.jpg"].error is None and files["ok.jpg"].size > 0


def test_labels_from_folder_and_csv(tmp_path):
    a = make_image(tmp_path / "cats" / "a.jpg")
    b = make_image(tmp_path / "dogs" / "b.jpg")
    assert [f.label for f in discover([tmp_path], labels="folder")] == ["cats", "dogs"]
    csv = tmp_path / "labels.csv"
    csv.write_text(f"path,label\ncats/a.jpg,feline\n{b},canine\n")
    assert read_label_csv(str(csv)) == {str(a): "feline", str(b): "canine"}
    assert [f.label for f in discover([tmp_path], labels=str(csv))] == ["feline", "canine"]


@pytest.mark.parametrize("make_bad, message", [
    (lambda t: [str(t / "nope")], "path not found"),
    (lambda t: [str(t / "empty")], "no images found"),
    (lambda t: [str(t / "*.webp")], "no file matches"),
    ([], "no input given"),
])
def test_bad_inputs_are_usage_errors(tmp_path, make_bad, message):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=message):
        discover(make_bad(tmp_path) if callable(make_bad) else make_bad)


def test_csv_labels_matching_nothing_is_an_error(tmp_path):
    make_image(tmp_path / "a.jpg")
    csv = tmp_path / "labels.csv"
    csv.write_text("other.jpg,x\n")
    with pytest.raises(UsageError, match="no label"):
        discover([tmp_path], labels=str(csv))
