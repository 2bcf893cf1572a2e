"""``python tests/llm/fsdp_cpu.py ARGS`` = ``treemdp ARGS`` with accelerate's FSDP on CPU processes.

accelerate 1.15 turns ``ACCELERATE_USE_FSDP`` into FSDP only for GPU-type backends; on CPU
processes (gloo) it silently falls back to DDP. torch's FSDP2 itself runs on CPU, so this shim
(for the tests only) flips that one decision after accelerate has set everything else up, and
the training loop then runs through accelerate's real FSDP2 code: sharded parameters, gathered
state dicts on save, gradient sync switched per micro-batch. Launch it with ``torchrun`` and
``ACCELERATE_USE_FSDP=true FSDP_VERSION=2``.
"""

import sys

import accelerate.state
from accelerate.utils import DistributedType

_init = accelerate.state.AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    plugin = kwargs.get("fsdp_plugin")
    if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        # both shared states: each later AcceleratorState() copies PartialState's over its own
        accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = plugin


accelerate.state.AcceleratorState.__init__ = _init_with_fsdp_on_cpu

if __name__ == "__main__":
    from treemdp.cli import main
    sys.exit(main(sys.argv[1:]))
