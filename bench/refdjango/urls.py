from django.urls import path

from bench.refdjango.views import healthz, relay

urlpatterns = [path("relay", relay), path("healthz", healthz)]
