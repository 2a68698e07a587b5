"""Extraction equals a direct forward pass; hooks are removed; store is atomic and self-healing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.store import extraction
from core.data import models
from PIL import Image

from core.data.datasets import ArrayImageSet, ImageSet
from core.errors import InputError


def _direct(lm, images):
    """Independent reference: run the layers by hand, module by module."""
    x = extraction.uint8_to_input(images, lm.spec.mean, lm.spec.std, lm.spec.input_size)
    outs = {}
    with torch.no_grad():
        for name in models.PAPER_LAYERS:
            x = getattr(lm.net, name)(x)
            outs[name] = x.numpy().copy()
    return outs


def _count_hooks(net):
    return sum(len(m._forward_hooks) for m in net.modules())


def test_extraction_matches_direct_forward(tmp_path, tiny_images):
    images, labels = tiny_images
    torch.manual_seed(1)
    lm = models.build_demo(num_classes=3)
    ds = ArrayImageSet("tiny", images, labels, ["a", "b", "c"])
    got = extraction.extract(lm, ds, list(models.PAPER_LAYERS), device="cpu", batch_size=8, root=tmp_path)
    ref = _direct(lm, images)
    for layer in models.PAPER_LAYERS:
        arr = got[layer].array()
        assert arr.dtype == np.float16 and arr.shape == ref[layer].shape
        np.testing.assert_allclose(arr.astype(np.float32), ref[layer], rtol=2e-3, atol=2e-3 * np.abs(ref[layer]).max())
        if arr.ndim == 4:  # the spatial maxima stored beside: those of the stored float16 maps, exactly
            mx = got[layer].maxima()
            assert mx.dtype == np.float16 and np.array_equal(mx, np.asarray(arr).max(axis=(2, 3)))
            np.testing.assert_allclose(mx.astype(np.float32), ref[layer].max(axis=(2, 3)), rtol=2e-3,
                                       atol=2e-3 * np.abs(ref[layer]).max())
    assert _count_hooks(lm.net) == 0
    # the demo network runs channels-last on the CPU: its conv maps are stored as produced
    conv5 = got["conv5"]
    assert conv5.layout == "NHWC" and np.load(conv5.path, mmap_mode="r").shape == (37, 4, 4, 64)
    assert got["fc7"].layout == "NCHW" and got["fc7"].manifest["maxima"] is False


def test_old_format_store_is_read_as_it_is(tmp_path, tiny_images):
    """A store written by format 1 (maps [N, C, H, W], no maxima file) is read correctly, not
    re-extracted; its maxima are taken from the maps. An unknown format is dropped, with a
    warning naming it, and re-extracted."""
    images, labels = tiny_images
    torch.manual_seed(2)
    lm = models.build_demo(num_classes=3)
    ds = ArrayImageSet("tiny", images, labels, ["a", "b", "c"])
    ref = _direct(lm, images)["conv3"].astype(np.float16)
    folder = extraction.features_dir(lm, ds, tmp_path)
    folder.mkdir(parents=True)
    np.save(folder / "conv3.npy", ref)  # C order: the old layout
    shape = list(ref.shape)
    (folder / "conv3.json").write_text(json.dumps({
        "format": 1, "layer": "conv3", "shape": shape, "dtype": "float16",
        "fingerprint": extraction.layer_fingerprint(lm, ds, "conv3", shape)}))
    old = extraction.extract(lm, ds, ["conv3"], device="cpu", root=tmp_path)["conv3"]
    assert old.manifest["format"] == 1 and old.layout == "NCHW"
    assert np.array_equal(old.array(), ref) and np.array_equal(old.maxima(), ref.max(axis=(2, 3)))
    man = json.loads((folder / "conv3.json").read_text())
    (folder / "conv3.json").write_text(json.dumps({**man, "format": 99}))
    with pytest.MonkeyPatch.context() as mp:
        seen = []
        mp.setattr(extraction.log, "warning", lambda msg, *a: seen.append(msg % a))
        new = extraction.extract(lm, ds, ["conv3"], device="cpu", root=tmp_path)["conv3"]
    assert len(seen) == 1 and "store format 99" in seen[0] and "conv3.json" in seen[0], seen
    assert new.manifest["format"] == extraction.FORMAT_VERSION and new.layout == "NHWC"
    np.testing.assert_allclose(new.array().astype(np.float32), ref.astype(np.float32), rtol=2e-3,
                               atol=2e-3 * np.abs(ref).max())


def test_damaged_maxima_file_drops_the_layer(tmp_path, tiny_images):
    images, labels = tiny_images
    lm = models.build_demo(num_classes=3)
    ds = ArrayImageSet("tiny", images, labels, ["a", "b", "c"])
    first = extraction.extract(lm, ds, ["conv2"], device="cpu", root=tmp_path)["conv2"]
    want = np.asarray(first.maxima()).copy()
    maxima = extraction.maxima_file(first.path)
    maxima.write_bytes(maxima.read_bytes()[:90])
    assert extraction.load_features(lm, ds, "conv2", root=tmp_path) is None
    assert not first.path.exists() and not maxima.exists()
    healed = extraction.extract(lm, ds, ["conv2"], device="cpu", root=tmp_path)["conv2"]
    assert np.array_equal(healed.maxima(), want)


class _PilSet(ImageSet):
    """Same images served as PIL files would be: forces the DataLoader + transform path."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels
        self.name, self.class_names, self.fingerprint = "pil", ("a", "b", "c"), "pil-fp"

    def image(self, i):
        return Image.fromarray(self.images[i])


