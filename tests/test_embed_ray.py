"""``embed --engine ray``: same rows as the local engine, resume after a killed driver, a killed actor, two nodes.

The Ray tests share one small cluster on this machine (``ray.cluster_utils.Cluster``): a head and a
worker node with one CPU each (2 CPUs in all). An encoder actor takes one node's CPU for the whole
run, so the decode tasks run on the other node: every run here crosses two nodes.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from imgclust.cache import Cache
from imgclust.cli import app
from imgclust.embed import embed
from imgclust.errors import CacheLockedError, UsageError

from .conftest import TINY_ENCODER, make_image, shared_set

TINY = dict(encoder=TINY_ENCODER, weights="random", device="cpu", batch_size=4)
ENCODE_ACTOR = "MapWorker(MapBatches(_EncodeActor))"


def rows(cache_path, encoder=TINY_ENCODER):
    cache = Cache(cache_path)
    index = cache.read_index(encoder)
    return dict(zip(index.paths, cache.read_embeddings(encoder)))


def assert_same_rows(got, reference, tolerance=1e-6):
    assert list(got) == list(reference)
    assert max(float(np.abs(got[p] - reference[p]).max()) for p in reference) <= tolerance


def perceptual_hashes(cache_path, encoder=TINY_ENCODER):
    index = Cache(cache_path).read_index(encoder)
    return dict(zip(index.paths, index.perceptual_hashes.tolist()))


def failures(cache_path, encoder=TINY_ENCODER):
    f = Cache(cache_path).read_failures(encoder)
    return list(zip(map(str, f.paths), map(str, f.reasons)))


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """120 small textured images and one that cannot be decoded."""
    root = tmp_path_factory.mktemp("ray-images")
    for i in range(120):
        make_image(root / f"{i:03d}.png", (i * 2, 100, 255 - i * 2), size=(40, 36), noise_seed=i)
    (root / "zz_bad.jpg").write_bytes(b"\xff\xd8 broken")
    return root


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory):
    """The local engine's cache of ``folder``."""
    path = tmp_path_factory.mktemp("ray-reference") / "local.h5"
    embed([folder], cache=path, workers=0, **TINY)
    return path


