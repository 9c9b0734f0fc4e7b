"""Schemas for `orchestr clean`: arena battles, ratings and conversation-release steps.

`clean.step` names one step (or a pipeline of steps, from `clean.pipelines`). Each step reads
its `input` and writes its `output` (JSON or JSONL by extension); the defaults chain the steps
through `clean.output_dir`, so `orchestr clean step=release` runs the whole release chain and
`orchestr clean step=pii clean.pii.input=x.json clean.pii.output=y.json` runs one step alone.
Bare keys of this section may be given without the `clean.` prefix (`orchestr clean step=ratings`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Strings that show a model named itself (or a serving error): such battles are not blind.
# FastChat 0.2.36's list, so that by default the same anonymous battles are dropped as FastChat's
# cleaner drops; add your own models' names (say "smollm") with clean.battles.identity_words=[...].
DEFAULT_IDENTITY_WORDS = [
    "vicuna", "lmsys", "koala", "uc berkeley", "open assistant", "laion", "chatglm", "chatgpt",
    "gpt-4", "openai", "anthropic", "claude", "bard", "palm", "lamda", "google", "llama",
    "qianwan", "alibaba", "mistral", "zhipu", "keg lab", "01.ai", "ai2", "tülu", "tulu",
]  # fmt: skip
# Replies that are serving errors, not answers: such votes say nothing about the models.
DEFAULT_ERROR_MARKERS = [
    "network error due to high traffic", "**api request error**",
    "$moderation$ your input violates our content moderation guidelines",
]  # fmt: skip


@dataclass
class BattlesConfig:
    """Vote lines of the web UI's logs -> FastChat clean-battle records."""

    log_dirs: list[str] = field(default_factory=lambda: ["${services.web.log_dir}"])
    output: str = "${..output_dir}/clean_battle.json"
    mode: str = "simple"  # simple (no conversations) | conv_release (anonymous only, with conversations)
    anony_only: bool = False  # keep only anonymous battles (conv_release implies it)
    # Anonymous battles whose replies name a model are not blind: drop them (as FastChat does).
    drop_identity_leak: bool = True
    # Also drop anonymous battles a user flagged in the web UI. FastChat's cleaner ignores flags, so
    # this is off by default to count exactly the battles FastChat counts.
    drop_flagged: bool = False
    identity_words: list[str] = field(default_factory=lambda: list(DEFAULT_IDENTITY_WORDS))
    error_markers: list[str] = field(default_factory=lambda: list(DEFAULT_ERROR_MARKERS))
    drop_empty_turns: bool = True  # drop votes on conversations with no turn or an empty reply
    dedupe: bool = True  # one vote per (conversation pair, turn): the last one wins
    start_date: str | None = None  # YYYY-MM-DD, inclusive (by the vote's local date)
    end_date: str | None = None  # YYYY-MM-DD, inclusive
    max_num_files: int | None = None  # only the newest N day files (FastChat's --max-num-files)
    max_num: int | None = None  # keep only the newest N battles
    exclude_models: list[str] = field(default_factory=list)
    judge_salt: str = ""  # salt of the judge hash (the raw ip never reaches the output)


@dataclass
class RatingsConfig:
    """Battles -> online Elo, Bradley-Terry with bootstrap CIs, leaderboard files and plots."""

    input: str = "${..battles.output}"
    output_dir: str = "${..output_dir}"
    rank_by: str = "bt"  # bt | elo: which rating orders the leaderboard
    elo_k: float = 4.0  # online Elo step size
    scale: float = 400.0  # rating points per factor `base` of odds
    base: float = 10.0
    init_rating: float = 1000.0  # mean rating (or the anchor's when baseline_model is set)
    baseline_model: str | None = None  # pin this model's BT rating to baseline_rating
    baseline_rating: float = 1000.0
    bootstrap_rounds: int = 200
    seed: int = 0
    bt_l2: float = 0.01  # weak ridge prior: keeps undefeated models finite; negligible with data
    # FastChat rates anonymous battles only; false also counts side-by-side (named) votes
    anony_only: bool = True
    drop_bothbad: bool = False  # FastChat counts "tie (bothbad)" as a tie; true drops those votes
    # Style control (FastChat's contextual BT): ratings net of answer length, headers, lists and bold
    style_control: bool = False
    style_l2: float = 0.5  # ridge on strengths and style coefficients (FastChat's reg=0.5)
    # Per-category leaderboards (leaderboard_<category>.csv): language, turns (single/multi), long_user
    categories: list[str] = field(default_factory=lambda: ["language", "turns", "long_user"])
    category_min_battles: int = 30  # smaller categories are not rated
    long_user_tokens: int = 500  # a battle is `long_user` when the user's turns have this many tokens
    plots: bool = True


