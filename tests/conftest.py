"""Test setup: 8 CPU devices (to exercise sharding) and parsed absl flags."""

import jax
from absl import flags

jax.config.update("jax_num_cpu_devices", 8)
flags.FLAGS.mark_as_parsed()  # Grain reads absl flags.
