"""The chat page at the site root, and Django's login and logout views."""

from django.urls import path

from web import views

urlpatterns = [
    path("", views.chat_page, name="chat"),
    path("accounts/login/", views.login_view, name="login"),
    path("accounts/logout/", views.logout_view, name="logout"),
]
