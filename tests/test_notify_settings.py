"""NOTIFY_URLS is parsed at start and fails loudly on a value that is not a URL."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from telemetry_project.settings import notify_urls


def test_notify_urls_split_on_whitespace(monkeypatch):
    monkeypatch.setenv("NOTIFY_URLS", " alertmanager+https://am.example/hook\n  mailto://u:p@example.com ")
    assert notify_urls("NOTIFY_URLS") == ["alertmanager+https://am.example/hook", "mailto://u:p@example.com"]


@pytest.mark.parametrize("bad", ["am.example/hook", "https://", "://host", "not a url"])
def test_a_value_that_is_not_a_url_stops_the_server(monkeypatch, bad):
    monkeypatch.setenv("NOTIFY_URLS", bad)
    with pytest.raises(ImproperlyConfigured, match="NOTIFY_URLS"):
        notify_urls("NOTIFY_URLS")
