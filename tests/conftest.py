import os

# The CLI tests call transformer.cli.main in this process: keep glibc's malloc defaults for the whole
# session (npgrad.retain_freed_memory has its own subprocess test), so results never depend on test order.
os.environ.setdefault("TRANSFORMER_RETAIN_MEMORY", "0")

from hypothesis import HealthCheck, settings

# Fast by default (the whole suite must stay under a few minutes on 2 cores);
# HYPOTHESIS_PROFILE=thorough runs many more examples.
settings.register_profile(
    "default",
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
