"""How `launch.backend` reshapes nodes and specs, and what the Slurm and Ray backends make of a
spec (batch script, sbatch flags, actor options), without a cluster (fast)."""

from __future__ import annotations

import subprocess

from omegaconf import OmegaConf

from orchestr.config import compose
from orchestr.config.backends import RayBackendConfig, SlurmConfig
from orchestr.config.serving import LaunchConfig, NodeConfig, RestartPolicy
from orchestr.launch.plan import build_plan
from orchestr.launch.ray_backend import RayRunner, actor_gpus, max_restarts
from orchestr.launch.slurm import render_script, sbatch_argv
from orchestr.launch.spec import ProcessSpec
from orchestr.launch.target import backend_nodes, backend_specs


def _plan(*overrides: str) -> tuple[LaunchConfig, list[ProcessSpec]]:
    cfg = compose(["cluster=multi_node", *overrides])
    return OmegaConf.to_object(cfg.launch), build_plan(cfg)


def test_backend_key_moves_every_node_to_the_scheduler_with_its_options() -> None:
    launch, _ = _plan("launch.backend=slurm", "launch.slurm.partition=gpu", "launch.slurm.qos=high")
    cfg = compose(["cluster=multi_node"])
    nodes = {k: OmegaConf.to_object(v) for k, v in cfg.cluster.nodes.items()}
    moved = backend_nodes(launch, nodes)
    assert {n.transport for n in moved.values()} == {"slurm"}
    assert moved["node-02"].backend_options["partition"] == "gpu"
    assert SlurmConfig(**moved["node-02"].backend_options).qos == "high"
    unset = backend_nodes(LaunchConfig(), nodes)
    assert unset == nodes  # default: the nodes' own transports


def test_ray_backend_drops_the_seeds_ray_heads_and_points_vllm_at_the_cluster() -> None:
    launch, specs = _plan("launch.backend=ray", "launch.ray.address=10.0.0.1:6379")
    assert any(s.service == "ray" for s in specs)
    out = backend_specs(launch, specs)
    assert not any(s.service == "ray" for s in out)
    v33 = next(s for s in out if s.name == "vicuna-33b")
    assert v33.env["RAY_ADDRESS"] == "10.0.0.1:6379" and "ray-head-node-01" not in v33.depends_on


def test_slurm_job_asks_gres_per_gpu_and_resolves_addresses_at_run_time() -> None:
    _, specs = _plan()
    guanaco = next(s for s in specs if s.name == "guanaco-33b")
    opts = SlurmConfig(partition="gpu", account="lab", time_limit="2:00:00", job_name_prefix="t",
                       nodelist={"node-03": "gpu-17"})
    argv = sbatch_argv(guanaco, opts, "node-03", "/logs/g.log", "/logs/g.sbatch")
    assert "--gres=gpu:2" in argv and argv[argv.index("--nodelist") + 1] == "gpu-17"
    assert argv[argv.index("--job-name") + 1] == "t-guanaco-33b" and "--requeue" in argv
    assert not any("ORCHESTR_SECRET" in a for a in argv)
    script = render_script(guanaco, opts)
    assert "squeue -h --me -n t-controller" in script
    assert '--controller-address "http://${CONTROLLER_ADDR}:10002"' in script
    assert '--worker-address "http://${SELF_ADDR}:31002"' in script
    assert '--host "${SELF_ADDR}"' in script  # binds where Slurm put it
    assert "node-01" not in script and "node-03" not in script
    assert '"${SLURM_RESTART_COUNT:-0}" -lt 3' in script  # restart.max_restarts
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # valid shell


def test_restart_policies_map_to_the_schedulers() -> None:
    spec = ProcessSpec(name="w", service="model_worker", node="n", argv=["python"],
                       restart=RestartPolicy(policy="no"))
    assert "--no-requeue" in sbatch_argv(spec, SlurmConfig(), "n", "/l", "/s")
    assert "&& false; then" in render_script(spec, SlurmConfig())
    assert max_restarts(spec, RayBackendConfig()) == 0
    spec.restart = RestartPolicy(policy="always")
    assert max_restarts(spec, RayBackendConfig()) == -1
    spec.restart = RestartPolicy(policy="on-failure", max_restarts=5)
    assert max_restarts(spec, RayBackendConfig()) == 5
    assert max_restarts(spec, RayBackendConfig(max_restarts=1)) == 1


def test_ray_actor_is_pinned_to_its_nodes_resource_with_its_gpus() -> None:
    runner = RayRunner("node-03", NodeConfig(transport="ray", backend_options={"num_cpus": 2.0}))
    spec = ProcessSpec(name="w", service="model_worker", node="node-03", argv=["python"],
                       env={"CUDA_VISIBLE_DEVICES": "2,3"})
    opts = runner._actor_options(spec)
    assert opts["resources"] == {"node-03": 0.001} and opts["num_gpus"] == 2 and opts["num_cpus"] == 2.0
    assert opts["lifetime"] == "detached" and opts["namespace"] == "orchestr" and "runtime_env" not in opts
    spec.service = "vllm_worker"  # tensor parallel: vLLM's own Ray workers take the GPUs
    assert actor_gpus(spec) == 0
