"""Conversation-release steps: gather chats, moderation tags, PII scrubbing, blocked words,
toxicity tags, stratified sampling. Each takes its `clean.<step>` config and records, and
returns (records, StepReport); `orchestr.arena.steps` wires them to files."""
