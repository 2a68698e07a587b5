"""core.service.probe against slow, obvious references; the probe figures; the Probe page (AppTest)."""
from __future__ import annotations

import io
import json
import statistics
import time
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from PIL import Image

from conftest import plotly_figures

from core.present import figures as F
from core.errors import InputError
from core.data.models import PAPER_LAYERS

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "pages" / "probe.py"
FT, PRE, TASK = "demo:finetuned", "demo:pretrained", "demo-detgt"


# --------------------------------------------------------------------------- helpers
def _encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(h: int = 480, w: int = 640, seed: int = 0) -> np.ndarray:
    """A smooth, photo-like RGB image (gradients and a few discs), uint8 [h, w, 3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([xx, yy, 1 - xx * yy], -1) * 200
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(20, 120)
        img[(np.mgrid[0:h, 0:w][0] - cy) ** 2 + (np.mgrid[0:h, 0:w][1] - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return img.clip(0, 255).astype(np.uint8)


def _by_hand(model_id: str, img: Image.Image, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(layer output [1, ...], logits [1, C]): the demo net's layers applied one by one."""
    from core import service

    lm = service.load_model(model_id)
    net = lm.net.eval()
    x = lm.spec.transform()(img.convert("RGB"))[None]
    out = None
    with torch.no_grad():
        h = x
        for name in PAPER_LAYERS:
            h = getattr(net, name)(h)
            if name == layer:
                out = h.clone()
        logits = net.classifier(h)
    return out, logits


