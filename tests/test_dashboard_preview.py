"""The dashboards preview, opened in headless Chromium: every widget and alarm is drawn."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.synth import Synth
from tools.preview_dashboards import render

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium must not reach out: no sync, no updates, no metrics, no first-run fetches.
OFFLINE = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--metrics-recording-only",
    "--no-first-run",
    "--no-pings",
]


class Drawn(HTMLParser):
    """Widgets (by data-widget-id, with their heading), alarm and monitor rows in the DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.widgets: dict[str, str] = {}
        self.alarm_rows: set[str] = set()
        self.alarm_marks: list[tuple[str, str]] = []
        self.monitor_rows: set[str] = set()
        self.rendered = False
        self._widget: str | None = None
        self._in_heading = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "body" and attributes.get("data-rendered") == "yes":
            self.rendered = True
        if attributes.get("data-widget-id"):
            self._widget = str(attributes["data-widget-id"])
            self.widgets[self._widget] = ""
        if tag == "h3" and self._widget is not None and not self.widgets[self._widget]:
            self._in_heading = True
        if attributes.get("data-alarm") and self._widget is not None:
            self.alarm_marks.append((self._widget, str(attributes["data-alarm"])))
        if attributes.get("data-alarm-row"):
            self.alarm_rows.add(str(attributes["data-alarm-row"]))
        if attributes.get("data-monitor"):
            self.monitor_rows.add(str(attributes["data-monitor"]))

    def handle_data(self, data: str) -> None:
        if self._in_heading and self._widget is not None:
            self.widgets[self._widget] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "h3":
            self._in_heading = False


def open_in_chromium(page: Path, profile: Path) -> str:
    assert CHROMIUM is not None
    result = subprocess.run(
        [CHROMIUM, *OFFLINE, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup installs it)")
@pytest.mark.parametrize("env", ["dev", "prod"])
def test_every_widget_and_alarm_is_drawn(env: str, synth_env: Any, tmp_path: Path) -> None:
    synth: Synth = synth_env(env)
    template = synth.template_json(synth.platform.monitoring)
    html, data = render(synth.config, template)
    page = tmp_path / "preview.html"
    page.write_text(html)

    drawn = Drawn()
    drawn.feed(open_in_chromium(page, tmp_path / "profile"))

    assert drawn.rendered, "the page's script did not run"
    expected = {w["id"]: w["title"] for w in data["cloudwatch"]["widgets"]}
    for group in data["datadog"]["groups"]:
        expected |= {w["id"]: w["title"] for w in group["widgets"]}
    assert drawn.widgets == expected
    alarms = {
        r["Properties"].get("AlarmName") or key
        for key, r in template["Resources"].items()
        if r["Type"] == "AWS::CloudWatch::Alarm"
    }
    assert drawn.alarm_rows == {a["id"] for a in data["cloudwatch"]["alarms"]}
    assert len(drawn.alarm_rows) == len(alarms)
    # Every alarm is shown on at least one graph that charts its metric (or its own widget).
    graphs = {w["id"] for w in data["cloudwatch"]["widgets"] if w["type"] == "metric"}
    assert {alarm for widget, alarm in drawn.alarm_marks if widget in graphs} == drawn.alarm_rows
    assert drawn.monitor_rows == {m["name"] for m in data["datadog"]["monitors"]}
    for queue in synth.config.queues:
        assert any(queue in title for title in drawn.widgets.values())
    for group in synth.config.worker_groups:
        assert any(f"Group {group}" in title for title in drawn.widgets.values())
