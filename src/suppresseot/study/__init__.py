"""The study as three commands: ``prepare`` task manifests, ``batch`` them per backend, read ``summary.csv``.

``manifests`` builds and validates task lists from the prompt lists shipped in ``suppresseot/data/study``;
``batch`` runs them resumably, one run directory per task; ``memory`` samples NVML device memory.
"""
from .batch import BatchOptions, run_batch, select_tasks
from .manifests import SETS, STUDY_SETS, Manifest, Task, load_manifest
from .memory import MemorySampler

__all__ = ["BatchOptions", "run_batch", "select_tasks", "SETS", "STUDY_SETS", "Manifest", "Task", "load_manifest",
           "MemorySampler"]
