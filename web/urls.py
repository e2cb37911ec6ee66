"""The chat page (being written)."""

urlpatterns: list = []
