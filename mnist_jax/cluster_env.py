"""Which multi-process environment this process runs in, from os.environ alone.

Kept apart from distributed.py, which imports JAX (seconds): the command line asks
before anything heavy loads (cli.refuse_if_busy).
"""

import glob
import importlib.util
import os


def int_env(name: str) -> int | None:
  value = os.environ.get(name)
  return int(value) if value and value.strip().isdigit() else None


def _on_tpu_vm() -> bool:
  """libtpu installed and TPU chips present (without starting any JAX backend)."""
  if importlib.util.find_spec("libtpu") is None:
    return False
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def detect_cluster() -> str | None:
  """Names the multi-process environment found in os.environ, or None.

  Returns:
    "slurm", "ompi", "tpu", "env" (only JAX_COORDINATOR_ADDRESS), or None for a plain
    single-process run.
  """
  env = os.environ
  slurm_vars = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                "SLURM_LOCALID")
  if all(v in env for v in slurm_vars) and (int_env("SLURM_NTASKS") or 1) > 1:
    return "slurm"
  if "OMPI_MCA_orte_hnp_uri" in env and (int_env("OMPI_COMM_WORLD_SIZE") or 1) > 1:
    return "ompi"
  if _on_tpu_vm():
    return "tpu"
  if env.get("JAX_COORDINATOR_ADDRESS"):  # Last: the clusters above also give the ids.
    return "env"
  return None
