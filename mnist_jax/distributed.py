"""Several processes, one program: setting up `jax.distributed` from flags or a cluster.

JAX runs one Python process per host (or per GPU, as a launcher chooses); after
`jax.distributed.initialize` every process sees all devices of the job, and
`parallel.MeshPlacement` lays one `data` mesh over them. Each process feeds its own
rows of every global batch (`data.process_slice`), so `config.batch_size` is the
global batch.

`initialize` must run before anything touches a JAX device. It decides, in order:

1. Explicit arguments (`main`'s `--coordinator_address`, `--num_processes`,
   `--process_id`): used as given; JAX's cluster detection fills the ones left out.
2. The environment, read by `jax.distributed.initialize()` itself. It is called with no
   arguments when one of these is present:
   * `JAX_COORDINATOR_ADDRESS` (with `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID` read here,
     or a cluster below supplying them);
   * SLURM with more than one task (`srun`): `SLURM_JOB_ID`, `SLURM_STEP_NODELIST`,
     `SLURM_NTASKS`, `SLURM_PROCID`, `SLURM_LOCALID`; the coordinator is the first node
     of the step, on a port derived from the job id;
   * Open MPI with more than one rank (`mpirun`): `OMPI_MCA_orte_hnp_uri`,
     `OMPI_COMM_WORLD_SIZE`, `OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_LOCAL_RANK`;
   * a Cloud TPU VM (libtpu installed and TPU chips under /dev): JAX reads the worker
     number and worker hostnames from the GCE metadata server (GKE: `TPU_WORKER_ID`,
     `TPU_WORKER_HOSTNAMES`). A single-host TPU VM initializes as one process.
3. Otherwise: one process, nothing to set up.

With several processes, CPU collectives use gloo (TCP through the coordinator's key-value
store). The setting only concerns JAX's CPU client, so it is harmless on GPU and TPU.
"""

import logging as logging_lib
import os
import socket

from absl import logging
import jax
import jax.extend.backend

