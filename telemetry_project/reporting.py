"""Error reports (the DEBUG technical 500 page, error e-mails) without connection secrets.

Django's SafeExceptionReporterFilter hides settings whose *name* looks secret
(KEY, PASS, TOKEN...). Connection URLs carry their password inside the value
(`postgres://user:password@host/db`, `redis://:password@host:6379/0`) under
names it does not catch (DATABASE_URL, REDIS_URL) and nested in others
(CHANNEL_LAYERS' hosts). This filter hides URL/DSN-named settings that hold a
connection URL, and masks the password of any URL it shows: in settings,
request.META (the environment, under a WSGI runserver) and frame variables.
"""

from __future__ import annotations

import re
from typing import Any

from django.views.debug import SafeExceptionReporterFilter

# Settings named like connection strings: DATABASE_URL, REDIS_URL, SENTRY_DSN, CACHE_URLS...
CONNECTION_SETTING = re.compile(r"(^|_)(URLS?|DSN)$", re.I)
# The password part of scheme://user:password@host in any string.
URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)[^@/?#\s]*@", re.I)


def mask_url_passwords(text: str, substitute: str = SafeExceptionReporterFilter.cleansed_substitute) -> str:
    # str(): lazy strings (a CSP nonce in a frame) pass isinstance(str) but not re.sub.
    return URL_PASSWORD.sub(lambda m: f"{m['head']}{substitute}@", str(text))


class ConnectionSafeExceptionReporterFilter(SafeExceptionReporterFilter):
    def cleanse_setting(self, key: Any, value: Any) -> Any:
        # A URL-named setting holding a path (STATIC_URL = "/static/") stays readable.
        if isinstance(key, str) and isinstance(value, str) and "://" in value and CONNECTION_SETTING.search(key):
            return self.cleansed_substitute
        cleansed = super().cleanse_setting(key, value)
        return mask_url_passwords(cleansed, self.cleansed_substitute) if isinstance(cleansed, str) else cleansed

    def get_traceback_frame_variables(self, request: Any, tb_frame: Any) -> Any:
        return [
            (name, mask_url_passwords(value, self.cleansed_substitute) if isinstance(value, str) else value)
            for name, value in super().get_traceback_frame_variables(request, tb_frame)
        ]
