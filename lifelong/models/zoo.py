"""Imports every model module so each registers itself."""
from lifelong.models import din, sim_hard  # noqa: F401
