"""Test setup: 4 fake CPU devices, set before anything initialises jax."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import chex  # noqa: E402

chex.set_n_cpu_devices(4)
