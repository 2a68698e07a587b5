"""Probe your images: which filters fire, how strongly compared with the dataset, what they signal."""
import hashlib
import time

import pandas as pd
import streamlit as st

from core import service
from core.present import figures
from core.service import probe
from ui.common import (computing, custom_value, guard, memo_figure, new_click, preset, show_figure, show_table,
                       sidebar)

MAX_TABS = 12  # per-image detail tabs; the across-images chart covers every image
REPRO_TOP = "Reproduces the top-activation views of Secs. 3-4."
ALPHA = 0.75  # heatmap opacity at the map maximum (the figures default 0.6 is faint on colourful scenes)

preset(layer="conv5")  # the most semantic conv layer; any layer can be picked
sel = sidebar(task_kinds=None)
filter_key = f"probe_filter_{sel.model}_{sel.layer}"
task = service.task(sel.task)
pres = st.session_state.get("presentation", False)
st.title("Probe your images")
st.markdown(
    "Upload one or many images and see what the chosen layer makes of them: the **strongest filters** "
    "(each one's spatially max-pooled response, Sec. 4, as a *percentile* of its responses over the test split "
    f"of **{task.title}**), where in the image they fire, the classes each filter signals (its best "
    "single-filter AP, Sec. 4.1) and the dataset items that excite it most."
)


def _decode(files) -> tuple[list, list]:
    """Decode uploads once per session (keyed by name + content hash); bad files become error lines."""
    cache = st.session_state.setdefault("_probe_decoded", {})
    images, errors, keep = [], [], {}
    for f in files:
        data = f.getvalue()
        key = (f.name, hashlib.sha256(data).hexdigest())
        if key not in cache:
            ok, bad = probe.decode_many([(f.name, data)])
            cache[key] = ("ok", ok[0][1]) if ok else ("error", bad[0][1])
        keep[key] = cache[key]
        kind, value = cache[key]
        (images if kind == "ok" else errors).append((f.name, value))
    st.session_state["_probe_decoded"] = keep
    return images, errors


def _distinct(images: list) -> list:
    seen: dict[str, int] = {}
    out = []
    for name, img in images:
        seen[name] = seen.get(name, 0) + 1
        out.append((name if seen[name] == 1 else f"{name} ({seen[name]})", img))
    return out


def _pct(p: float) -> str:
    return f"pct {p:.0f}"


def _short(name: str, limit: int = 20) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _signals(classes: list) -> str:
    return ", ".join(f"{c} {ap:.2f}" for c, ap in classes)


uploads = st.file_uploader("Images to probe (PNG, JPEG, WebP, BMP, TIFF, GIF; up to 25 MB each)", type=None,
                           accept_multiple_files=True, key="probe_files",
                           help="Files are recognised by their content, not their extension. "
                                "A file that is not a usable image is skipped with a message.")
images, samples = [], False
if uploads:
    images, errors = _decode(uploads)
    for _name, message in errors:
        st.error(message, icon=":material/block:")
    if errors:
        st.caption(f"{len(images)} of {len(uploads)} files probed; {len(errors)} skipped.")
    if not images:
        st.warning("None of the uploaded files could be used. Upload PNG or JPEG images, or remove the files "
                   "to try the sample images.")
        st.stop()
else:
    samples = st.toggle("Try with sample images from the test set", value=True, key="probe_samples",
                        help=f"A few items of {task.test}, spread over the split.")
    if not samples:
        st.info("Upload images above to probe them.")
        st.stop()
    with guard("the sample images"):
        images = probe.sample_images(sel.task, n=4)
images = _distinct(images)

left, right = st.columns([1, 3])
k = left.slider("Strongest filters shown", 3, 16, 8, key="probe_k")
right.caption("Percentile 50 is a typical response on the dataset; 100 means no test item made the filter respond "
              "more. Filter ids are shared between a pretrained net and its fine-tuned version (fine-tuning starts "
              "from the pretrained weights), so compare mode shows the same units before and after.")

results: dict[str, list] = {}
with guard("the probe"):
    computing("Preparing the dataset reference (responses of the test split, per-class filter AP)…",
              probe.prepare, sel.models, sel.task, sel.layer)
    timing = []
    for m in sel.models:
        t0 = time.perf_counter()
        results[m] = probe.probe(m, sel.task, sel.layer, images)
        timing.append(f"{service.model_label(m)} {1e3 * (time.perf_counter() - t0):.0f} ms")
    st.caption(f"Probed {len(images)} image{'s' * (len(images) > 1)} at {sel.layer} "
               f"({'sample images' if samples else 'your uploads'}): " + " · ".join(timing) + ".")
