"""Users for tests that log in: `staff` may act on alerts and use the admin, `viewer` may only look.

Both are created with the password PASSWORD (for tests that log in through a
form or basic auth); `staff_client` is the test client already logged in as
`staff` (force_login, so no login attempt is counted against throttling).
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User

from tests.asgi_client import RoutedClient

PASSWORD = "correct horse battery"


@pytest.fixture
def staff(db: None) -> User:
    """`oncall`, a staff user."""
    return get_user_model().objects.create_user("oncall", password=PASSWORD, is_staff=True)


@pytest.fixture
def viewer(db: None) -> User:
    """`viewer`, an active user who is not staff."""
    return get_user_model().objects.create_user("viewer", password=PASSWORD)


@pytest.fixture
def staff_client(staff: User) -> RoutedClient:
    """The test client (routed like production, as `client` is) logged in as `staff`."""
    client = RoutedClient()
    client.force_login(staff)
    return client
