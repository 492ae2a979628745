"""``python -m loopmdm.cli ...`` is the ``loopmdm`` command (and the torchrun entry point:
``torchrun --standalone --nproc_per_node N -m loopmdm.cli train --out DIR ...``)."""

from . import main

main()
