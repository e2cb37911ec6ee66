"""Real daphne servers on the test database (the end-to-end fixtures), for these tests too."""

from tests.e2e.conftest import daphne, daphne_factory  # noqa: F401
