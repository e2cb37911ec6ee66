from tests.fakes.fixtures import (  # noqa: F401  (fixtures)
    anthropic_server,
    anthropic_settings,
    openai_server,
    openai_settings,
)
