"""Test settings: the real settings with offline, fast, deterministic defaults."""

import os

os.environ.setdefault("AI_PROVIDER", "mock")
os.environ.setdefault("MOCK_TOKEN_DELAY_MS", "0")
os.environ.setdefault("LOG_FORMAT", "json")
os.environ.setdefault("DJANGO_SECRET_KEY", "test-secret-key-not-for-production-0123456789abcdef")

from chatproject.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES["staticfiles"] = {  # noqa: F405
    "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
}
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {"anon": "10000/min"}  # noqa: F405
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
AUTH_FAILURES_PER_MINUTE = 100_000
