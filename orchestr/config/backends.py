"""Schemas of the scheduler backends (`launch.slurm`, `launch.ray`, `launch.kubernetes`).

`launch.backend` picks where the plan's processes run; each backend reads only its own section.
Every option has a default that works on the single-machine clusters `scripts/setup_slurm.sh`
and `scripts/setup_ray.sh` bring up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# launch.backend values; None keeps each node's own `transport` (local | ssh)
BACKEND_NAMES = ("local", "ssh", "slurm", "ray", "kubernetes")


@dataclass
class SlurmConfig:
    """Each service becomes one `sbatch` job; options map to sbatch flags."""

    partition: str | None = None  # --partition; None: the cluster's default partition
    account: str | None = None  # --account
    qos: str | None = None  # --qos
    time_limit: str | None = None  # --time (e.g. "1-00:00:00"); None: the partition's limit
    # --gres for a worker with GPUs; {n} is its GPU count (len(gpus) or the model's num_gpus)
    gres: str = "gpu:{n}"
    cpus_per_task: int | None = None  # --cpus-per-task
    mem: str | None = None  # --mem (e.g. "16G")
    # node names (Slurm's) per cluster node key, e.g. {node-01: gpu-node-17}: --nodelist
    nodelist: dict[str, str] = field(default_factory=dict)
    job_name_prefix: str = "orchestr"  # jobs are named <prefix>-<process name>
    extra_args: list[str] = field(default_factory=list)  # appended to every sbatch line
    submit_timeout_s: float = 300.0  # how long a job may stay pending before launch gives up


@dataclass
class RayBackendConfig:
    """Each service becomes a detached Ray actor that runs its command line."""

    address: str = "auto"  # the Ray cluster (`ray start` head's host:port, or "auto")
    namespace: str = "orchestr"
    # a worker is pinned to the Ray node that advertises this custom resource; {node} is the
    # worker's cluster node key (`ray start --resources='{"<node>": 100}'`)
    node_resource: str = "{node}"
    num_cpus: float = 1.0  # per service actor
    # extra custom resources every actor requests, e.g. {accelerator_type:A100: 0.01}
    resources: dict[str, float] = field(default_factory=dict)
    # Ray runtime env of the actors (env_vars, working_dir, pip ...). Visible in Ray's
    # dashboard: never secrets here (they travel as a 0600 file).
    runtime_env: dict[str, Any] = field(default_factory=dict)
    max_restarts: int | None = None  # None: each service's restart.max_restarts (-1 = always)


@dataclass
class KubernetesConfig:
    """`orchestr render k8s`: manifests for `kubectl apply -f DIR`, never applied by orchestr."""

    namespace: str = "orchestr"
    image: str = "orchestr:latest"  # image with orchestr installed (the services' interpreter)
    images: dict[str, str] = field(default_factory=dict)  # per service kind, e.g. {vllm_worker: ...}
    image_pull_policy: str = "IfNotPresent"
    # labels a pod's node must carry, per cluster node key: {node-01: {kubernetes.io/hostname: gpu1}}
    node_selectors: dict[str, dict[str, str]] = field(default_factory=dict)
    cpu_request: str = "1"
    memory_request: str = "4Gi"
    worker_cpu_request: str = "4"
    worker_memory_request: str = "32Gi"
    # Secret (created by you, e.g. `kubectl create secret generic orchestr-secrets
    # --from-literal=ORCHESTR_SECRET=...`) that pods read the service secret and API keys from
    secret_name: str = "orchestr-secrets"
    output_dir: str = "k8s"  # where `render` writes the manifests (one file per object)