def test_without_ray_the_engine_says_what_to_install(folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` raises ImportError
    result = CliRunner().invoke(app, ["embed", str(folder), "--engine", "ray", "--cache", str(tmp_path / "c.h5")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --engine ray needs Ray Data")
    assert 'pip install "imgclust[ray]"' in result.stderr
    assert not (tmp_path / "c.h5").exists()


@pytest.mark.parametrize("args, message", [
    (["--ray-address", "auto"], "--ray-address go with --engine ray"),
    (["--engine", "spark"], "--engine spark: choose local or ray"),
    (["--engine", "ray", "--views", "2"], "--views with --engine ray"),
    (["--engine", "ray", "--workers", "0"], "--workers 0 with --engine ray"),
    (["--engine", "ray", "--decode", "gpu"], "--decode gpu with --engine ray"),
])
def test_options_the_engine_does_not_take_are_refused_before_any_work(folder, tmp_path, args, message):
    pytest.importorskip("ray")
    result = CliRunner().invoke(app, ["embed", str(folder), "--cache", str(tmp_path / "c.h5"), *args])
    assert result.exit_code == 2 and message in result.stderr
    assert not (tmp_path / "c.h5").exists()


def test_a_second_driver_on_one_cache_is_refused(folder, tmp_path):
    pytest.importorskip("ray")
    cache = Cache(tmp_path / "c.h5")
    with cache.writer():  # refused before connecting to Ray
        with pytest.raises(CacheLockedError):
            embed([folder], cache=cache.path, engine="ray", **TINY)


@pytest.mark.slow
def test_imagenette_mini_across_two_nodes_equals_the_local_engine(ray_cluster, tmp_path):
    """effnet-lite0 with real weights, the same failures and summary; decoding and encoding on different nodes."""
    import ray

    assert sum(node["Alive"] for node in ray.nodes()) == 2
    bad = tmp_path / "bad"
    (bad / "empty.png").parent.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "page.jpg").write_text("<html><body>not found</body></html>")
    make_image(bad / "fine.png", noise_seed=1)
    inputs = [shared_set("imagenette-mini"), bad]
    settings = dict(encoder="effnet-lite0", device="cpu", batch_size=32, labels="folder")
    local = embed(inputs, cache=tmp_path / "local.h5", **settings)
    distributed = embed(inputs, cache=tmp_path / "ray.h5", engine="ray", workers=1, **settings)
    assert_same_rows(rows(tmp_path / "ray.h5", "effnet-lite0"), rows(tmp_path / "local.h5", "effnet-lite0"))
    assert perceptual_hashes(tmp_path / "ray.h5", "effnet-lite0") == perceptual_hashes(tmp_path / "local.h5", "effnet-lite0")
    assert failures(tmp_path / "ray.h5", "effnet-lite0") == failures(tmp_path / "local.h5", "effnet-lite0")
    assert len(failures(tmp_path / "ray.h5", "effnet-lite0")) == 2
    assert np.array_equal(Cache(tmp_path / "ray.h5").read_index("effnet-lite0").labels,
                          Cache(tmp_path / "local.h5").read_index("effnet-lite0").labels)
    same = ("discovered", "embedded", "skipped", "failed", "images", "failures_total", "device", "batch_size", "runtime", "decode")
    assert {k: getattr(distributed, k) for k in same} == {k: getattr(local, k) for k in same}
    assert (distributed.embedded, distributed.failed) == (301, 2)


def test_an_actor_killed_mid_run_is_restarted_and_the_result_is_complete(ray_cluster, folder, reference, tmp_path):
    import ray

    killed = []

    def kill_the_encoder_actor(done, total):
        if done and not killed:
            actors = [a for a in ray._private.state.actors().values()
                      if a["ActorClassName"] == ENCODE_ACTOR and a["State"] == "ALIVE"]
            assert len(actors) == 1
            os.kill(actors[0]["Pid"], signal.SIGKILL)
            killed.append((done, total))

    summary = embed([folder], cache=tmp_path / "c.h5", engine="ray", workers=1, progress=kill_the_encoder_actor, **TINY)
    assert killed and killed[0][0] < killed[0][1] - 20, "the actor was not killed while work was left"
    assert (summary.embedded, summary.failed, summary.images) == (120, 1, 120)
    assert_same_rows(rows(tmp_path / "c.h5"), rows(reference))
    assert perceptual_hashes(tmp_path / "c.h5") == perceptual_hashes(reference)  # hashed by the decode tasks
    assert failures(tmp_path / "c.h5") == failures(reference)


def test_an_imgclust_error_on_a_worker_reaches_the_driver_as_itself(ray_cluster, folder, tmp_path):
    with pytest.raises(UsageError, match="on a Ray worker: --weights .*missing.pt: file not found") as caught:
        embed([folder], cache=tmp_path / "c.h5", engine="ray", workers=1, **{**TINY, "weights": str(tmp_path / "missing.pt")})
    assert caught.value.hint == "give the path of a local checkpoint file"


@pytest.mark.slow
def test_resume_after_the_driver_is_killed_embeds_only_what_was_not_saved(ray_cluster, folder, reference, tmp_path):
    """The killed driver is the CLI with no --ray-address (it starts its own local Ray instance); the
    resumed one is the CLI on the shared cluster, with --json."""
    cache = tmp_path / "c.h5"
    journal = cache.with_name("c.h5.journal")
    args = ["embed", str(folder), "--cache", str(cache), "--encoder", TINY_ENCODER, "--weights", "random",
            "--device", "cpu", "--batch-size", "1", "--engine", "ray", "--workers", "1"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with open(tmp_path / "driver.log", "wb") as log:
        # one image a batch and a journal part a row: the run lasts long enough to be caught mid-way
        proc = subprocess.Popen([sys.executable, "-m", "imgclust", *args, "--flush-rows", "1"],
                                env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and len(list(journal.rglob("part-*.npz"))) >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {(tmp_path / 'driver.log').read_text()}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and what it started in its session
        proc.wait()
    assert not cache.exists()
    resumed = CliRunner().invoke(app, [*args, "--json"])
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.stdout)
    assert summary["recovered"] >= 1 and summary["embedded"] == 120 - summary["recovered"]
    assert (summary["images"], summary["failures_total"]) == (120, 1)
    assert_same_rows(rows(cache), rows(reference))
    assert failures(cache) == failures(reference)
    assert not journal.exists()
    again = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)
    assert (again["embedded"], again["skipped"], again["images"]) == (0, 121, 120)
