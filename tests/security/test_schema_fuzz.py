"""Fuzz the whole REST surface from its own OpenAPI schema with schemathesis.

Every operation of ``/api/v1/schema/`` is called in-process through Django's WSGI
application (the REST views are sync DRF views; the streaming endpoints are plain async
views that are not in the schema), authenticated with a DRF token as a user who has data
of every kind. Half of the cases aim their ``{id}`` at one of that user's real objects, so
PATCH and DELETE bodies reach the serializers and services, not only the 404 path; every
fifth case targets another user's object (which must answer 404). Schemathesis checks
every response: no 5xx, and status code, content type and body conform to the schema.
"""

from __future__ import annotations

import itertools
import os

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from conversations.models import Context, Message
from tests import factories
from tests.webhooks.conftest import make_subscription

pytestmark = pytest.mark.django_db(transaction=True)

# The schema as the running service serves it (the same generator behind /api/v1/schema/).
RAW_SCHEMA = SchemaGenerator().get_schema(request=None, public=True)
schema = schemathesis.openapi.from_dict(RAW_SCHEMA)
schema.app = get_wsgi_application()
# NUL characters are refused on purpose (DRF's ProhibitNullCharactersValidator: PostgreSQL
# cannot store them); tests/security/test_hostile_input.py checks that refusal directly.
schema.config.generation.update(allow_x00=False)

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "20"))

#: The ids a case may aim at, set per test by the ``owned_data`` fixture.
_targets: dict[str, dict[str, str]] = {}
_turn = itertools.count()


def _resource(path: str) -> str:
    """Which kind of object a path's ``{id}`` names."""
    return path.split("/")[3]  # /api/v1/<resource>/{id}/...


@schema.hook
def map_path_parameters(context, path_parameters):  # type: ignore[no-untyped-def]
    if not path_parameters or "id" not in path_parameters or not _targets:
        return path_parameters
    n = next(_turn)
    kind = _resource(context.operation.path)
    if n % 5 == 0:
        return {**path_parameters, "id": _targets["foreign"][kind]}
    if n % 2 == 0:
        return {**path_parameters, "id": _targets["own"][kind]}
    return path_parameters


def _sent_empty(value: object) -> bool:
    """A query value that goes on the wire as ``name=`` (``""``, ``{}``, ``[]``, null)."""
    if isinstance(value, list) and value:
        return _sent_empty(value[-1])  # Django's QueryDict.get answers the last value
    return value is None or (isinstance(value, str | list | dict) and not value)


def _objects(user, name):  # type: ignore[no-untyped-def]
    context = factories.make_context(user, name=name)
    conversation = factories.make_conversation(context, title="Trip")
    factories.make_message(conversation, role="user", content="I need to book a flight")
    reply = factories.make_message(
        conversation, role="assistant", content="Sure.", status="complete", finish_reason="stop"
    )
    flow = factories.make_flow(context, title="Book a flight", conversation=conversation)
    return {
        "contexts": str(context.id),
        "conversations": str(conversation.id),
        "messages": str(reply.id),
        "flows": str(flow.id),
        "webhooks": str(make_subscription(user).id),
    }


def _refused_webhook_url(response) -> bool:  # type: ignore[no-untyped-def]
    if response.status_code != 400 or "/api/v1/webhooks/" not in response.request.url:
        return False
    return set(response.json().get("errors", {})) == {"url"}


def _all_target_ids() -> set[str]:
    return {value for ids in _targets.values() for value in ids.values()}


@pytest.fixture
def owned_data(transactional_db, settings):  # type: ignore[no-untyped-def]
    # Webhook URLs are resolved and inner addresses refused (a 400 no schema can express;
    # tests/webhooks/test_api.py checks it): here any well-formed URL is taken, unresolved.
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = True
    alice = factories.make_user("alice")
    token = factories.make_token(alice)
    _targets["own"] = _objects(alice, "Work")
    factories.make_context(alice, name="Home")
    _targets["foreign"] = _objects(factories.make_user("mallory"), "Secret")
    yield {"Authorization": f"Token {token}"}
    _targets.clear()


def test_schema_covers_the_rest_surface():
    operations = {
        f"{method.upper()} {path}"
        for path, methods in RAW_SCHEMA["paths"].items()
        for method in methods
    }
    assert len(operations) >= 17, sorted(operations)
    for path, methods in RAW_SCHEMA["paths"].items():
        for method, operation in methods.items():
            responses = operation["responses"]
            assert "401" in responses, (method, path)
            if "{id}" in path:
                assert "404" in responses, (method, path)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_rest_api_conforms_to_its_schema(case, owned_data):  # type: ignore[no-untyped-def]
    excluded = []
    if any(_sent_empty(value) for value in (case.query or {}).values()):
        # An empty filter (``?context_id=``, ``?page=``) means "no filter", as DRF's own
        # pagination treats it: a deliberate leniency, not a violation worth a failure.
        excluded.append(negative_data_rejection)
    declared = {param["name"] for param in case.operation.definition.raw.get("parameters", [])}
    if set(case.query or {}) - declared:
        # An unknown query parameter is ignored, as DRF ignores it everywhere: leniency too.
        excluded.append(negative_data_rejection)
    if (case.path_parameters or {}).get("id") in _all_target_ids():
        # map_path_parameters put a real id in: what schemathesis generated as invalid is
        # no longer what is sent.
        excluded.append(negative_data_rejection)
    response = case.call(headers=owned_data)
    if _refused_webhook_url(response):
        # Django's URLValidator refuses more than the schema's ``format: uri`` says (a host
        # name over 253 characters, a label over 63...): a 400 naming only ``url``.
        excluded.append(positive_data_acceptance)
    case.validate_response(response, headers=owned_data, excluded_checks=excluded)
    if case.method == "POST" and response.status_code == 201:
        # Keep the next generated name free: a duplicate name is a (documented) 400 that no
        # schema can express.
        Context.objects.filter(pk=response.json()["id"]).delete()
    # A fuzzed request never leaves a reply streaming (REST never starts one).
    assert not Message.objects.filter(status="streaming").exists()