if not results:
    st.stop()
narrow = len(sel.models) > 1  # compare mode: two half-width columns
image_set = tuple(r.fingerprint for r in results[sel.model])
if st.session_state.get("_probe_image_set") != image_set:  # new images: start at their strongest filter
    st.session_state["_probe_image_set"] = image_set
    st.session_state[filter_key] = int(results[sel.model][0].strongest(1)[0])
tile_h, name_len = (150, 12) if narrow else (250, 20)


def _strongest(m: str, i: int, r) -> None:
    """One model's view of one image: heatmaps, percentile bars, table, predictions."""
    top = r.strongest(k)
    sig = probe.signalled_classes(m, sel.task, sel.layer, top)
    seen = (m, sel.task, sel.layer, r.fingerprint, r.name, tuple(int(f) for f in top), pres)  # all the figures show

    def grid_figure():
        grid = figures.image_grid_figure([r.image] * len(top),
                                         titles=[f"#{f} · {_pct(r.percentiles[f])}" for f in top],
                                         heatmaps=[r.maps[f] for f in top], cols=4, normalize="each",
                                         alpha=ALPHA, tile_height=tile_h)
        return figures.apply_style(grid, title=f"Where the strongest filters fire · {service.model_label(m)}",
                                   caption=REPRO_TOP, presentation=pres)

    def bars_figure():
        bars = figures.probe_bars_figure(top, r.percentiles[top], r.responses[top], layer=sel.layer,
                                         classes=[_signals(sig[int(f)]) for f in top], image_name=r.name)
        return figures.apply_style(bars, title=f"Strongest {sel.layer} filters · {service.model_label(m)}",
                                   presentation=pres,
                                   caption="Reproduces Sec. 4 (max-pooled responses). Text: raw response.")

    if r.maps is not None:
        show_figure(memo_figure(("probe_grid", tile_h, *seen), grid_figure), f"probe_grid_{m}_{i}")
    else:
        st.caption(f"{sel.layer} is fully connected: its filters have no spatial map.")
    bars = memo_figure(("probe_bars", *seen), bars_figure)
    event = show_figure(bars, f"probe_bars_{m}_{i}", on_select="rerun", selection_mode="points")
    clicked = new_click(event, f"probe_bars_{m}_{i}")
    if clicked is not None:  # a click on a bar picks that filter below
        st.session_state[filter_key] = int(custom_value(clicked, 0))
    show_table(pd.DataFrame({"filter": [f"#{f}" for f in top], "response": r.responses[top].round(4),
                             "percentile": r.percentiles[top].round(1),
                             "signals (class AP)": [_signals(sig[int(f)]) for f in top]}),
               f"probe_table_{m}_{i}", caption=f"Strongest {sel.layer} filters on {r.name}", hide_index=True,
               width="stretch",
                 column_config={"percentile": st.column_config.ProgressColumn("percentile", min_value=0,
                                                                              max_value=100, format="%.1f")})
    if probe.predicts_task(m, sel.task) and r.predictions:
        st.markdown("**The model's own top predictions**")
        show_table(pd.DataFrame(r.predictions, columns=["class", "probability"]), f"probe_pred_{m}_{i}",
                   caption=f"Top predictions of {m} on {r.name}", hide_index=True,
                   width="stretch", column_config={"probability": st.column_config.ProgressColumn(
                         "probability", min_value=0.0, max_value=1.0, format="%.3f")})
    else:
        st.caption(f"No predictions: {service.model_label(m)}'s classifier does not output this task's classes.")


st.header("Strongest filters per image")
shown = images[:MAX_TABS]
if len(images) > MAX_TABS:
    st.caption(f"Details for the first {MAX_TABS} images; the chart below covers all {len(images)}.")
