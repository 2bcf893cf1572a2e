"""``--executor`` and the ``--slurm-*`` flags of every grid command (``treemdp sweep``, ``treemdp lab run|bon``)."""

from __future__ import annotations

import argparse

from ..executors import SlurmOptions, check_spec

EXECUTOR_HELP = ("where the batches run: local (default: this process or --workers processes), "
                 "dask:local (a Dask LocalCluster of --workers processes), dask:tcp://HOST:PORT (a running "
                 "Dask scheduler), slurm (one SLURM job per batch through submitit) or slurm:local (the same "
                 "jobs as local processes). Dask needs pip install 'treemdp[dask]', SLURM 'treemdp[slurm]'. "
                 "Each batch writes its own run folders: rerun the same command to resume")


def add_executor_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--executor`` and the SLURM resource flags (one group)."""
    group = parser.add_argument_group("where the grid runs")
    group.add_argument("--executor", default="local", metavar="SPEC", help=EXECUTOR_HELP)
    defaults = SlurmOptions()
    group.add_argument("--slurm-partition", metavar="NAME", help="SLURM partition (default: the cluster's)")
    group.add_argument("--slurm-time", type=int, default=defaults.time, metavar="MINUTES",
                       help=f"time limit of each SLURM job in minutes (default {defaults.time})")
    group.add_argument("--slurm-gpus", type=int, default=defaults.gpus, metavar="N",
                       help=f"GPUs per SLURM job (default {defaults.gpus})")
    group.add_argument("--slurm-cpus", type=int, default=defaults.cpus, metavar="N",
                       help=f"CPUs per SLURM job, also its torch threads (default {defaults.cpus})")
    group.add_argument("--slurm-mem-gb", type=float, metavar="GB", help="memory per SLURM job (default: the cluster's)")
    group.add_argument("--slurm-folder", default=defaults.folder, metavar="DIR",
                       help=f"submitit's job files and logs, %%j = job id (default {defaults.folder.replace('%', '%%')})")


def executor_arguments(args) -> dict:
    """``executor=`` and ``slurm=`` for :func:`treemdp.grid.run_grid` from the parsed flags (checked)."""
    spec = check_spec(args.executor)
    slurm = SlurmOptions(partition=args.slurm_partition, time=args.slurm_time, gpus=args.slurm_gpus,
                         cpus=args.slurm_cpus, mem_gb=args.slurm_mem_gb, folder=args.slurm_folder).validate()
    return {"executor": spec, "slurm": slurm}
