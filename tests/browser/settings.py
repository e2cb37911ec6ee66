"""Settings of the daphne server the browser tests start: production-like static files.

The chat page must work with ``DJANGO_DEBUG`` off, where WhiteNoise serves only what
``collectstatic`` put in ``STATIC_ROOT`` through the hashed manifest. The tests run
``collectstatic`` into a temporary directory named by ``WEB_TEST_STATIC_ROOT``, with the
storage production should use (``web.storage.ManifestStaticStorage``: hashed names, ES
module imports rewritten to hashed names too).
"""

import os

from tests.settings import *  # noqa: F403
from tests.settings import STATIC_ROOT, STORAGES

STATIC_ROOT = os.environ.get("WEB_TEST_STATIC_ROOT", str(STATIC_ROOT))
STORAGES = {
    **STORAGES,
    "staticfiles": {"BACKEND": "web.storage.ManifestStaticStorage"},
}
DEBUG = False