tabs = st.tabs([name for name, _ in shown], key="probe_image_tab", on_change="rerun")  # lazy: only the open tab runs
for i, tab in enumerate(tabs):
    if not tab.open:
        continue
    with tab, guard(f"the filters of {shown[i][0]}"):
        original, view = shown[i][1], results[sel.model][i].image
        thumb = original.copy()
        thumb.thumbnail((480, 480))
        same = original.size == (view.shape[1], view.shape[0])
        st.image([view] if same else [thumb, view], width=220,
                 caption=[f"the network's view · {view.shape[1]}×{view.shape[0]} px"] if same else
                 [f"{'sample' if samples else 'upload'} · {original.width}×{original.height} px",
                  f"the network's view · {view.shape[1]}×{view.shape[0]} px"])
        st.caption("Heatmaps: each filter's spatial response over the network's view (Viridis, each tile scaled "
                   "to its own maximum); tile titles give the response's percentile among the test split's. "
                   "Click a bar to inspect that filter below.")
        cols = st.columns(len(sel.models))
        for col, m in zip(cols, sel.models):
            with col:
                st.subheader(service.model_label(m))
                _strongest(m, i, results[m][i])

st.header("One filter across your images")
with guard("the chosen filter"):
    first = results[sel.model][0]
    n_filters = len(first.responses)
    if st.session_state.get(filter_key) not in range(n_filters):
        st.session_state[filter_key] = int(first.strongest(1)[0])
    filt = st.selectbox(f"{sel.layer} filter", list(range(n_filters)), format_func=lambda f: f"#{f}",
                        key=filter_key, help="Starts at the strongest filter of the first image; "
                                             "click a bar in the charts above to pick another.")
    models = [m for m in sel.models if filt < len(results[m][0].responses)]
    shown_items = {m: tuple((r.fingerprint, r.name) for r in results[m]) for m in models}

    def responses_figure():
        series = [{"label": service.model_label(m), "percentiles": [r.percentiles[filt] for r in results[m]],
                   "responses": [r.responses[filt] for r in results[m]]} for m in models]
        fig = figures.filter_response_figure([name for name, _ in images], series, filter_id=filt, layer=sel.layer)
        return figures.apply_style(fig, title=None, presentation=pres)

    show_figure(memo_figure(("probe_responses", sel.task, sel.layer, filt, pres, tuple(shown_items.items())),
                            responses_figure), "probe_filter_responses")
    st.caption("Below, per model: the classes this filter detects best on its own (single-filter AP, Sec. 4.1), "
               "its response map on your images (one colour scale for all) and the test items that excite it most.")
    cols = st.columns(len(models))
    for col, m in zip(cols, models):
        with col:
            st.subheader(service.model_label(m))
            classes = probe.filter_classes(m, sel.task, sel.layer, filt)
            st.markdown(f"**Signals:** {', '.join(f'{c} (AP {ap:.2f})' for c, ap in classes)}")
            rs = results[m][:MAX_TABS]
            seen = (m, sel.task, sel.layer, filt, pres, tile_h)

            def filter_grid(rs=rs):
                grid = figures.image_grid_figure([r.image for r in rs],
                                                 titles=[f"{_short(r.name, name_len)} · {_pct(r.percentiles[filt])}"
                                                         for r in rs],
                                                 heatmaps=[r.maps[filt] for r in rs], cols=4, alpha=ALPHA,
                                                 tile_height=tile_h)
                return figures.apply_style(grid, title=f"Filter #{filt} on your images", caption=REPRO_TOP,
                                           presentation=pres)

            if rs[0].maps is not None:
                show_figure(memo_figure(("probe_filter_grid", *seen, name_len, shown_items[m][:MAX_TABS]), filter_grid),
                            f"probe_filter_grid_{m}")
            top = service.top_activations(m, sel.task, sel.layer, filt, n=8)
            names = probe.dataset_names(sel.task, top["indices"])

            def top_grid(m=m, top=top):
                grid = figures.image_grid_figure(
                    probe.dataset_views(m, sel.task, top["indices"]),
                    titles=[f"#{i} · {s:.2f}" for i, s in zip(top["indices"], top["scores"])],
                    heatmaps=list(top["maps"]) if top["maps"] is not None else None, cols=4, alpha=ALPHA,
                    tile_height=tile_h)
                return figures.apply_style(grid, title=f"Test items that excite #{filt} most", caption=REPRO_TOP,
                                           presentation=pres)

            show_figure(memo_figure(("probe_top", *seen), top_grid), f"probe_top_{m}")
            st.caption("Top-activating test items (response): "
                       + "; ".join(f"{n} {s:.3g}" for n, s in zip(names, top["scores"])) + ".")
