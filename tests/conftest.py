"""Shared test set-up: 8 host CPU devices (for axis_name tests), x64 off, and the strictest
numpy semantics JAX offers, so that the library is checked to run unchanged under them."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
# Every loss runs unchanged under strict dtype promotion and with implicit rank promotion
# refused (DESIGN section 3); tests that need to promote do it explicitly.
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.load_profile("ci")


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture(scope="session")
def devices():
  return jax.devices()
