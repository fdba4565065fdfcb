"""Shared test settings: hypothesis profiles.

``ci`` (the default) keeps the whole suite within a few minutes on a 2-core machine;
``HYPOTHESIS_PROFILE=long`` runs many more examples for a soak. Deadlines are off because a
first example may compile kernels (0.1-0.2 s each) that later ones fetch from the cache.
"""

import os

from hypothesis import HealthCheck, settings

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("ci", max_examples=20, **_COMMON)
settings.register_profile("long", max_examples=400, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