def test_pil_path_matches_array_path(tmp_path, tiny_images):
    images, labels = tiny_images
    lm = models.build_demo(num_classes=3)
    fast = extraction.extract(lm, ArrayImageSet("tiny", images, labels, ["a", "b", "c"]), ["conv2", "fc7"],
                              device="cpu", root=tmp_path / "a")
    slow = extraction.extract(lm, _PilSet(images, labels), ["conv2", "fc7"], device="cpu", batch_size=10,
                              num_workers=0, root=tmp_path / "b")
    for layer in ("conv2", "fc7"):
        np.testing.assert_allclose(fast[layer].array().astype(np.float32), slow[layer].array().astype(np.float32),
                                   atol=5e-3)


def test_cpu_input_batches_are_torchvision_transforms_bit_for_bit():
    """The CPU input path of a resizing model (in-memory images without the PIL round trip, PIL
    images as they are, both normalised into one reused buffer) yields exactly the batches of
    torchvision's own per-image transform, the last partial batch included."""
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (10, 70, 90, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 10)
    lm = models.build_torchvision("alexnet", use_hub_cache=False)
    transform = lm.spec.transform()
    for data in (ArrayImageSet("arr", images, labels, ["a", "b", "c"]), _PilSet(images, labels)):
        got = [(start, x.clone()) for start, x in
               extraction.iter_batches(lm, data, 4, torch.device("cpu"), num_workers=0)]
        assert [start for start, _ in got] == [0, 4, 8]
        for start, x in got:
            ref = torch.stack([transform(Image.fromarray(im)) for im in images[start:start + 4]])
            assert x.dtype == ref.dtype and x.is_contiguous() and torch.equal(x, ref), (type(data), start)


def test_buffer_pool_hands_out_exclusive_buffers_and_keeps_a_bounded_few():
    pool = extraction.BufferPool(limit=3 * 4096)
    a, b = pool.take((2, 512), torch.float32), pool.take((2, 512), torch.float32)  # 4 KiB each
    assert a.data_ptr() != b.data_ptr()
    pool.give(a)
    again = pool.take((2, 512), torch.float32)
    assert again.data_ptr() == a.data_ptr()                         # reused, not reallocated
    assert pool.take((2, 512), torch.float32).data_ptr() not in (a.data_ptr(), b.data_ptr())
    cl = pool.take((1, 4, 8, 8), torch.float32, torch.channels_last)
    assert extraction.channels_last(cl)
    pool.give(cl)
    fresh = pool.take((1, 4, 8, 8), torch.float32)                    # layout is part of the key
    assert fresh.is_contiguous() and fresh.data_ptr() != cl.data_ptr()
    bufs = [pool.take((2, 512), torch.float32) for _ in range(5)]
    for x in bufs:
        pool.give(x)
    assert pool.held == 3 * 4096                                      # the oldest dropped first
    kept = {pool.take((2, 512), torch.float32).data_ptr() for _ in range(3)}
    assert kept == {x.data_ptr() for x in bufs[2:]} and pool.held == 0
    with torch.inference_mode():  # extraction takes its buffers there; later users may not be
        made_inside = pool.take((3,), torch.float32)
    made_inside.fill_(1.0)


def test_buffer_pool_evicts_after_a_shape_was_taken_empty():
    """A shape whose last free buffer was taken, then buffers over the limit given back: the eviction
    drops the oldest kept buffers (it once met that shape's empty list and raised IndexError at the end
    of a 15-minute extraction, losing it)."""
    pool = extraction.BufferPool(limit=2 * 4096)
    first = pool.take((2, 512), torch.float32)
    pool.give(first)
    assert pool.take((2, 512), torch.float32).data_ptr() == first.data_ptr()   # that shape: none free now
    others = [pool.take((4, 512), torch.float32) for _ in range(3)]              # 8 KiB each
    for x in others:
        pool.give(x)
    assert pool.held == 8192 and pool.take((4, 512), torch.float32).data_ptr() == others[-1].data_ptr()
    assert pool.held == 0


def test_concurrent_extractions_through_the_shared_pool_match_the_forward(tmp_path, tiny_images):
    """Two threads extracting two networks at once, twice each, through the process-wide
    buffer pool: every store equals that network's direct forward pass."""
    from concurrent.futures import ThreadPoolExecutor

    images, labels = tiny_images
    ds = ArrayImageSet("tiny", images, labels, ["a", "b", "c"])
    nets = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        nets.append(models.build_demo(num_classes=3))
    refs = [_direct(lm, images) for lm in nets]

    def run(k: int, r: int) -> dict:
        got = extraction.extract(nets[k], ds, ["conv1", "conv5", "fc7"], device="cpu", batch_size=8,
                                 root=tmp_path / f"{k}-{r}")
        return {layer: np.asarray(f.array()).astype(np.float32) for layer, f in got.items()}

    with ThreadPoolExecutor(2) as pool:
        jobs = {(k, r): pool.submit(run, k, r) for r in range(2) for k in range(2)}
    for (k, _), job in jobs.items():
        for layer, arr in job.result().items():
            ref = refs[k][layer]
            np.testing.assert_allclose(arr, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())