from mnist_jax.cluster_env import detect_cluster, int_env
from mnist_jax.errors import ConfigError


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Starts `jax.distributed` from explicit arguments or the environment, if needed.

  Call it once, before any JAX computation. Calling it again is a no-op.

  Args:
    coordinator_address: "host:port" of process 0's coordinator service, reachable from
      every process (e.g. "10.0.0.1:1234"; "127.0.0.1:PORT" for processes on one
      machine). None: from $JAX_COORDINATOR_ADDRESS or the cluster.
    num_processes: how many processes take part. None: $JAX_NUM_PROCESSES or the
      cluster.
    process_id: this process's index in [0, num_processes). None: $JAX_PROCESS_ID or
      the cluster.

  Returns:
    True if `jax.distributed` is initialized (now or before), False for a plain
    single-process run.

  Raises:
    ConfigError: inconsistent arguments (one line, naming the flag to fix).
  """
  if jax.distributed.is_initialized():
    return True
  if num_processes is None:
    num_processes = int_env("JAX_NUM_PROCESSES")
  if process_id is None:
    process_id = int_env("JAX_PROCESS_ID")
  explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
  cluster = detect_cluster()
  if not explicit and cluster is None:
    return False
  if num_processes is not None and num_processes < 1:
    raise ConfigError(f"--num_processes={num_processes} must be at least 1.")
  if process_id is not None and num_processes is not None and \
      not 0 <= process_id < num_processes:
    raise ConfigError(f"--process_id={process_id} must be in [0, {num_processes}) for "
                      f"--num_processes={num_processes}.")
  if cluster in (None, "env") and None in (num_processes, process_id):
    raise ConfigError("without SLURM, Open MPI or a TPU VM to read them from, "
                      "--coordinator_address, --num_processes and --process_id must "
                      "all be given (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
                      "JAX_PROCESS_ID).")
  if cluster is None and coordinator_address is None:
    raise ConfigError("--coordinator_address=HOST:PORT (process 0's address, reachable "
                      "from every process) is needed with --num_processes/--process_id.")
  if coordinator_address is not None:
    _check_address(coordinator_address)
  if num_processes is None or num_processes > 1:
    # Cross-process all-reduce on CPU needs an implementation; gloo needs nothing but
    # the coordinator. Must be set before the CPU client is created.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  start_backend()  # The log line below starts it anyway; a failure then says why.
  logging.info("jax.distributed: process %d of %d (%s), %d local / %d global devices.",
               jax.process_index(), jax.process_count(), cluster or "flags",
               jax.local_device_count(), jax.device_count())
  return True


def _check_address(address: str) -> None:
  """Raises ConfigError unless `address` is HOST:PORT with a host that resolves: JAX
  would fail with an IndexError without a port, or wait minutes for a host that does
  not exist."""
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ConfigError(f"--coordinator_address={address} must be HOST:PORT, e.g. "
                      f"10.0.0.1:1234 (process 0's address and a free port).")
  try:
    socket.getaddrinfo(host.strip("[]"), int(port))
  except (OSError, UnicodeError) as e:
    raise ConfigError(f"--coordinator_address={address}: cannot resolve host "
                      f"{host} ({e}); give process 0's address.") from None


MAX_AUTO_CPU_DEVICES = 8  # Beyond a few devices, shards get too small to gain; capped.


def set_cpu_devices(count: int | None) -> int | None:
  """Gives this (single) process's JAX CPU client `count` devices; before any JAX use.

  With several CPU devices, `parallel.CpuReplicas` splits each batch across them so that
  every core computes gradients (XLA runs these models' small matmuls on one core).
  It only concerns the CPU client: on a GPU or TPU the model runs there as before.

  Args:
    count: devices wanted, at most `usable_cores()`: more devices would only take
      turns on the cores, slower rather than faster, so a larger count is capped with
      a warning. None: one per logical CPU this process may run on
      (`os.sched_getaffinity`: hardware threads, so `taskset` limits it), at most
      `MAX_AUTO_CPU_DEVICES`, unless $JAX_NUM_CPU_DEVICES or XLA_FLAGS'
      --xla_force_host_platform_device_count already says.

  Returns:
    The count set, or None when left to $JAX_NUM_CPU_DEVICES / XLA_FLAGS.

  Raises:
    ConfigError: count < 1.
  """
  if count is not None and count < 1:
    raise ConfigError(f"--cpu_devices={count} must be at least 1 (1: no replicas).")
  for source, present in (
      ("XLA_FLAGS", "xla_force_host_platform_device_count" in
       os.environ.get("XLA_FLAGS", "")),
      ("JAX_NUM_CPU_DEVICES", bool(os.environ.get("JAX_NUM_CPU_DEVICES")))):
    if present:
      if count is not None:
        logging.warning("--cpu_devices=%d ignored: %s sets the CPU device count.",
                        count, source)
      return None
  cores = usable_cores()
  if count is None:
    count = min(cores, MAX_AUTO_CPU_DEVICES)
  elif count > cores:
    logging.warning("--cpu_devices=%d capped at %d, the CPU cores this process may "
                    "use: more devices than cores would only take turns on them "
                    "(slower).", count, cores)
    count = cores
  jax.config.update("jax_num_cpu_devices", count)
  return count


def usable_cores() -> int:
  """Logical CPUs this process may run on (`taskset` and cpusets limit it)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def start_backend() -> None:
  """Starts JAX's backend now, after `initialize` / `set_cpu_devices` (which must come
  first), so that a $JAX_PLATFORMS naming a platform this machine lacks ("cuda" on a
  CPU-only machine, a misspelt "gpux") is one line saying what exists, instead of
  JAX's bare AssertionError or RuntimeError at the first computation.

  Raises:
    ConfigError: JAX cannot start a platform that $JAX_PLATFORMS names. JAX is then
      left running on the platforms it finds by itself (the message lists them).
  """
  try:
    jax.devices()
  except (AssertionError, RuntimeError) as e:
    wanted = jax.config.jax_platforms
    if not wanted:
      raise  # A plugin failing on its own: JAX's message names it.
    reason = str(e).split(" (set JAX_PLATFORMS=", 1)[0] or "no such device found"
    raise ConfigError(
        f"JAX_PLATFORMS={wanted}: JAX cannot start it here ({reason}); platforms JAX "
        f"finds here: {_platforms_found()}. Unset JAX_PLATFORMS to use those, or set "
        f"JAX_PLATFORMS=cpu.") from None


def _platforms_found() -> str:
  """The platforms JAX starts when left to choose (JAX_PLATFORMS cleared); its
  suggestions about missing plugins are silenced, the error says enough."""
  bridge = logging_lib.getLogger("jax._src.xla_bridge")
  level = bridge.level
  bridge.setLevel(logging_lib.ERROR)
  try:
    jax.config.update("jax_platforms", "")
    return ", ".join(sorted(jax.extend.backend.backends()))
  except (AssertionError, RuntimeError):
    return "none"
  finally:
    bridge.setLevel(level)