@dataclass
class ChatsConfig:
    """All logged conversations (FastChat's clean_chat_data): one record per conversation."""

    log_dirs: list[str] = field(default_factory=lambda: ["${services.web.log_dir}"])
    output: str = "${..output_dir}/clean_chat.json"
    types: list[str] = field(default_factory=lambda: ["chat"])  # log line types to gather
    start_date: str | None = None
    end_date: str | None = None
    max_num_files: int | None = None
    drop_network_error: bool = True
    judge_salt: str = ""  # salt of the user_id hash


@dataclass
class ModerationConfig:
    """Tag each record with OpenAI-shaped moderation results (`openai_moderation`)."""

    input: str = "${..chats.output}"
    output: str = "${..output_dir}/chat_moderated.json"
    backend: str = "auto"  # auto (api when api_base is set, else local) | api | local
    api_base: str | None = None  # e.g. http://host:port/v1 -> POST {api_base}/moderations
    api_key_env: str = "OPENAI_API_KEY"  # env var holding the key (never the key itself)
    model: str = "omni-moderation-latest"
    batch_size: int = 32
    timeout_s: float = 30.0
    fallback_to_local: bool = True  # api errors -> local rules, with a warning
    roles: list[str] = field(default_factory=lambda: ["user"])  # whose turns are checked
    drop_flagged: bool = False  # false: tag only


@dataclass
class PiiConfig:
    """Replace personal data in every message with placeholders."""

    input: str = "${..moderation.output}"
    output: str = "${..output_dir}/chat_scrubbed.json"
    kinds: list[str] = field(default_factory=lambda: ["credential_url", "email", "card", "ip", "phone"])
    placeholders: dict[str, str] = field(
        default_factory=lambda: {
            "credential_url": "[URL_WITH_CREDENTIALS]",
            "email": "[EMAIL]",
            "card": "[CARD_NUMBER]",
            "ip": "[IP_ADDRESS]",
            "phone": "[PHONE_NUMBER]",
        }
    )


@dataclass
class BlockedWordsConfig:
    """Drop (or tag) records whose messages contain a blocked word (whole word, any case)."""

    input: str = "${..pii.output}"
    output: str = "${..output_dir}/chat_filtered.json"
    # One word or phrase a line, `#` comments. Relative paths: the working folder, then conf/.
    words_file: str | None = "clean/blocked_words.txt"
    words: list[str] = field(default_factory=list)  # added to the file's list
    action: str = "drop"  # drop | tag (sets `blocked_words: [...]`)


@dataclass
class ToxicityConfig:
    """Extra toxicity tag from a pluggable scorer: `module:function(text) -> float in [0, 1]`."""

    input: str = "${..blocked_words.output}"
    output: str = "${..output_dir}/chat_tagged.json"
    scorer: str = "orchestr.arena.release.toxicity:lexicon_score"
    scorer_kwargs: dict[str, Any] = field(default_factory=dict)
    threshold: float = 0.5  # score >= threshold -> `toxic: true`
    roles: list[str] = field(default_factory=lambda: ["user", "assistant"])
    drop_toxic: bool = False


@dataclass
class SampleConfig:
    """Stratified sample with a fixed seed (same input + seed -> same sample)."""

    input: str = "${..toxicity.output}"
    output: str = "${..output_dir}/chat_sample.json"
    by: list[str] = field(default_factory=lambda: ["model"])  # stratum keys (record fields)
    n: int | None = 100  # total size, split across strata in proportion (None: use fraction)
    fraction: float | None = None  # or: this share of each stratum
    min_per_stratum: int = 1  # every non-empty stratum keeps at least this many (if it has them)
    seed: int = 42


@dataclass
class CleanConfig:
    step: str = "leaderboard"  # a step name or a pipeline name (see `pipelines`)
    output_dir: str = "clean_out"
    pipelines: dict[str, list[str]] = field(
        default_factory=lambda: {
            "leaderboard": ["battles", "ratings"],
            "release": ["chats", "moderation", "pii", "blocked_words", "toxicity", "sample"],
        }
    )
    battles: BattlesConfig = field(default_factory=BattlesConfig)
    ratings: RatingsConfig = field(default_factory=RatingsConfig)
    chats: ChatsConfig = field(default_factory=ChatsConfig)
    moderation: ModerationConfig = field(default_factory=ModerationConfig)
    pii: PiiConfig = field(default_factory=PiiConfig)
    blocked_words: BlockedWordsConfig = field(default_factory=BlockedWordsConfig)
    toxicity: ToxicityConfig = field(default_factory=ToxicityConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
