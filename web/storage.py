"""The static files storage the chat page wants in production.

WhiteNoise's manifest storage, with Django's rewriting of ES module imports turned on:
``chat.js`` imports ``./api.js`` and ``./sse.js``, and with this flag the hashed
``chat.<hash>.js`` imports ``./api.<hash>.js`` (cacheable forever, never stale) instead
of the unhashed names. Use it as ``STORAGES["staticfiles"]["BACKEND"]``.
"""

from whitenoise.storage import CompressedManifestStaticFilesStorage


class ManifestStaticStorage(CompressedManifestStaticFilesStorage):
    support_js_module_import_aggregation = True
