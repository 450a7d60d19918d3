import os

from hypothesis import HealthCheck, settings

# CI runs the fuzz tests harder than a developer's quick run.
settings.register_profile("ci", max_examples=10000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile("ci" if os.environ.get("CI", "").lower() in ("1", "true") else "dev")