def test_hooks_removed_on_error(tiny_images):
    lm = models.build_demo(num_classes=3)
    with pytest.raises(RuntimeError):
        with extraction.capture_layers(lm, ["conv1", "fc7"]):
            assert _count_hooks(lm.net) == 2
            raise RuntimeError("boom")
    assert _count_hooks(lm.net) == 0


def test_store_reuse_manifest_and_corruption(tmp_path, tiny_images):
    images, labels = tiny_images
    lm = models.build_demo(num_classes=3)
    ds = ArrayImageSet("tiny", images, labels, ["a", "b", "c"])
    first = extraction.extract(lm, ds, ["conv5"], device="cpu", root=tmp_path)["conv5"]
    man = first.manifest
    assert man["model"]["arch"] == "demo-alexnet" and man["dataset"]["fingerprint"] == ds.fingerprint
    assert man["layer"] == "conv5" and man["shape"] == [37, 64, 4, 4] and "code_version" in man
    mtime = first.path.stat().st_mtime_ns
    again = extraction.extract(lm, ds, ["conv5"], device="cpu", root=tmp_path)["conv5"]
    assert again.path.stat().st_mtime_ns == mtime  # served from the store
    # corrupt the file: it is detected, dropped and re-extracted
    first.path.write_bytes(first.path.read_bytes()[:100])
    assert extraction.load_features(lm, ds, "conv5", root=tmp_path) is None
    healed = extraction.extract(lm, ds, ["conv5"], device="cpu", root=tmp_path)["conv5"]
    assert healed.array().shape == (37, 64, 4, 4)
    # no temp files left behind
    assert not [p for p in healed.path.parent.iterdir() if ".tmp-" in p.name]
    assert json.loads(healed.path.with_suffix(".json").read_text())["shape"] == [37, 64, 4, 4]


def test_bad_requests(tmp_path, tiny_images):
    images, labels = tiny_images
    lm = models.build_demo(num_classes=3)
    ds = ArrayImageSet("tiny", images, labels, ["a", "b", "c"])
    with pytest.raises(InputError, match="no layer"):
        extraction.extract(lm, ds, ["conv9"], device="cpu", root=tmp_path)
    with pytest.raises(InputError):
        extraction.extract(lm, ds, [], device="cpu", root=tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA"):
            extraction.resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_extraction_matches_the_cpu_forward(tmp_path, tiny_images):
    """The CUDA path (autocast, pinned buffers, side-stream copies, two buffer sets in turn) stores
    what a float32 CPU forward computes, to half-precision tolerance, and maxima of its own maps."""
    images, labels = tiny_images
    torch.manual_seed(3)
    lm = models.build_demo(num_classes=3)
    ref = _direct(lm, images)
    ds = ArrayImageSet("tiny", images, labels, ["a", "b", "c"])
    got = extraction.extract(lm, ds, list(models.PAPER_LAYERS), device="cuda", batch_size=8, root=tmp_path)
    lm.net.to("cpu")
    for layer in models.PAPER_LAYERS:
        arr = np.asarray(got[layer].array(), dtype=np.float32)
        scale = np.abs(ref[layer]).max()
        np.testing.assert_allclose(arr, ref[layer], rtol=3e-2, atol=3e-2 * scale, err_msg=layer)
        if arr.ndim == 4:
            assert np.array_equal(got[layer].maxima(), np.asarray(got[layer].array()).max(axis=(2, 3)))
    assert got["conv1"].manifest["device"].startswith("cuda")


def test_two_threads_extracting_the_same_network_get_their_own_outputs(tmp_path, tiny_images):
    """Hooks of one extraction ignore another thread's forward of the same network (two app sessions
    asking for the same model at once): before, each thread's hooks also caught the other's batches."""
    import threading

    images, labels = tiny_images
    ds = ArrayImageSet("tiny", images, labels, ["a", "b", "c"])
    ds_rev = ArrayImageSet("tiny-rev", np.ascontiguousarray(images[::-1]), labels[::-1], ["a", "b", "c"])
    torch.manual_seed(7)
    lm = models.build_demo(num_classes=3)
    refs = {d.name: _direct(lm, d.images)["conv5"] for d in (ds, ds_rev)}
    start = threading.Barrier(2)
    out = {}

    def run(d):
        start.wait()
        out[d.name] = extraction.extract(lm, d, ["conv5"], device="cpu", batch_size=4,
                                         root=tmp_path / d.name)["conv5"].array().astype(np.float32)

    threads = [threading.Thread(target=run, args=(d,)) for d in (ds, ds_rev)]
    [t.start() for t in threads], [t.join() for t in threads]
    for name, ref in refs.items():
        np.testing.assert_allclose(out[name], ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
