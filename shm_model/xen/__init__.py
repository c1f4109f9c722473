"""Models of Xen subsystems, one package each, laid out as Xen lays its sources out.

- :mod:`shm_model.xen.vpci`: vPCI (xen/drivers/vpci/, xen/drivers/passthrough/pci.c):
  device removal racing deferred BAR mapping, one module per design (seed 001).
"""
