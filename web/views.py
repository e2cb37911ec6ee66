"""The chat page and the session login around it (docs/api.md#the-chat-page).

The page is a static shell: the template renders the layout and loads
``web/chat.js``, which talks to the public API only (``/api/v1/...``) with the session
cookie and the CSRF token. Nothing about contexts, messages or flows is rendered on the
server, so the page is an honest reference client.
"""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie

from accounts.throttling import login_throttled
from web.csp import content_security_policy


@content_security_policy
@never_cache
@login_required
@ensure_csrf_cookie
def chat_page(request: HttpRequest) -> HttpResponse:
    """GET /: the chat page (anonymous visitors are sent to the login page).

    ``ensure_csrf_cookie`` makes sure the ``csrftoken`` cookie exists: the page's
    ``fetch`` writes send it back as ``X-CSRFToken`` (DRF's session authentication and
    the streaming views enforce CSRF on writes).
    """
    return render(request, "web/chat.html")


#: GET shows the form, POST logs in (Django's own view, redirect_authenticated_user so a
#: logged-in visitor is not shown the form again).
#: Throttled: wrong passwords count per client address and per username (429 past
#: ``AUTH_FAILURES_PER_MINUTE``, accounts.throttling).
login_view = content_security_policy(
    login_throttled(auth_views.LoginView.as_view(redirect_authenticated_user=True))
)

#: POST only (Django 5): the page's "Log out" button is a small form with the CSRF token.
logout_view = content_security_policy(auth_views.LogoutView.as_view())
