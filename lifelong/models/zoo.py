"""Imports every model module so each registers itself."""
from lifelong.models import cain, dien, din, dsin, eta, lic, sdim, sim_hard, sim_soft, twin  # noqa: F401
