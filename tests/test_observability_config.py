"""config/: the Prometheus scrape config, the alert rules and the Grafana dashboard.

Every query must name metrics the relay really exports (taken from
``relay.core.metrics.Metrics``, not from a list kept here), the rules must pass
``promtool check rules`` and their unit tests (``config/alerts.test.yml``), and
the dashboard must be importable JSON whose queries are valid PromQL. The
promtool tests skip when promtool is not installed (Debian: ``prometheus``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from relay.core.metrics import Metrics

CONFIG = Path(__file__).resolve().parent.parent / "config"
DASHBOARD = CONFIG / "grafana-dashboard.json"
RULES = CONFIG / "alerts.yml"
RULE_TESTS = CONFIG / "alerts.test.yml"
SCRAPE = CONFIG / "prometheus.yml"

# Series Prometheus makes itself for every scrape, allowed in alert rules only.
PROMETHEUS_OWN = {"up"}
# Grafana's variables, replaced by plausible values so promtool can parse a query.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "6h",
    "$account": ".*",
    "$provider": ".*",
}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}
_GROUPING = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"


def exported_names() -> set[str]:
    """Every sample name a fresh ``Metrics()`` exposes.

    A labelled metric has no samples until a child exists, so each gets one
    (placeholder label values) first; then the names are read from what the
    registry collects, suffixes (``_total``, ``_bucket``...) included."""
    metrics = Metrics()
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels(*("x" for _ in metric._labelnames))
    return {s.name for family in metrics.registry.collect() for s in family.samples}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    A small reader, not a parser: it drops strings, label matchers, ranges and
    grouping clauses, then keeps the identifiers that are not functions (a
    following "(") or keywords. Enough for the queries we write."""
    expr = re.sub(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,[^)]*\)", r"\1", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(_GROUPING, "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match.group() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def test_metric_names_reader() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(relay_x_bucket{a="b",c=~"d|e"}[5m])))'
        " / on (provider) group_left sum without (instance) (relay_y_total offset 1h) > 1e3"
        " and up == 0"
    )
    assert metric_names(expr) == {"relay_x_bucket", "relay_y_total", "up"}
    assert metric_names("label_values(relay_z_total, account)") == {"relay_z_total"}


def test_exported_names_come_from_the_code() -> None:
    names = exported_names()
    assert {"relay_recipients_total", "relay_queue_messages", "relay_spool_healthy"} <= names
    assert "relay_delivery_duration_seconds_bucket" in names


# -- the dashboard -------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_queries(dash: dict[str, Any]) -> list[str]:
    queries = [t["expr"] for p in panels(dash) for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def test_dashboard_is_importable_json() -> None:
    dash = dashboard()
    assert dash["uid"] == "relay-overview" and dash["title"]
    assert isinstance(dash["schemaVersion"], int)
    assert "id" not in dash or dash["id"] is None  # Grafana assigns it on import
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in panels(dash):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"], panel["title"]


def test_dashboard_covers_what_the_issue_asks() -> None:
    text = " ".join(dashboard_queries(dashboard()))
    for needle in (
        "relay_messages_total",  # throughput
        "relay_accept_duration_seconds_bucket",  # latency
        "relay_delivery_duration_seconds_bucket",
        "max by (state) (relay_queue_messages",  # queue by state
        "relay_delivery_attempts_total",  # provider health
        "relay_provider_fallbacks_total",
        'sum by (kind) (rate(relay_recipients_total{outcome="accepted"',  # billable by class
        'sum by (account, kind) (increase(relay_recipients_total{outcome="accepted"',
    ):
        assert needle in text


def test_every_dashboard_query_names_exported_metrics() -> None:
    exported = exported_names()
    for query in dashboard_queries(dashboard()):
        names = metric_names(query)
        assert names, f"no metric in {query!r}"
        assert names <= exported, f"{query!r} names {sorted(names - exported)}"


# -- the rules ------------------------------------------------------------------------


def rule_expressions(text: str) -> list[str]:
    """The ``expr`` of each rule in our rules file: inline, or a ``|`` block.

    The project has no YAML library; this reads the one layout the file uses
    and the test checks that it found one expression per alert."""
    exprs = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        key, sep, value = line.strip().partition("expr:")
        if key or not sep:
            continue
        if value.strip() not in ("|", "|-", ">", ">-"):
            exprs.append(value.strip())
            continue
        indent = len(line) - len(line.lstrip()) + 1
        block = []
        for follower in lines[i + 1 :]:
            if follower.strip() and len(follower) - len(follower.lstrip()) < indent:
                break
            block.append(follower.strip())
        exprs.append(" ".join(block).strip())
    return exprs


def test_every_rule_names_exported_metrics() -> None:
    text = RULES.read_text()
    exprs = rule_expressions(text)
    assert len(exprs) == text.count("- alert:") > 0
    allowed = exported_names() | PROMETHEUS_OWN
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= allowed, f"{expr!r} names {sorted(names - allowed)}"


def test_rules_cover_what_the_issue_asks() -> None:
    alerts = set(re.findall(r"- alert: (\w+)", RULES.read_text()))
    assert {
        "RelayQueueGrowing",
        "RelayDeliveryFailureRatio",
        "RelayProviderApiFailing",
        "RelayProviderFallbackRate",
        "RelayAuthFailureSpike",
        "RelayPausedBacklog",
        "RelaySpoolUnhealthy",
    } <= alerts


# -- promtool ------------------------------------------------------------------------


def promtool(*args: str, cwd: Path = CONFIG) -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool not on PATH (Debian package: prometheus)")
    result = subprocess.run(
        [exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_promtool_checks_the_rules() -> None:
    assert "SUCCESS" in promtool("check", "rules", RULES.name)


def test_promtool_checks_the_scrape_config_and_its_rule_files() -> None:
    assert "SUCCESS" in promtool("check", "config", SCRAPE.name)


def test_promtool_unit_tests_of_the_rules() -> None:
    assert "SUCCESS" in promtool("test", "rules", RULE_TESTS.name)


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses PromQL only inside rules: wrap each query in a recording rule."""
    rules = []
    for i, query in enumerate(dashboard_queries(dashboard())):
        for name, value in GRAFANA_VARIABLES.items():
            query = query.replace(name, value)
        query = re.sub(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,[^)]*\)", r"\1", query)
        assert "$" not in query, f"unknown Grafana variable in {query!r}"
        rules.append(f"      - record: dashboard:query{i}\n        expr: {json.dumps(query)}\n")
    path = tmp_path / "dashboard-rules.yml"
    path.write_text("groups:\n  - name: dashboard\n    rules:\n" + "".join(rules))
    assert "SUCCESS" in promtool("check", "rules", path.name, cwd=tmp_path)
