"""Training: ``train(cfg, run_dir)`` and the ``Trainer`` behind it (the one training path of the library),
one step as a function (``step``), batches (``batches``), optimizer and schedule (``optim``), checkpoints
(``snapshot``: save and exact resume; ``resume``: the random states and the checks a resume needs), starting
from another checkpoint's weights (``init``: ``--init``), divergence / out-of-memory / signal handling
(``guard``) and data parallelism (``distributed``: DDP, FSDP2 under torchrun:
``torchrun --nproc_per_node N -m loopmdm.cli train ...``)."""

from .batches import BatchStream
from .guard import SecondSignal, TrainingDiverged, signal_exit_code
from .init import init_run_config
from .optim import lr_lambda
from .snapshot import check_fresh_run_dir
from .trainer import Trainer, TrainResult, train

__all__ = [
    "train",
    "Trainer",
    "TrainResult",
    "TrainingDiverged",
    "check_fresh_run_dir",
    "BatchStream",
    "lr_lambda",
    "init_run_config",
    "SecondSignal",
    "signal_exit_code",
]
