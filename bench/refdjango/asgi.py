"""``daphne bench.refdjango.asgi:application``: plain Django ASGI, no channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.refdjango.settings")
application = get_asgi_application()
