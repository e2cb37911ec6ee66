"""Settings for the chat service, read once from the environment (docs/api.md#settings).

Every setting docs/api.md lists is an environment variable read here through
django-environ; nothing else in the project reads ``os.environ``.
"""

from decimal import Decimal
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

# --- Django core ---------------------------------------------------------------------------------
DEBUG = env.bool("DJANGO_DEBUG", default=False)
# Public, so only for DJANGO_DEBUG on: with it off, no key (or this one) refuses to start
# (migrate, check and daphne alike). `make run` makes a random local key in .run/.
_DEV_SECRET_KEY = "django-insecure-dev-key-change-me-in-production-0123456789abcdef"
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="") or (_DEV_SECRET_KEY if DEBUG else "")
if not DEBUG and SECRET_KEY == "":
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is not set and DJANGO_DEBUG is off: set DJANGO_SECRET_KEY to a "
        'long random secret (e.g. the output of python -c "import secrets; '
        'print(secrets.token_urlsafe(50))"), kept out of the repository, the same for every '
        "process of the service; or set DJANGO_DEBUG=true for local development only."
    )
if not DEBUG and SECRET_KEY == _DEV_SECRET_KEY:
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is the public development key and DJANGO_DEBUG is off: set "
        "DJANGO_SECRET_KEY to a long random secret of your own."
    )
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "corsheaders",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from STATIC_ROOT, not a CDN
    "channels",
    "mozilla_django_oidc",
    "core",  # errors, database units, HTTP helpers, logging, metrics, deploy checks
    "accounts",
    "ai",
    "conversations",
    "flows",
    "webhooks",
    "web",
]

