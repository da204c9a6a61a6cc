"""The dashboards preview, opened in headless Chromium: every graph is drawn as a chart with
each line told apart, every alarm is listed, nothing is a raw template token, and Datadog is
shown only where it is on."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from config import EnvironmentConfig, load_environment, parse_environment
from stacks.monitoring import datadog as dd
from tests.stacks.test_monitoring_stack import dashboard
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
        self.lines: dict[str, list[str]] = {}  # widget -> its charted lines' labels
        self.text: list[str] = []  # what the page shows, not its script
        self._in_code = False
        self.rendered = False
        self._widget: str | None = None
        self._in_heading = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self._in_code = tag in ("script", "style")
        if tag == "body" and attributes.get("data-rendered") == "yes":
            self.rendered = True
        if attributes.get("data-widget-id"):
            self._widget = str(attributes["data-widget-id"])
            self.widgets[self._widget] = ""
        if tag == "h3" and self._widget is not None and not self.widgets[self._widget]:
            self._in_heading = True
        if tag == "polyline" and self._widget is not None:
            self.lines.setdefault(self._widget, []).append(str(attributes.get("data-line")))
        if attributes.get("data-alarm") and self._widget is not None:
            self.alarm_marks.append((self._widget, str(attributes["data-alarm"])))
        if attributes.get("data-alarm-row"):
            self.alarm_rows.add(str(attributes["data-alarm-row"]))
        if attributes.get("data-monitor"):
            self.monitor_rows.add(str(attributes["data-monitor"]))

    def handle_data(self, data: str) -> None:
        if not self._in_code:
            self.text.append(data)
        if self._in_heading and self._widget is not None:
            self.widgets[self._widget] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "h3":
            self._in_heading = False
        if tag in ("script", "style"):
            self._in_code = False


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


def drawn_page(config: EnvironmentConfig, tmp_path: Path) -> tuple[Drawn, dict[str, Any]]:
    html, data = render(config)
    page = tmp_path / "preview.html"
    page.write_text(html)
    drawn = Drawn()
    drawn.feed(open_in_chromium(page, tmp_path / "profile"))
    assert drawn.rendered, "the page's script did not run"
    return drawn, data


def graph_widgets(template: dict[str, Any]) -> list[dict[str, Any]]:
    return [w for w in dashboard(template) if "metrics" in w["properties"]]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup installs it)")
@pytest.mark.parametrize("env", ["dev", "prod"])
def test_every_graph_and_alarm_is_drawn(env: str, synth_env: Any, tmp_path: Path) -> None:
    synth: Synth = synth_env(env)
    template = synth.template_json(synth.platform.monitoring)
    drawn, data = drawn_page(synth.config, tmp_path)

    widgets = [w for section in data["cloudwatch"]["sections"] for w in section["widgets"]]
    assert drawn.widgets == {w["id"]: w["title"] for w in widgets}
    # The same graphs as the deployed dashboard, each with as many lines.
    deployed = graph_widgets(template)
    assert sorted(w["title"] for w in widgets) == sorted(w["properties"]["title"] for w in deployed)
    lines = {w["properties"]["title"]: len(w["properties"]["metrics"]) for w in deployed}
    for widget in widgets:
        labels = drawn.lines[widget["id"]]
        assert len(labels) == lines[widget["title"]], widget["title"]
        # Every line told apart (run time p50, p95 and p99 are three labels).
        legend = [f"{line['label']} {line['stat']}" for line in widget["lines"]]
        assert len(set(legend)) == len(legend), widget["title"]
    # Every alarm of the template is listed by its construct id, and marked on a graph that
    # charts its metric.
    alarms = [r for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    assert drawn.alarm_rows == {a["name"] for a in data["cloudwatch"]["alarms"]}
    assert len(drawn.alarm_rows) == len(alarms)
    assert {alarm for _, alarm in drawn.alarm_marks} == drawn.alarm_rows
    # Readable: no CloudFormation token or function reaches the page.
    text = " ".join(drawn.text)
    assert "${" not in text
    assert "Fn::" not in text
    for queue in synth.config.queues:
        assert any(queue in title for title in drawn.widgets.values())
    for group in synth.config.worker_groups:
        assert any(f"Group {group}" in title for title in drawn.widgets.values())
    # Datadog is off in the shipped environments: no Datadog dashboard is shown.
    assert not synth.config.datadog.enabled
    assert data["datadog"] is None
    assert not drawn.monitor_rows
    assert "Datadog is off in this environment." in text


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup installs it)")
def test_the_datadog_dashboard_is_drawn_where_datadog_is_on(tmp_path: Path) -> None:
    data = load_environment("staging").model_dump(exclude={"name"}, exclude_none=True)
    data["datadog"] = {"enabled": True}
    config = parse_environment("staging", data)
    drawn, shown = drawn_page(config, tmp_path)
    groups = shown["datadog"]["groups"]
    assert {w["id"] for g in groups for w in g["widgets"]} <= set(drawn.widgets)
    assert drawn.monitor_rows == {m.name for m in dd.monitors(config)}