def _slow_percentiles(pooled: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each filter: 100 * (#ref < v + #ref <= v) / (2 N), by a loop over filters."""
    n, f = pooled.shape
    out = np.empty(f)
    for j in range(f):
        ref, v = pooled[:, j], np.float32(values[j])
        out[j] = 100.0 * (np.count_nonzero(ref < v) + np.count_nonzero(ref <= v)) / (2 * n)
    return out


def _pooled_test_set(model_id: str, layer: str) -> np.ndarray:
    """The test split's stored responses, spatially max-pooled with plain numpy, ``[N, F]`` float32."""
    from core import service

    arr = np.asarray(service.features(model_id, service.task(TASK).test, layer).array(), dtype=np.float32)
    return arr.reshape(arr.shape[0], arr.shape[1], -1).max(-1) if arr.ndim == 4 else arr


# --------------------------------------------------------------------------- core.service.probe
@pytest.fixture(scope="module")
def photo(demo_env) -> tuple[str, Image.Image]:
    from core.service.probe import decode_image

    return "photo.jpg", decode_image(_encode(_photo(), "JPEG", quality=90), "photo.jpg")


@pytest.mark.parametrize("layer", ["conv1", "conv3", "conv5", "fc7"])
def test_responses_and_maps_equal_a_forward_pass_by_hand(demo_env, photo, layer):
    from core.service import probe

    (r,) = probe.probe(FT, TASK, layer, [photo])
    out, _ = _by_hand(FT, photo[1], layer)
    out = out[0].numpy()
    if out.ndim == 3:
        np.testing.assert_allclose(r.responses, out.reshape(out.shape[0], -1).max(1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r.maps, out, rtol=1e-5, atol=1e-6)
    else:
        assert r.maps is None
        np.testing.assert_allclose(r.responses, out, rtol=1e-5, atol=1e-6)
    assert r.image.dtype == np.uint8 and r.image.shape == (64, 64, 3)
    assert r.name == "photo.jpg" and len(r.fingerprint) == 16


@pytest.mark.parametrize("layer", ["conv2", "conv5", "fc6"])
def test_percentiles_equal_a_slow_reference(demo_env, photo, layer):
    from core import service
    from core.service import probe

    samples = probe.sample_images(TASK, n=3)  # test items: their responses tie with stored ones
    results = probe.probe(FT, TASK, layer, [photo] + samples)
    pooled = _pooled_test_set(FT, layer)
    for r in results:
        np.testing.assert_allclose(r.percentiles, _slow_percentiles(pooled, r.responses), atol=1e-9)
        assert ((0 <= r.percentiles) & (r.percentiles <= 100)).all()
    # the reference statistics are the pooled test set, sorted per filter, and read-only
    ref = probe.reference_stats(FT, TASK, layer)
    np.testing.assert_array_equal(ref, np.sort(pooled, axis=0))
    assert not ref.flags.writeable
    assert probe.reference_stats(FT, TASK, layer) is ref  # memoised
    # probing a test item reproduces its stored responses (same preprocessing; stored as fp16)
    assert samples[0][0].startswith("test #0 ")
    np.testing.assert_allclose(results[1].responses, pooled[0], rtol=2e-3, atol=2e-3)
    assert len(service.load_set(service.task(TASK).test)) == len(pooled)


def test_percentiles_edge_values():
    from core.service.probe import percentiles

    ref = np.sort(np.array([[0, 0], [0, 1], [2, 1], [3, 5]], dtype=np.float32), axis=0)
    got = percentiles(ref, np.array([0.0, 10.0]))
    np.testing.assert_allclose(got, [100 * (0 + 2) / 8, 100.0])  # ties count half; above all -> 100
    np.testing.assert_allclose(percentiles(ref, np.array([-1.0, 1.0])), [0.0, 100 * (1 + 3) / 8])


def test_strongest_orders_by_percentile_then_response(demo_env, photo):
    from core.service import probe

    (r,) = probe.probe(FT, TASK, "conv5", [photo])
    f = len(r.responses)
    slow = sorted(range(f), key=lambda j: (-r.percentiles[j], -r.responses[j]))
    assert r.strongest(8).tolist() == slow[:8]
    assert r.strongest(f + 5).tolist() == slow
    slow_resp = sorted(range(f), key=lambda j: -r.responses[j])
    assert r.strongest(5, by="response").tolist() == slow_resp[:5]
    # synthetic ties: equal percentiles are broken by the raw response
    t = probe.ProbeResult("t", r.image, np.array([1.0, 3.0, 2.0, 0.5]), None, np.array([50.0, 90.0, 90.0, 99.0]),
                          [], "x")
    assert t.strongest(4).tolist() == [3, 1, 2, 0]


def test_predictions_match_softmax_of_the_net_output(demo_env, photo):
    from core import service
    from core.service import probe

    (r,) = probe.probe(FT, TASK, "conv5", [photo])
    _, logits = _by_hand(FT, photo[1], "conv5")
    p = torch.softmax(logits[0].double(), 0).numpy()
    names = service.load_model(FT).spec.class_names
    assert abs(p.sum() - 1) < 1e-9
    order = np.argsort(-p, kind="stable")[: len(r.predictions)]
    assert len(r.predictions) == min(5, len(names))
    assert [n for n, _ in r.predictions] == [names[i] for i in order]
    assert r.predictions[0][0] == names[int(np.argmax(p))]
    np.testing.assert_allclose([v for _, v in r.predictions], p[order], rtol=1e-5)
    probs = [v for _, v in r.predictions]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    assert probe.predicts_task(FT, TASK) and not probe.predicts_task(PRE, TASK)


def test_signalled_classes_are_the_best_single_filter_aps(demo_env):
    from core import service
    from core.service import probe

    res = service.filter_ap(FT, TASK, "conv5")
    got = probe.signalled_classes(FT, TASK, "conv5", [0, 7, 3], k=3)
    for f, classes in got.items():
        col = res.ap[:, f]
        best = sorted(range(len(col)), key=lambda c: -col[c])[:3]
        assert [c for c, _ in classes] == [res.class_names[c] for c in best]
        np.testing.assert_allclose([ap for _, ap in classes], col[best])
        assert probe.filter_classes(FT, TASK, "conv5", f) == classes


def test_sample_images_and_dataset_views(demo_env):
    from core import service
    from core.service import probe

    samples = probe.sample_images(TASK, n=4)
    data = service.load_set(service.task(TASK).test)
    assert len(samples) == 4 and all(n.startswith("test #") for n, _ in samples)
    assert samples[0][0] == f"test #0 ({data.class_names[int(data.labels[0])]})"
    views = probe.dataset_views(FT, TASK, [0, 5])
    assert [v.shape for v in views] == [(64, 64, 3)] * 2 and views[0].dtype == np.uint8
    # the view round-trips the 64x64 test image through the network's normalisation
    assert np.abs(views[0].astype(int) - np.asarray(data.image(0)).astype(int)).max() <= 1
    assert probe.dataset_names(TASK, [5]) == [f"test #5 ({data.class_names[int(data.labels[5])]})"]


def test_probe_latency_one_640x480_jpeg_under_a_second(demo_env):
    """Decode + forward + percentiles (warm reference) + heatmaps of the 8 strongest filters."""
    from core.service import probe

    jpeg = _encode(_photo(seed=3), "JPEG", quality=90)
    probe.prepare([FT], TASK, "conv5")

    def once() -> None:
        img = probe.decode_image(jpeg, "bench.jpg")
        (r,) = probe.probe(FT, TASK, "conv5", [("bench.jpg", img)])
        for f in r.strongest(8):
            F.overlay_heatmap(r.image, r.maps[f], vmax=float(r.maps[f].max()))

    once()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    ms = 1e3 * statistics.median(times)
    print(f"probe latency, 640x480 JPEG, median of 5: {ms:.0f} ms")
    assert ms <= 1000


# --------------------------------------------------------------------------- figures
def _caption(fig: go.Figure) -> str:
    return next(a.text for a in fig.layout.annotations if a.name == "fs-caption")


def test_probe_bars_figure_data_labels_and_hover():
    ids, pct, resp = np.array([12, 3, 40]), np.array([99.5, 97.0, 60.25]), np.array([4.2, 1.5, 0.3])
    fig = F.probe_bars_figure(ids, pct, resp, layer="conv5", classes=["car 0.61", "bus 0.40", "cat 0.20"],
                              image_name="holiday.jpg")
    bar = fig.data[0]
    np.testing.assert_array_equal(np.asarray(bar.x, float), pct)
    assert list(bar.y) == ["#12", "#3", "#40"] and bar.orientation == "h"
    assert [int(c[0]) for c in bar.customdata] == [12, 3, 40] and bar.customdata[0][2] == "car 0.61"
    assert "filter #%{customdata[0]}" in bar.hovertemplate and list(bar.text) == ["4.2", "1.5", "0.3"]
    assert fig.layout.yaxis.autorange == "reversed" and tuple(fig.layout.xaxis.range) == (0, 101)
    assert "conv5" in fig.layout.title.text and "holiday.jpg" in fig.layout.title.text
    assert "Reproduces" in _caption(fig) and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    json.loads(fig.to_json())
    with pytest.raises(InputError):
        F.probe_bars_figure(ids, pct[:2], resp, layer="conv5")
    with pytest.raises(InputError):
        F.probe_bars_figure(ids, pct, resp, layer="conv5", classes=["a"])


def test_filter_response_figure_groups_models_per_image():
    names = ["a.png", "a-very-long-holiday-photo-name.jpeg", "a.png"]
    series = [{"label": "fine-tuned", "percentiles": [90, 10, 50], "responses": [3.0, 0.1, 1.0]},
              {"label": "pretrained", "percentiles": [70, 20, 40], "responses": [2.0, 0.2, 0.8]}]
    fig = F.filter_response_figure(names, series, filter_id=7, layer="conv5")
    assert len(fig.data) == 2 and fig.layout.barmode == "group" and fig.layout.showlegend
    np.testing.assert_array_equal(np.asarray(fig.data[0].y, float), [90, 10, 50])
    np.testing.assert_array_equal(np.asarray(fig.data[1].y, float), [70, 20, 40])
    x = list(fig.data[0].x)
    assert len(set(x)) == 3 and x[0] == "a.png" and x[1].endswith("…") and len(x[1]) <= 22
    assert [c[0] for c in fig.data[0].customdata] == names  # full names in the hover
    assert fig.data[0].marker.color == F.GROUP_COLORS["fine-tuned"]
    assert fig.data[1].marker.color == F.GROUP_COLORS["pretrained"]
    assert "#7" in fig.layout.title.text and "Reproduces" in _caption(fig)
    json.loads(fig.to_json())
    one = F.filter_response_figure(names[:1], [{"label": "m", "percentiles": [5], "responses": [0.1]}],
                                   filter_id=0, layer="fc7")
    assert one.layout.showlegend is False
    with pytest.raises(InputError):
        F.filter_response_figure(names, [{"label": "m", "percentiles": [1, 2], "responses": [1, 2]}],
                                 filter_id=0, layer="conv5")


def test_image_grid_normalize_each_scales_every_map_to_its_own_max():
    img = np.full((8, 8, 3), 100, np.uint8)
    strong, weak = np.zeros((2, 2)), np.zeros((2, 2))
    strong[0, 0], weak[0, 0] = 10.0, 0.5
    each = F.image_grid_figure([img, img], titles=["a", "b"], heatmaps=[strong, weak], normalize="each")
    np.testing.assert_array_equal(np.asarray(each.data[0].z), np.asarray(each.data[1].z))
    shared = F.image_grid_figure([img, img], titles=["a", "b"], heatmaps=[strong, weak])
    assert not np.array_equal(np.asarray(shared.data[0].z), np.asarray(shared.data[1].z))
    with pytest.raises(InputError):
        F.image_grid_figure([img], titles=["a"], heatmaps=[strong], normalize="max")
    with pytest.raises(InputError):
        F.image_grid_figure([img], titles=["a"], heatmaps=[strong, weak])


# --------------------------------------------------------------------------- the page
def _page():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(PAGE), default_timeout=240)
    at.run()
    return at


def _responses_figure(at) -> dict:
    figs = [f for f in plotly_figures(at) if "on each image" in f["layout"]["title"]["text"]]
    assert len(figs) == 1
    return figs[0]


def test_page_batch_upload_bad_files_get_an_error_line_each(demo_env):
    png = _encode(_photo(90, 120, seed=1), "PNG")
    jpeg = _encode(_photo(100, 80, seed=2), "JPEG")
    at = _page()
    at.file_uploader(key="probe_files").set_value([
        ("good.png", png, "image/png"),
        ("photo.png", jpeg, "image/png"),  # a JPEG with the wrong extension: decoded by content
        ("empty.png", b"", "image/png"),
        ("notes.txt", b"shopping list\nmilk\n", "text/plain"),
        ("cut.png", png[: len(png) // 2], "image/png"),
    ]).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 3
    for name, err in zip(("empty.png", "notes.txt", "cut.png"), errors):
        assert f"'{name}'" in err
    assert not any("good.png" in e or "photo.png" in e for e in errors)
    assert any("2 of 5 files probed" in c.value for c in at.caption)
    assert [t.label for t in at.tabs] == ["good.png", "photo.png"]
    fig = _responses_figure(at)
    assert list(fig["data"][0]["x"]) == ["good.png", "photo.png"] and len(fig["data"]) == 1
    titles = [f["layout"]["title"]["text"] for f in plotly_figures(at)]
    assert any(t.startswith("Strongest conv5 filters") for t in titles)
    assert any(t.startswith("Where the strongest filters fire") for t in titles)
    assert "probe_samples" not in [t.key for t in at.toggle]  # the sample-images offer is for empty uploads


def test_page_only_bad_files_warns_and_stops(demo_env):
    at = _page()
    at.file_uploader(key="probe_files").set_value([("notes.txt", b"hello", "text/plain")]).run()
    assert not at.exception
    assert len(at.error) == 1 and "'notes.txt'" in at.error[0].value
    assert any("None of the uploaded files" in w.value for w in at.warning)
    assert not at.get("plotly_chart")


def test_page_without_uploads_probes_sample_images(demo_env):
    at = _page()
    assert not at.exception and not at.error
    assert at.toggle(key="probe_samples").value is True
    labels = [t.label for t in at.tabs]
    assert len(labels) == 4 and all(l.startswith("test #") for l in labels)
    fig = _responses_figure(at)
    assert list(fig["data"][0]["x"])[0].startswith("test #0")
    assert any("own top predictions" in m.value for m in at.markdown)  # fine-tuned net: the task's classes
    at.toggle(key="probe_samples").set_value(False).run()
    assert not at.exception and not at.get("plotly_chart")
    assert any("Upload images" in i.value for i in at.info)


def test_page_compare_mode_shows_both_models_side_by_side(demo_env):
    at = _page()
    at.toggle(key="w_compare_on").set_value(True).run()
    assert not at.exception and not at.error
    heads = [h.value for h in at.subheader]
    assert heads.count("fine-tuned") == 2 and heads.count("pretrained") == 2  # per-image and per-filter rows
    # two columns holding one model each, for the image details and for the chosen filter
    pairs = [c for c in at.columns if any(h.value in ("fine-tuned", "pretrained") for h in c.subheader)]
    assert len(pairs) == 4
    fig = _responses_figure(at)
    assert [d["name"] for d in fig["data"]] == ["fine-tuned", "pretrained"]
    assert any("No predictions" in c.value for c in at.caption)  # the pretrained net predicts source classes


def test_page_figures_are_kept_between_reruns_and_follow_what_they_show(demo_env):
    """The page keeps its figures between reruns (ui.common.memo_figure); each one is rebuilt
    when a widget it depends on changes: the number of filters shown, the chosen filter, the
    presentation mode."""
    at = _page()

    def titled(prefix: str) -> dict:
        figs = [f for f in plotly_figures(at) if f["layout"]["title"]["text"].startswith(prefix)]
        assert len(figs) == 1, [f["layout"]["title"]["text"] for f in plotly_figures(at)]
        return figs[0]

    def shown() -> tuple[int, int, str, str, int]:
        grid, bars = titled("Where the strongest filters fire"), titled("Strongest conv5 filters")
        return (len(grid["data"]), len(bars["data"][0]["y"]), _responses_figure(at)["layout"]["title"]["text"],
                titled("Test items that excite")["layout"]["title"]["text"], grid["layout"]["font"]["size"])

    k, n_bars, responses, top, size = shown()
    assert k == n_bars == 8 and size == 16
    at.run()                                                  # nothing changed: the same figures
    assert shown() == (k, n_bars, responses, top, size) and not at.exception
    at.slider(key="probe_k").set_value(5).run()
    assert shown()[:2] == (5, 5) and shown()[2:] == (responses, top, size)
    key = next(s.key for s in at.selectbox if s.key and s.key.startswith("probe_filter_"))
    other = next(f for f in at.selectbox(key=key).options if f"#{f[1:]} " not in responses + " ")
    at.selectbox(key=key).set_value(int(other[1:])).run()
    assert not at.exception
    _, _, responses2, top2, _ = shown()
    assert f"filter {other} on each image" in responses2 and f"excite {other} most" in top2
    at.session_state["presentation"] = True
    at.run()
    assert shown()[4] == 22
