"""The study as three commands: ``prepare`` task manifests, ``batch`` them per backend, read ``summary.csv``.

``manifests`` builds and validates task lists from the prompt lists shipped in ``suppresseot/data/study``;
``pairs`` says which (task, approach) pairs a batch runs (SuppressEOT, its ablations, the baselines);
``batch`` runs them resumably, one run directory per pair; ``memory`` samples NVML device memory.
"""
from .batch import BatchOptions, run_batch, select_tasks
from .manifests import SETS, STUDY_SETS, Manifest, Task, load_manifest
from .memory import MemorySampler
from .pairs import Pair, Plan, run_name

__all__ = ["BatchOptions", "run_batch", "select_tasks", "SETS", "STUDY_SETS", "Manifest", "Task", "load_manifest",
           "MemorySampler", "Pair", "Plan", "run_name"]
