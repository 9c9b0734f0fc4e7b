"""Arena analytics: the web UI's conversation logs -> battles -> ratings and leaderboards, and
conversation-release steps (`orchestr clean`)."""
