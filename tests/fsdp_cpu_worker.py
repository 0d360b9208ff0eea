"""torchrun worker for the CPU FSDP test: `train` exactly as `train --gpus N --fsdp` starts it, with one switch
flipped so that accelerate shards on CPU.

accelerate enables its FSDP plugin only for accelerator devices: on CPU its state is MULTI_CPU and the plugin is
dropped (accelerate/state.py, AcceleratorState.__init__: FSDP is set only in the MULTI_GPU/NPU/XPU/... branch), so
the Trainer would run DDP and ``babeltune.trainer.fsdp.check_trainer`` refuses the run. torch's FSDP2
(``fully_shard``) itself runs on CPU with gloo. This worker turns a MULTI_CPU state that was given an FSDP plugin
into an FSDP state, as the GPU branch does; everything else (babeltune, the HF Trainer, accelerate's
``fsdp2_prepare_model``, sharded checkpoints through torch.distributed.checkpoint) runs unchanged.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/fsdp_cpu_worker.py --config ... --fsdp
"""

from __future__ import annotations

import sys


def allow_fsdp_on_cpu() -> None:
    from accelerate import state as accelerate_state
    from accelerate.utils import DistributedType

    original = accelerate_state.AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            accelerate_state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    accelerate_state.AcceleratorState.__init__ = init


if __name__ == "__main__":
    allow_fsdp_on_cpu()
    from babeltune.trainer.cli import main

    main(sys.argv[1:])
