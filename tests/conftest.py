from hypothesis import HealthCheck, settings

from hostbus.testing.pytest_plugin import in_ci

# The `fleet` fixture: the CLI through click's runner on the in-memory broker.
pytest_plugins = ["tests.cli_fleet"]

# CI runs the fuzz tests harder than a developer's quick run.
settings.register_profile("ci", max_examples=10000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile("ci" if in_ci() else "dev")
