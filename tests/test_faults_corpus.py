"""Embedding a folder of good images beside every kind of troublesome file (``tests/corpus.py``).

Nothing crashes; every good image gets one row; every bad file is recorded once, with a reason that
names its problem; the counts agree -- through the library, ``python -m imgclust`` and CliRunner.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from imgclust.cache import Cache
from imgclust.cli import app
from imgclust.embed import embed

from .conftest import TINY_ENCODER
from .corpus import build_corpus, restore_permissions
from .killing import THREADS, torch_threads


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "photos"
    expect = build_corpus(root)
    yield expect
    restore_permissions(root)


def cli_args(expect, cache, workers=0):
    return ["embed", expect["root"], "--encoder", TINY_ENCODER, "--weights", "random", "--device", "cpu",
            "--batch-size", "4", "--workers", str(workers), "--max-pixels", str(expect["max_pixels"]),
            "--cache", str(cache), "--json"]


def check_cache(cache_path, expect) -> None:
    cache = Cache(cache_path)
    index, failures = cache.read_index(TINY_ENCODER), cache.read_failures(TINY_ENCODER)
    embedded, failed = list(index.paths), list(failures.paths)
    assert len(set(embedded)) == len(embedded) and len(set(failed)) == len(failed), "a file is recorded twice"
    missing = sorted(set(expect["embed"]) - set(embedded))
    assert not missing, [expect["embed"][p] for p in missing]
    unexpected = sorted(set(embedded) - set(expect["embed"]))
    assert not unexpected, unexpected
    assert set(failed) == set(expect["fail"]), (sorted(set(expect["fail"]) ^ set(failed)))
    wrong = {expect["fail"][p][0]: reason for p, reason in zip(failed, failures.reasons)
             if not re.search(expect["fail"][p][1], reason)}
    assert not wrong, wrong  # kind -> the reason given, which does not name the problem
    assert all("\n" not in reason for reason in failures.reasons)
    assert not set(expect["ignored"]) & (set(embedded) | set(failed))
    x = cache.read_embeddings(TINY_ENCODER)
    assert x.shape[0] == len(expect["embed"]) and bool((x == x).all()), "NaN in the embeddings"
    leftovers = [p for p in os.listdir(os.path.dirname(cache_path)) if p.endswith((".tmp", ".journal"))]
    assert not leftovers


def check_counts(summary: dict, expect) -> None:
    n_good, n_bad = len(expect["embed"]), len(expect["fail"])
    assert (summary["discovered"], summary["embedded"], summary["failed"], summary["skipped"]) == (n_good + n_bad, n_good, n_bad, 0)
    assert (summary["images"], summary["failures_total"], summary["interrupted"]) == (n_good, n_bad, False)


def test_the_corpus_has_every_kind_of_trouble(corpus):
    assert len(corpus["embed"]) >= 18 and len(corpus["fail"]) >= 15
    kinds = {kind for kind, _ in corpus["fail"].values()} | set(corpus["embed"].values())
    assert len(kinds) >= 33


def test_library_embeds_every_good_image_and_records_every_bad_one_once(corpus, tmp_path):
    cache = tmp_path / "c.h5"
    summary = embed([corpus["root"]], encoder=TINY_ENCODER, cache=cache, weights="random", device="cpu", batch_size=4,
                    workers=0, max_pixels=corpus["max_pixels"])
    check_counts(summary.to_dict(), corpus)
    check_cache(cache, corpus)
    # A second run reads nothing again and leaves the file as it was (bit for bit).
    before = cache.read_bytes()
    again = embed([corpus["root"]], encoder=TINY_ENCODER, cache=cache, weights="random", device="cpu", batch_size=4,
                  workers=0, max_pixels=corpus["max_pixels"])
    assert (again.embedded, again.failed, again.skipped) == (0, 0, len(corpus["embed"]) + len(corpus["fail"]))
    assert cache.read_bytes() == before


def test_raising_max_pixels_retries_the_image_refused_for_it(corpus, tmp_path):
    # The reason says "raise it with --max-pixels": doing so must work although the file did not change.
    cache = tmp_path / "c.h5"
    common = dict(encoder=TINY_ENCODER, cache=cache, weights="random", device="cpu", batch_size=4, workers=0)
    over = next(p for p, (kind, _) in corpus["fail"].items() if "over --max-pixels" in kind)
    embed([corpus["root"]], max_pixels=corpus["max_pixels"], **common)
    summary = embed([corpus["root"]], max_pixels=10_000_000, **common)
    assert summary.embedded == 1
    assert over in set(Cache(cache).read_index(TINY_ENCODER).paths)
    assert over not in set(Cache(cache).read_failures(TINY_ENCODER).paths)
    # The header bombs claim billions of pixels: still refused, by Pillow's limit or ours.
    assert summary.failures_total == len(corpus["fail"]) - 1


def test_cli_subprocess_with_a_decoding_worker(corpus, tmp_path):
    cache = tmp_path / "c.h5"
    result = subprocess.run([sys.executable, "-m", "imgclust", *cli_args(corpus, cache, workers=1)],
                            capture_output=True, text=True, timeout=300, env={**os.environ, **THREADS})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    check_counts(json.loads(result.stdout), corpus)
    check_cache(cache, corpus)


def test_cli_runner(corpus, tmp_path):
    cache = tmp_path / "c.h5"
    result = CliRunner().invoke(app, cli_args(corpus, cache))
    assert result.exit_code == 0, result.output
    check_counts(json.loads(result.stdout), corpus)
    check_cache(cache, corpus)
    # The plain-text summary says the same.
    text = CliRunner().invoke(app, cli_args(corpus, tmp_path / "text.h5")[:-1])
    n_good, n_bad = len(corpus["embed"]), len(corpus["fail"])
    assert text.exit_code == 0, text.output
    assert f"embedded {n_good} new" in text.stdout and f"failed {n_bad}" in text.stdout
    assert f"{n_good} images, {n_bad} failures" in text.stdout
