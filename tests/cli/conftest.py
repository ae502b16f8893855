from tests.cli.harness import api_env, api_server  # noqa: F401  (fixtures for tests/cli)
