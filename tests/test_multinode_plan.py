"""`cluster=multi_node` renders the seed's multi-node commands; bad topologies fail before starting.

The seed is FastChat's "Setup FastChat in multiple nodes" (docs/commands/local_cluster.md at the
commit in /work/shared/data/fastchat/SOURCE_COMMIT), kept below as test data. Its commands and
the rendering of `orchestr launch cluster=multi_node launch.dry_run=true` are both parsed into
(node, port) -> worker facts and compared.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import PurePosixPath

import pytest

from orchestr.config import compose
from orchestr.errors import ConfigError
from orchestr.launch.plan import build_plan

ORCHESTR = [sys.executable, "-m", "orchestr"]

SEED = {
    "node-01": """
python3 -m fastchat.serve.controller --host 0.0.0.0 --port 10002
CUDA_VISIBLE_DEVICES=0 python3 -m fastchat.serve.vllm_worker --model-path lmsys/vicuna-13b-v1.5 --model-name vicuna-13b --controller http://node-01:10002 --host 0.0.0.0 --port 31000 --worker-address http://$(hostname):31000
CUDA_VISIBLE_DEVICES=1 python3 -m fastchat.serve.vllm_worker --model-path lmsys/vicuna-13b-v1.5 --model-name vicuna-13b --controller http://node-01:10002 --host 0.0.0.0 --port 31001 --worker-address http://$(hostname):31001
CUDA_VISIBLE_DEVICES=2,3 ray start --head
python3 -m fastchat.serve.vllm_worker --model-path lmsys/vicuna-33b-v1.3 --model-name vicuna-33b --controller http://node-01:10002 --host 0.0.0.0 --port 31002 --worker-address http://$(hostname):31002 --num-gpus 2
""",
    "node-02": """
CUDA_VISIBLE_DEVICES=0 python3 -m fastchat.serve.vllm_worker --model-path meta-llama/Llama-2-13b-chat-hf --model-name llama-2-13b-chat --controller http://node-01:10002 --host 0.0.0.0 --port 31000 --worker-address http://$(hostname):31000 --tokenizer meta-llama/Llama-2-7b-chat-hf
CUDA_VISIBLE_DEVICES=1 python3 -m fastchat.serve.vllm_worker --model-path meta-llama/Llama-2-13b-chat-hf --model-name llama-2-13b-chat --controller http://node-01:10002 --host 0.0.0.0 --port 31001 --worker-address http://$(hostname):31001 --tokenizer meta-llama/Llama-2-7b-chat-hf
CUDA_VISIBLE_DEVICES=2 python3 -m fastchat.serve.vllm_worker --model-path meta-llama/Llama-2-7b-chat-hf --model-name llama-2-7b-chat --controller http://node-01:10002 --host 0.0.0.0 --port 31002 --worker-address http://$(hostname):31002 --tokenizer meta-llama/Llama-2-7b-chat-hf
CUDA_VISIBLE_DEVICES=3 python3 -m fastchat.serve.vllm_worker --model-path WizardLM/WizardLM-13B-V1.1 --model-name wizardlm-13b  --controller http://node-01:10002 --host 0.0.0.0 --port 31003 --worker-address http://$(hostname):31003
""",
    "node-03": """
python3 -m fastchat.serve.vllm_worker --model-path mosaicml/mpt-30b-chat --controller http://node-01:10002 --host 0.0.0.0 --port 31000 --worker-address http://$(hostname):31000 --num-gpus 2
python3 -m fastchat.serve.vllm_worker --model-path timdettmers/guanaco-33b-merged --model-name guanaco-33b  --controller http://node-01:10002 --host 0.0.0.0 --port 31002 --worker-address http://$(hostname):31002 --num-gpus 2 --tokenizer hf-internal-testing/llama-tokenizer
""",
    "node-04": """
