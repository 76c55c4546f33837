"""segsweep's shipped Hydra configs. This folder is packaged as ``segsweep.conf`` (through the link
``src/segsweep/conf``) so an installed segsweep finds them with ``pkg://segsweep.conf``."""
