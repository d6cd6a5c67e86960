"""Fixtures and helpers shared by the test modules; tests/conftest.py registers the fixtures.

- clock.py: `frozen`, the clock stopped at the module's NOW; `iso`, `at` for literal timestamps.
- users.py: `staff`, `viewer`, `staff_client`, all with the password PASSWORD.
- ws.py: `connect`, `next_frame`, `next_of_type`, `frames_until`, `subscribe` for /ws/metrics on a live server.
- servers.py: `own_server`, a live daphne on a database of its own.
"""
