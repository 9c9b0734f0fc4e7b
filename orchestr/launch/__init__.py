"""Config -> process specs -> running processes (local or over SSH) -> state file."""