MIDDLEWARE = [
    "core.middleware.RequestIdMiddleware",
    # A bearer token's signing keys fetched in the event loop, before any view runs.
    "accounts.middleware.BearerKeysMiddleware",
    # Django's stock middleware, with their hooks run in the event loop instead of a
    # thread each (core/async_middleware.py).
    "core.async_middleware.AsyncSecurityMiddleware",
    "core.middleware.AsyncWhiteNoiseMiddleware",
    "core.async_middleware.AsyncSessionMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "core.async_middleware.AsyncCommonMiddleware",
    "core.async_middleware.AsyncCsrfViewMiddleware",
    "core.async_middleware.AsyncAuthenticationMiddleware",
    "core.async_middleware.AsyncMessageMiddleware",
    "core.async_middleware.AsyncXFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatproject.urls"
ASGI_APPLICATION = "chatproject.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ------------------------------------------------------------------------------------
# SQLite by default; DATABASE_URL=postgres://... for PostgreSQL. Never ATOMIC_REQUESTS:
# Django refuses it with async views, and every transactional unit is a service function.
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.sqlite3":
    _db.setdefault("OPTIONS", {}).update(
        {
            # Writers queue instead of failing; IMMEDIATE takes the write lock at BEGIN so
            # that quota reservations serialize instead of deadlocking on upgrade.
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # A file (not :memory:) so that a daphne process started by the tests shares it.
    _db.setdefault("TEST", {})["NAME"] = env.str(
        "TEST_SQLITE_NAME", default=str(BASE_DIR / ".test-db.sqlite3")
    )
else:
    _db["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
    _db["CONN_HEALTH_CHECKS"] = True
    _db.setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channels ------------------------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "capacity": 1000, "expiry": 60},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Auth ----------------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

# OIDC (docs/api.md#authentication). Bearer auth is on when the issuer and the JWKS are set.
OIDC_OP_ISSUER = env.str("OIDC_OP_ISSUER", default="")
OIDC_OP_JWKS_ENDPOINT = env.str("OIDC_OP_JWKS_ENDPOINT", default="")
OIDC_API_AUDIENCE = env.str("OIDC_API_AUDIENCE", default="")
OIDC_RP_CLIENT_ID = env.str("OIDC_RP_CLIENT_ID", default="")
OIDC_RP_CLIENT_SECRET = env.str("OIDC_RP_CLIENT_SECRET", default="")
OIDC_OP_AUTHORIZATION_ENDPOINT = env.str("OIDC_OP_AUTHORIZATION_ENDPOINT", default="")
OIDC_OP_TOKEN_ENDPOINT = env.str("OIDC_OP_TOKEN_ENDPOINT", default="")
OIDC_OP_USER_ENDPOINT = env.str("OIDC_OP_USER_ENDPOINT", default="")
OIDC_RP_SIGN_ALGO = "RS256"
OIDC_JWKS_CACHE_SECONDS = env.int("OIDC_JWKS_CACHE_SECONDS", default=300)
OIDC_JWKS_TIMEOUT_SECONDS = env.float("OIDC_JWKS_TIMEOUT_SECONDS", default=3.0)
# Clock skew tolerated for a token's exp, nbf and iat.
OIDC_LEEWAY_SECONDS = env.int("OIDC_LEEWAY_SECONDS", default=30)
# A bearer token verified this recently (same key held, before its exp) is not verified
# again; the user it names is looked up every time. 0: verify every request.
OIDC_TOKEN_CACHE_SECONDS = env.int("OIDC_TOKEN_CACHE_SECONDS", default=60)
OIDC_BEARER_ENABLED = bool(OIDC_OP_ISSUER and OIDC_OP_JWKS_ENDPOINT)
OIDC_BROWSER_LOGIN_ENABLED = bool(
    OIDC_RP_CLIENT_ID and OIDC_OP_AUTHORIZATION_ENDPOINT and OIDC_OP_TOKEN_ENDPOINT
)
OIDC_DRF_AUTH_BACKEND = "accounts.backends.AccessTokenBackend"
if OIDC_BROWSER_LOGIN_ENABLED:
    AUTHENTICATION_BACKENDS.append("accounts.backends.AccessTokenBackend")

# --- REST framework ------------------------------------------------------------------------------
# One path for every transport (accounts.services.authenticate): Token and Bearer
# credentials, then the Django session (with CSRF on writes).
_authentication_classes = [
    "accounts.drf.CredentialsAuthentication",
    "rest_framework.authentication.SessionAuthentication",
]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": _authentication_classes,
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": env.int("API_PAGE_SIZE", default=50),
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["core.parsers.SafeJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "core.openapi.ErrorResponsesAutoSchema",
    "EXCEPTION_HANDLER": "core.exception_handler.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.AnonRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"anon": env.str("API_ANON_THROTTLE", default="60/min")},
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Chat service API",
    "DESCRIPTION": "Streaming AI chat with persistence, quota and flows (see docs/).",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI from drf-spectacular-sidecar's static files (same origin, under the page's
    # CSP), never from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

# Failed authentications (tokens, passwords) per client address, and failed passwords per
# username, a minute before 429 (accounts.throttling).
AUTH_FAILURES_PER_MINUTE = env.int("AUTH_FAILURES_PER_MINUTE", default=30)

# Throttle counters: per process, or shared through Redis.
CACHES = (
    {"default": {"BACKEND": "core.cache.PooledRedisCache", "LOCATION": REDIS_URL}}
    if REDIS_URL
    else {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
)

# --- CORS, security, static ----------------------------------------------------------------------
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])
CORS_EXPOSE_HEADERS = ["Retry-After", "X-Request-Id"]
CORS_ALLOW_HEADERS = [
    "accept",
    "authorization",
    "content-type",
    "last-event-id",
    "x-csrftoken",
    "x-requested-with",
]

SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
USE_X_FORWARDED_HOST = env.bool("DJANGO_USE_X_FORWARDED_HOST", default=False)
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=False)
# Probes and the scraper talk to daphne's private port in plain HTTP (docs/operations.md).
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = SECURE_HSTS_SECONDS > 0
SESSION_COOKIE_SECURE = env.bool("DJANGO_SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("DJANGO_CSRF_COOKIE_SECURE", default=False)
SESSION_COOKIE_HTTPONLY = True
# Django's deploy checks look for the stock middleware by dotted path and miss the Async*
# subclasses in MIDDLEWARE: core/checks.py finds them by class and reports what
# Django would (a middleware really missing as core.W001-W003).
SILENCED_SYSTEM_CHECKS = ["security.W001", "security.W002", "security.W003"]
# The request body is read by Django; the chat body limit is checked before parsing.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DJANGO_DATA_UPLOAD_MAX_MEMORY_SIZE", default=2_621_440)

STATIC_URL = "static/"
# Where collectstatic puts the files the server serves (WhiteNoise) with DJANGO_DEBUG off.
STATIC_ROOT = Path(env.str("DJANGO_STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # WhiteNoise's compressed manifest storage, rewriting ES-module imports to hashed names.
    "staticfiles": {"BACKEND": "web.storage.ManifestStaticStorage"},
}
if DEBUG:
    STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- AI providers --------------------------------------------------------------------------------
AI_PROVIDER = env.str("AI_PROVIDER", default="mock").strip().lower()
AI_MODEL = env.str("AI_MODEL", default="")
OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="")
ANTHROPIC_API_KEY = env.str("ANTHROPIC_API_KEY", default="")
ANTHROPIC_BASE_URL = env.str("ANTHROPIC_BASE_URL", default="")
AI_TIMEOUT_SECONDS = env.float("AI_TIMEOUT_SECONDS", default=30.0)
AI_MAX_OUTPUT_TOKENS = env.int("AI_MAX_OUTPUT_TOKENS", default=1024)
AI_MAX_RETRIES = env.int("AI_MAX_RETRIES", default=2)
# The SDKs' HTTP client: "aiohttp" (their DefaultAioHttpClient, half the CPU per streamed
# chunk) or "httpx" (their default httpx2 client). See ai/providers/_clients.py.
AI_HTTP_CLIENT = env.str("AI_HTTP_CLIENT", default="aiohttp").strip().lower()
# Anthropic prompt caching: cache_control breakpoints on the system prompt and the stable
# history prefix (see docs/api.md#settings). OpenAI caches prompts by itself.
AI_PROMPT_CACHE = env.bool("AI_PROMPT_CACHE", default=True)
MOCK_TOKEN_DELAY_MS = env.float("MOCK_TOKEN_DELAY_MS", default=30.0)
# Routing and failover (docs/api.md#routing): "provider:model" lists, comma separated.
# AI_ROUTES unset: the one AI_PROVIDER / AI_MODEL route. AI_ALLOWED_MODELS unset: the
# routes. AI_SYSTEM_ROUTE unset: the first route (flow extraction and titles).
AI_ROUTES = env.list("AI_ROUTES", default=[])
AI_ALLOWED_MODELS = env.list("AI_ALLOWED_MODELS", default=[])
AI_SYSTEM_ROUTE = env.str("AI_SYSTEM_ROUTE", default="").strip()
# A route that failed this many times in a row is skipped for the cooldown (ai/breaker.py).
AI_BREAKER_FAILURES = env.int("AI_BREAKER_FAILURES", default=5)
AI_BREAKER_COOLDOWN_SECONDS = env.float("AI_BREAKER_COOLDOWN_SECONDS", default=30.0)

# --- Chat ----------------------------------------------------------------------------------------
CHAT_HISTORY_LIMIT = env.int("CHAT_HISTORY_LIMIT", default=10)
CHAT_MAX_CONCURRENT_STREAMS = env.int("CHAT_MAX_CONCURRENT_STREAMS", default=3)
# Open WebSockets per user, and resumed streams per user, in one process.
# Load shedding (docs/api.md#load-shedding): a process holding this many turns, or whose
# next turn would wait longer than this to start, answers 503 server_busy; 0 is off.
CHAT_MAX_PROCESS_STREAMS = env.int("CHAT_MAX_PROCESS_STREAMS", default=200)
CHAT_BUSY_WAIT_SECONDS = env.float("CHAT_BUSY_WAIT_SECONDS", default=5.0)
# Flow extractions running at once in a process; a turn ending past it skips its own.
CHAT_MAX_PROCESS_EXTRACTIONS = env.int("CHAT_MAX_PROCESS_EXTRACTIONS", default=32)
CHAT_MAX_SOCKETS = env.int("CHAT_MAX_SOCKETS", default=10)
CHAT_MAX_FOLLOWERS = env.int("CHAT_MAX_FOLLOWERS", default=10)
CHAT_STREAM_TIMEOUT_SECONDS = env.float("CHAT_STREAM_TIMEOUT_SECONDS", default=120.0)
CHAT_KEEPALIVE_SECONDS = env.float("CHAT_KEEPALIVE_SECONDS", default=15.0)
CHAT_CANCEL_ON_DISCONNECT = env.bool("CHAT_CANCEL_ON_DISCONNECT", default=False)
CHAT_CHECKPOINT_SECONDS = env.float("CHAT_CHECKPOINT_SECONDS", default=1.0)
CHAT_MAX_BODY_BYTES = env.int("CHAT_MAX_BODY_BYTES", default=512_000)
# Any request body past this is refused at the ASGI level, before Django reads it.
MAX_REQUEST_BODY_BYTES = env.int(
    "MAX_REQUEST_BODY_BYTES", default=max(CHAT_MAX_BODY_BYTES, DATA_UPLOAD_MAX_MEMORY_SIZE)
)
CHAT_SSE_RETRY_MS = env.int("CHAT_SSE_RETRY_MS", default=2000)
# A streaming reply whose process gave no heartbeat for this long is marked interrupted.
CHAT_STALE_SECONDS = env.float("CHAT_STALE_SECONDS", default=30.0)

# --- Quota and flows -----------------------------------------------------------------------------
QUOTA_PERIOD = env.str("QUOTA_PERIOD", default="day")
QUOTA_REQUESTS_LIMIT = env.int("QUOTA_REQUESTS_LIMIT", default=200)
QUOTA_TOKENS_LIMIT = env.int("QUOTA_TOKENS_LIMIT", default=500_000)
# New users' money limit per period, in the prices' currency (a decimal); unset: none.
QUOTA_COST_LIMIT = (
    Decimal(_cost_limit) if (_cost_limit := env.str("QUOTA_COST_LIMIT", default="")) else None
)
FLOWS_EXTRACTION_ENABLED = env.bool("FLOWS_EXTRACTION_ENABLED", default=True)
# Name a new conversation after its first reply (docs/api.md#titles).
CHAT_TITLES_ENABLED = env.bool("CHAT_TITLES_ENABLED", default=True)
# How long an Idempotency-Key holds its turn (docs/api.md#idempotency).
IDEMPOTENCY_KEY_TTL_SECONDS = env.int("IDEMPOTENCY_KEY_TTL_SECONDS", default=24 * 3600)

# --- Webhooks (docs/api.md#webhooks, docs/operations.md#webhooks) ------------------------------
# Subscription URLs (and the addresses they resolve to at delivery) on loopback, private,
# link-local, multicast or reserved networks are refused unless this is true.
WEBHOOK_ALLOW_PRIVATE_URLS = env.bool("WEBHOOK_ALLOW_PRIVATE_URLS", default=False)
# One POST's limit, connecting included; must be shorter than the lease.
WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=10.0)
# How long a process holds a claimed delivery; a process that dies mid-delivery loses it
# to another process after this.
WEBHOOK_LEASE_SECONDS = env.float("WEBHOOK_LEASE_SECONDS", default=30.0)
# A delivery that still fails this long after its event is given up (status failed).
WEBHOOK_MAX_AGE_SECONDS = env.float("WEBHOOK_MAX_AGE_SECONDS", default=86_400.0)
# How often each process looks for due deliveries, and for flows that reached their date.
WEBHOOK_POLL_SECONDS = env.float("WEBHOOK_POLL_SECONDS", default=1.0)
WEBHOOK_DUE_SCAN_SECONDS = env.float("WEBHOOK_DUE_SCAN_SECONDS", default=15.0)
# Waits after the 1st, 2nd, ... failed attempt; the last one repeats until the max age.
WEBHOOK_RETRY_SCHEDULE = [
    float(value)
    for value in env.list("WEBHOOK_RETRY_SCHEDULE", default=["5", "30", "120", "600", "3600"])
]
# Delivered and given-up deliveries (and their attempts) are deleted after this many days.
WEBHOOK_RETENTION_DAYS = env.int("WEBHOOK_RETENTION_DAYS", default=30)
# Deliveries one process sends at the same time.
WEBHOOK_CONCURRENCY = env.int("WEBHOOK_CONCURRENCY", default=10)

# --- Operations ----------------------------------------------------------------------------------
METRICS_ALLOWED_IPS = env.list("METRICS_ALLOWED_IPS", default=["127.0.0.1", "::1"])
LOG_FORMAT = env.str("LOG_FORMAT", default="text" if DEBUG else "json")
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "core.logging.RequestIdFilter"}},
    "formatters": {
        "json": {"()": "core.logging.JsonFormatter"},
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT if LOG_FORMAT in ("json", "text") else "json",
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        "httpcore2": {"level": "WARNING"},
        "openai": {"level": "WARNING"},
        "anthropic": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
    },
}

# Threads (and so database connections) that streaming turns use for their DB units.
# SQLite has one writer at a time and nearly every unit of a turn writes: a second thread
# only queues on its lock (sleeping retries, a page cache each) and fights the event loop
# for the GIL, so 1 there (18% less CPU per short turn at 50 concurrent turns than with 2,
# bench/run.py --quick, A/B in one sitting); 8 on PostgreSQL.
DB_THREADS = env.int(
    "DB_THREADS", default=1 if _db["ENGINE"] == "django.db.backends.sqlite3" else 8
)

# How long (ms) a thread may hold the GIL while another waits for it (Python's default: 5).
# A server process runs its event loop and its database threads: a database thread that
# gave the GIL up for a statement waited up to that long to get it back from a busy loop,
# once per statement (the "convoy effect"). At 1 ms, 200 turns at once on one process:
# 15% less CPU per token, time to first chunk p50 1.2 s against 1.6 s (bench/saturation.py,
# six rounds each, interleaved). Set by the ASGI module (core.startup.tune_interpreter);
# 0 leaves Python's default.
GIL_SWITCH_INTERVAL_MS = env.float("GIL_SWITCH_INTERVAL_MS", default=1.0)
