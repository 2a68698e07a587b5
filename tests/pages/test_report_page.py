"""AppTest of the Report & presentation page (and of the download / pin row under every chart).

Pin a chart on an analysis page, add standard figures from the report page, reorder and
remove them, and step through the presentation with Previous / Next: the figure shown
must follow. The figures shown are held against core.service, not against the page.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import app_test, plotly_figures

MODEL, PRE, TASK = "demo:finetuned", "demo:pretrained", "demo-detgt"

pytestmark = pytest.mark.usefixtures("demo_env")


def _ok(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _button(at, key: str):
    return next(b for b in at.button if b.key == key)


def _pins(at) -> list:
    return list(at.session_state["report_items"]) if "report_items" in at.session_state else []


def _title(fig: dict) -> str:
    return fig["layout"]["title"]["text"]


def test_pin_a_chart_then_present_the_pinned_and_standard_figures():
    from core import service

    at = app_test("pages/filters-needed.py")
    _ok(at)
    labels = [el.proto.label for el in at.get("download_button")]
    assert labels[:2] == ["PNG", "SVG"] and labels[2:4] == ["CSV", "LaTeX"]  # the chart's row, then Table 5's
    _button(at, "fn_curves__pin").click().run()
    _ok(at)
    pins = _pins(at)
    assert [p.key for p in pins] == ["fn_curves"]
    assert "filters-needed?" in pins[0].stamp and "weights " in pins[0].stamp  # permalink + provenance
    assert _button(at, "fn_curves__pin").label == "Update pin"

    at.switch_page("pages/report.py").run()
    _ok(at)
    assert at.header[0].value == "Pinned figures (1)"
    ms = next(m for m in at.multiselect if m.key == "rp_std_keys")
    ms.set_value(["needed", "layers"]).run()
    _button(at, "rp_add_std").click().run()
    _ok(at)
    assert [p.key for p in _pins(at)] == ["fn_curves", "needed", "layers"]
    assert at.header[0].value == "Pinned figures (3)"

    _button(at, "rp_up_2").click().run()  # layers moves above needed
    assert [p.key for p in _pins(at)] == ["fn_curves", "layers", "needed"]
    _button(at, "rp_del_0").click().run()
    assert [p.key for p in _pins(at)] == ["layers", "needed"]

    _button(at, "rp_start").click().run()
    _ok(at)
    shown = plotly_figures(at)
    assert len(shown) == 1 and _title(shown[0]) == "Linear-classifier mAP by layer"
    assert shown[0]["layout"]["font"]["size"] == 22  # presentation styling
    assert _button(at, "rp_prev").disabled
    ref = service.layer_map_table([MODEL, PRE], TASK)  # the figure shows the service's numbers
    traces = {t["name"]: t for t in shown[0]["data"]}
    np.testing.assert_allclose(traces["fine-tuned"]["y"], ref[MODEL].round(1).to_numpy())

    _button(at, "rp_next").click().run()
    _ok(at)
    fig = plotly_figures(at)[0]
    assert _title(fig) == "How many filters does a class need?"
    assert _button(at, "rp_next").disabled  # the last figure
    k50 = service.filters_needed(MODEL, TASK, "conv5").k50
    marks = [t for t in fig["data"] if t.get("showlegend") is False and t.get("mode") == "markers"]
    np.testing.assert_array_equal([int(t["x"][0]) for t in marks], k50)

    _button(at, "rp_prev").click().run()
    assert _title(plotly_figures(at)[0]) == "Linear-classifier mAP by layer"
    _button(at, "rp_exit").click().run()
    _ok(at)
    assert at.title[0].value == "Report & presentation" and not plotly_figures(at)


def test_report_page_without_pins_explains_what_to_do():
    at = app_test("pages/report.py")
    _ok(at)
    assert at.header[0].value == "Pinned figures (0)"
    assert "Pin to report" in at.info[0].value
    assert _button(at, "rp_start").disabled


def test_without_a_browser_the_image_buttons_are_disabled_and_say_what_to_install(monkeypatch):
    from core.present import export

    monkeypatch.setattr(export, "find_browser", lambda: None)
    at = app_test("pages/filters-needed.py")
    _ok(at)
    buttons = {el.proto.label: el.proto for el in at.get("download_button")}
    for fmt in ("PNG", "SVG"):
        assert buttons[fmt].disabled and "install chromium" in buttons[fmt].help
    assert not buttons["CSV"].disabled and not buttons["LaTeX"].disabled  # tables need no browser
    _button(at, "fn_curves__pin").click().run()
    at.switch_page("pages/report.py").run()
    _ok(at)
    report_buttons = {el.proto.label: el.proto for el in at.get("download_button")}
    assert not report_buttons["HTML report (interactive, offline)"].disabled
    for label in ("Slides (1920×1080 PNG, zip)", "PDF (one page per figure)"):
        assert report_buttons[label].disabled and "make chromium" in report_buttons[label].help
