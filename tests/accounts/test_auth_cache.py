# ruff: noqa: F811 (the fixtures imported from test_oidc are used as arguments)
"""What a turn's authentication may reuse, and what it must look up every time
(docs/api.md#authentication): a verified bearer token is not verified again while its key
is held and it has not expired; its user, and every API token, is read on every request,
so a deleted token or a deactivated user is refused at once."""

from __future__ import annotations

import time

import jwt
import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from accounts import access_tokens
from accounts.errors import AuthenticationError
from accounts.jwks import reset_jwks_cache
from tests import factories
from tests.accounts.test_oidc import (  # noqa: F401 (fixtures)
    auth_header,
    oidc_settings,
    oidc_user,
    provider,
    verify_access_token,
)


@pytest.fixture
def decodes(monkeypatch):
    """How many times a token's signature was checked."""
    calls = [0]
    real = jwt.decode

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(access_tokens.jwt, "decode", counting)
    return calls


@pytest.mark.django_db
def test_a_verified_token_is_not_verified_again_but_its_user_is_read(
    oidc_settings, provider, decodes
):
    token = provider.issue(sub="repeat")
    assert verify_access_token(token)["sub"] == "repeat"  # fetches the key, verifies
    first = auth_header(f"Bearer {token}")
    assert auth_header(f"Bearer {token}") == first == oidc_user("repeat")
    assert decodes[0] == 1
    # The user is looked up every time: deactivated (without signals), refused at once.
    get_user_model().objects.filter(pk=oidc_user("repeat").pk).update(is_active=False)
    with pytest.raises(AuthenticationError):
        auth_header(f"Bearer {token}")


@pytest.mark.django_db
def test_a_remembered_token_is_checked_again_when_its_key_is_gone_or_it_expired(
    oidc_settings, provider, decodes
):
    oidc_settings.OIDC_LEEWAY_SECONDS = 0
    exp = int(time.time()) + 3
    token = provider.issue(sub="short", exp=exp)
    verify_access_token(token)
    reset_jwks_cache()  # the key set is fetched again: a new key object
    verify_access_token(token)
    assert decodes[0] == 2
    while time.time() <= exp + 0.5:  # remembered for 60 s, but past its exp now
        time.sleep(0.2)
    with pytest.raises(AuthenticationError) as refused:
        verify_access_token(token)
    assert refused.value.reason == "expired"


@pytest.mark.django_db
def test_no_reuse_with_the_cache_off(oidc_settings, provider, decodes):
    oidc_settings.OIDC_TOKEN_CACHE_SECONDS = 0
    token = provider.issue(sub="fresh")
    verify_access_token(token)
    verify_access_token(token)
    assert decodes[0] == 2


@pytest.mark.django_db
def test_a_deleted_api_token_or_deactivated_user_is_refused_at_once():
    user = factories.make_user("erin")
    key = factories.make_token(user)
    assert auth_header(f"Token {key}") == user
    Token.objects.filter(key=key).delete()
    with pytest.raises(AuthenticationError, match="Invalid token"):
        auth_header(f"Token {key}")
    key = factories.make_token(user)
    assert auth_header(f"Token {key}") == user
    get_user_model().objects.filter(pk=user.pk).update(is_active=False)
    with pytest.raises(AuthenticationError, match="inactive"):
        auth_header(f"Token {key}")