CUDA_VISIBLE_DEVICES=0 python3 -m fastchat.serve.multi_model_worker --model-path ~/model_weights/RWKV-4-Raven-14B-v12-Eng98%25-Other2%25-20230523-ctx8192.pth --model-name RWKV-4-Raven-14B --model-path lmsys/fastchat-t5-3b-v1.0 --model-name fastchat-t5-3b --controller http://node-01:10002 --host 0.0.0.0 --port 31000 --worker http://$(hostname):31000 --limit 4
CUDA_VISIBLE_DEVICES=1 python3 -m fastchat.serve.multi_model_worker --model-path OpenAssistant/oasst-sft-4-pythia-12b-epoch-3.5 --model-name oasst-pythia-12b --model-path mosaicml/mpt-7b-chat --model-name mpt-7b-chat --controller http://node-01:10002 --host 0.0.0.0 --port 31001 --worker http://$(hostname):31001 --limit 4
CUDA_VISIBLE_DEVICES=2 python3 -m fastchat.serve.multi_model_worker --model-path lmsys/vicuna-7b-v1.5 --model-name vicuna-7b --model-path THUDM/chatglm-6b --model-name chatglm-6b --controller http://node-01:10002 --host 0.0.0.0 --port 31002 --worker http://$(hostname):31002 --limit 4
CUDA_VISIBLE_DEVICES=3 python3 -m fastchat.serve.vllm_worker --model-path ~/model_weights/alpaca-13b  --controller http://node-01:10002 --host 0.0.0.0 --port 31003 --worker-address http://$(hostname):31003
""",
}

# The one deliberate difference: on node-03 the seed lets each 2-GPU vLLM worker pick its GPUs
# (both would start on GPUs 0,1); the config pins disjoint pairs.
PINNED = {("node-03", 31000): "0,1", ("node-03", 31002): "2,3"}

WORKERS = {"vllm_worker", "multi_model_worker", "model_worker"}

# FastChat's argparse accepts unambiguous prefixes; orchestr renders the full flag names.
FLAG_ALIASES = {"--model-name": "--model-names", "--controller": "--controller-address",
                "--worker": "--worker-address", "--limit": "--limit-worker-concurrency"}


def split_env(line: str) -> tuple[dict[str, str], list[str]]:
    words = shlex.split(line)
    env = {}
    while words and "=" in words[0] and not words[0].startswith("-"):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    return env, words


def flags(argv: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--"):
            name = FLAG_ALIASES.get(a, a)
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                out.setdefault(name, []).append(argv[i + 1])
                i += 2
                continue
            out.setdefault(name, []).append("")
        i += 1
    return out


def facts(node: str, line: str, module_prefix: str) -> tuple[str, dict]:
    """One command line -> comparable facts; kind is controller | ray | a worker module."""
    env, words = split_env(line.replace("$(hostname)", node))
    if words[0] == "ray":
        return "ray", {"node": node, "cuda": env.get("CUDA_VISIBLE_DEVICES"), "args": words[1:3]}
    assert words[1] == "-m" and words[2].startswith(module_prefix), line
    kind = words[2][len(module_prefix):]
    f = flags(words[3:])
    d = {"node": node, "kind": kind, "cuda": env.get("CUDA_VISIBLE_DEVICES"), "host": f["--host"],
         "port": int(f["--port"][0])}
    if kind in WORKERS:
        paths = [os.path.expanduser(p) for p in f["--model-path"]]
        # FastChat names a model after its folder when --model-name is absent
        names = f.get("--model-names") or [PurePosixPath(p).name for p in f["--model-path"]]
        d |= {"models": list(zip(paths, names, strict=True)), "controller": f["--controller-address"],
              "worker_address": f["--worker-address"], "num_gpus": int(f.get("--num-gpus", ["1"])[0]),
              "tokenizer": f.get("--tokenizer"), "limit": f.get("--limit-worker-concurrency")}
    return kind, d


def seed_facts() -> list[tuple[str, dict]]:
    return [facts(node, line, "fastchat.serve.") for node, text in SEED.items()
            for line in text.strip().splitlines() if line.strip()]


def rendered_facts(text: str) -> list[tuple[str, dict]]:
    out, node = [], None
    for line in text.splitlines():
        if line.startswith("# node "):
            node = line.split()[2]
        elif line.strip():
            out.append(facts(node, line.split(" && ", 1)[-1], "orchestr.services."))
    return out


@pytest.fixture(scope="module")
def dry_run() -> str:
    proc = subprocess.run([*ORCHESTR, "launch", "cluster=multi_node", "launch.dry_run=true"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def by_place(items: list[tuple[str, dict]], kinds: set[str]) -> dict[tuple[str, int], dict]:
    return {(d["node"], d["port"]): d for k, d in items if k in kinds}



def test_dry_run_has_exactly_the_seed_workers(dry_run) -> None:
    seed, ours = by_place(seed_facts(), WORKERS), by_place(rendered_facts(dry_run), WORKERS)
    assert sorted(ours) == sorted(seed)
    assert len(ours) == 13  # 3 + 4 + 2 + 4


@pytest.mark.parametrize("place", sorted(by_place(seed_facts(), WORKERS)), ids=lambda p: f"{p[0]}:{p[1]}")
def test_each_worker_matches_the_seed_command(dry_run, place) -> None:
    seed = by_place(seed_facts(), WORKERS)[place]
    ours = by_place(rendered_facts(dry_run), WORKERS)[place]
    seed_cuda = PINNED.get(place, seed["cuda"])
    assert ours["kind"] == seed["kind"]
    assert ours["cuda"] == seed_cuda
    assert ours["models"] == seed["models"]
    assert ours["controller"] == seed["controller"] == ["http://node-01:10002"]
    assert ours["worker_address"] == seed["worker_address"]
    # the seed binds 0.0.0.0; orchestr binds the node's own address unless told otherwise
    assert seed["host"] == ["0.0.0.0"] and ours["host"] == [place[0]]
    assert ours["num_gpus"] == seed["num_gpus"]
    assert ours["tokenizer"] == seed["tokenizer"]
    if seed["limit"]:
        assert ours["limit"] == seed["limit"]


def test_controller_and_ray_head_match_the_seed(dry_run) -> None:
    seed, ours = seed_facts(), rendered_facts(dry_run)
    ctl = [d for k, d in ours if k == "controller"]
    assert len(ctl) == 1
    seed_ctl = next(d for k, d in seed if k == "controller")
    assert (ctl[0]["node"], ctl[0]["port"], ctl[0]["host"]) == (seed_ctl["node"], 10002, ["node-01"])
    assert seed_ctl["host"] == ["0.0.0.0"]
    rays = [d for k, d in ours if k == "ray"]
    assert rays == [d for k, d in seed if k == "ray"]  # node-01, GPUs 2,3, `start --head`
    # and nothing beyond the seed except the API server and web UI on node-01
    extra = sorted(k for k, _ in ours if k not in WORKERS | {"controller", "ray"})
    assert extra == ["openai_api_server", "web"]


def test_ray_head_starts_before_the_worker_riding_it() -> None:
    specs = build_plan(compose(["cluster=multi_node"]))
    names = [s.name for s in specs]
    assert names.index("ray-head-node-01") < names.index("vicuna-33b")
    assert "ray-head-node-01" in next(s for s in specs if s.name == "vicuna-33b").depends_on
    assert names[0] == "controller"


def test_dry_run_names_each_node_and_how_it_is_reached(dry_run) -> None:
    for n in ("node-01", "node-02", "node-03", "node-04"):
        assert f"# node {n} ({n}, ssh {n})" in dry_run


def test_local_dry_run_is_unchanged_by_multinode_rules() -> None:
    proc = subprocess.run([*ORCHESTR, "launch", "launch.dry_run=true"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0] == "# node local (127.0.0.1, this machine)"
    assert [split_env(x)[1][2] for x in lines[1:] if x] == [
        "orchestr.services.controller", "orchestr.services.model_worker",
        "orchestr.services.openai_api_server", "orchestr.services.web"]


# ---------------------------------------------------------------- validation before anything starts
def plan_error(*overrides: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        build_plan(compose(["cluster=multi_node", *overrides]))
    return e.value


def test_a_gpu_given_twice_on_a_node() -> None:
    e = plan_error("cluster.workers.vicuna-13b-1.gpus=[0]")
    assert e.key == "cluster.workers.vicuna-13b-1.gpus"
    assert "GPU 0" in str(e) and "vicuna-13b-0" in str(e)


def test_a_worker_on_the_ray_heads_gpus() -> None:
    e = plan_error("cluster.workers.vicuna-13b-1.gpus=[3]")
    assert e.key == "cluster.ray_heads.ray-head-node-01.gpus" and "GPU 3" in str(e) and "vicuna-13b-1" in str(e)


def test_the_same_gpu_index_on_two_nodes_is_fine() -> None:
    build_plan(compose(["cluster=multi_node"]))  # GPU 0 is used on every node


def test_more_gpus_than_the_node_has() -> None:
    e = plan_error("cluster.workers.alpaca-13b.gpus=[3,4]")
    assert e.key == "cluster.workers.alpaca-13b.gpus" and "GPU 4 does not exist" in str(e)
    e = plan_error("cluster.nodes.node-04.gpus=2")
    assert e.key.startswith("cluster.workers.") and "node-04" in str(e)
    e = plan_error("models.mpt-30b-chat.num_gpus=8", "cluster.workers.mpt-30b-chat.gpus=null")
    assert e.key == "cluster.workers.mpt-30b-chat.model" and "needs 8 GPUs" in str(e)


def test_fewer_gpus_than_the_model_needs() -> None:
    e = plan_error("cluster.workers.guanaco-33b.gpus=[2]")
    assert e.key == "cluster.workers.guanaco-33b.gpus" and "needs 2 GPUs" in str(e)


def test_a_worker_without_gpus_clashes_with_pinned_ones() -> None:
    # no `gpus` (and no Ray head on node-04 to ride): it would take GPU 0, pinned by multi-rwkv-t5
    e = plan_error("cluster.workers.alpaca-13b.gpus=null", "cluster.workers.alpaca-13b.backend=hf")
    assert e.key == "cluster.workers.alpaca-13b.gpus" and "multi-rwkv-t5" in str(e)


def test_ray_head_too_small_for_its_riders() -> None:
    e = plan_error("cluster.ray_heads.ray-head-node-01.gpus=[2]", "cluster.workers.vicuna-13b-1.gpus=[1]")
    assert e.key == "cluster.workers.vicuna-33b.gpus" and "need 2 GPUs" in str(e)


def test_port_clash_on_a_node() -> None:
    e = plan_error("cluster.workers.vicuna-13b-1.port=31000")
    assert e.key == "cluster.workers.vicuna-13b-1.port" and "vicuna-13b-0" in str(e)
    e = plan_error("services.api.port=10002")
    assert e.key == "services.api.port" and "controller" in str(e)
    e = plan_error("cluster.ray_heads.ray-head-node-01.port=31002")
    assert e.key in ("cluster.workers.vicuna-33b.port", "cluster.ray_heads.ray-head-node-01.port")


def test_same_port_on_two_nodes_is_fine() -> None:
    specs = build_plan(compose(["cluster=multi_node"]))
    assert sum(1 for s in specs if s.port == 31000) == 4


def test_port_out_of_range() -> None:
    e = plan_error("cluster.workers.wizardlm-13b.port=70000")
    assert e.key == "cluster.workers.wizardlm-13b.port"


def test_unknown_node() -> None:
    e = plan_error("cluster.workers.wizardlm-13b.node=node-09")
    assert e.key == "cluster.workers.wizardlm-13b.node" and "node-09" in str(e) and "node-01" in str(e)
    e = plan_error("services.controller.node=node-09")
    assert e.key == "services.controller.node"
    e = plan_error("cluster.ray_heads.ray-head-node-01.node=nowhere")
    assert e.key == "cluster.ray_heads.ray-head-node-01.node"


def test_unknown_model() -> None:
    e = plan_error("cluster.workers.wizardlm-13b.model=wizardlm-70b")
    assert e.key == "cluster.workers.wizardlm-13b.model" and "wizardlm-70b" in str(e)
    assert "/model@models.wizardlm-70b" in str(e)
    e = plan_error("cluster.workers.multi-oasst-mpt.models=[oasst-pythia-12b,nope]")
    assert e.key == "cluster.workers.multi-oasst-mpt.models"


def test_loopback_address_in_a_multi_host_cluster() -> None:
    e = plan_error("cluster.nodes.node-01.address=127.0.0.1")
    assert e.key == "cluster.nodes.node-01.address" and "loopback" in str(e)


def test_bad_restart_policy_and_known_hosts_policy() -> None:
    # allowed values are Enums: refused while composing, naming the key
    with pytest.raises(ConfigError) as e:
        compose(["cluster=multi_node", "cluster.workers.wizardlm-13b.restart.policy=sometimes"])
    assert e.value.key == "cluster.workers.wizardlm-13b.restart.policy"
    with pytest.raises(ConfigError) as e:
        compose(["cluster=multi_node", "cluster.nodes.node-02.known_hosts=trust-me"])
    assert e.value.key == "cluster.nodes.node-02.known_hosts"
    e = plan_error("cluster.nodes.node-02.transport=telnet")
    assert e.key == "cluster.nodes.node-02.transport"
    e = plan_error("cluster.workers.wizardlm-13b.restart.max_restarts=-1")
    assert e.key == "cluster.workers.wizardlm-13b.restart.max_restarts"


def test_the_cli_reports_the_key_without_a_traceback() -> None:
    proc = subprocess.run([*ORCHESTR, "launch", "cluster=multi_node", "cluster.workers.vicuna-13b-1.gpus=[0]",
                           "launch.dry_run=true"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert "orchestr launch: cluster.workers.vicuna-13b-1.gpus: GPU 0 on node 'node-01'" in out
    assert "Traceback" not in out


def test_cpu_cluster_over_ssh_renders_the_same_way() -> None:
    proc = subprocess.run([*ORCHESTR, "launch", "cluster=ssh_cpu", "cluster.nodes.node-b.address=10.0.0.2",
                           "cluster.nodes.node-a.address=10.0.0.1", "cluster.nodes.node-b.ssh_port=2222",
                           "launch.dry_run=true"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "# node node-a (10.0.0.1, ssh 10.0.0.1)" in proc.stdout
    assert "# node node-b (10.0.0.2, ssh -p 2222 10.0.0.2)" in proc.stdout
    assert "CUDA_VISIBLE_DEVICES" not in proc.stdout
    workers = by_place(rendered_facts(proc.stdout), {"model_worker"})
    assert sorted(workers) == [("node-a", 21002), ("node-b", 21003)]
    for (node, port), w in workers.items():
        assert w["controller"] == ["http://10.0.0.1:21001"]
        assert w["worker_address"] == [f"http://10.0.0.{1 if node == 'node-a' else 2}:{port}"]
        assert w["models"] == [("embedded://SmolLM2-135M-Instruct", "smollm2-135m")]
    assert all("--device cpu" in line for line in proc.stdout.splitlines() if "model_worker" in line)


def test_multi_model_workers_carry_each_models_own_options() -> None:
    # the multi-model worker reads the options after a --model-path as that model's: a template
    # or trust_remote_code must land in its own model's section, not the last one's
    from orchestr.services.multi_model_worker import split_argv

    specs = {s.name: s for s in build_plan(compose(["cluster=multi_node"]))}
    _, shared, sections = split_argv(specs["multi-vicuna-chatglm"].argv[3:])
    assert shared == []
    vicuna, chatglm = sections
    assert vicuna[:4] == ["--model-path", "lmsys/vicuna-7b-v1.5", "--model-names", "vicuna-7b"]
    assert "vicuna_v1.1" in vicuna and "--trust-remote-code" not in vicuna
    assert chatglm[:4] == ["--model-path", "THUDM/chatglm-6b", "--model-names", "chatglm-6b"]
    assert "chatglm" in chatglm and "--trust-remote-code" in chatglm
    _, _, (rwkv, t5) = split_argv(specs["multi-rwkv-t5"].argv[3:])
    assert rwkv[rwkv.index("--conv-template") + 1] == "rwkv" and t5[t5.index("--conv-template") + 1] == "t5"
