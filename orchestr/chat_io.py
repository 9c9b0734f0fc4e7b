"""Terminal input/output for `orchestr chat`: a plain style and a Rich (live markdown) style.

Both read from a terminal (prompt_toolkit when ``--multiline``: Esc+Enter submits) or, when stdin
is not a terminal (a pipe), line by line so a script can drive a conversation. In multiline mode
on a pipe a message ends at an empty line.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable


class ChatIO:
    def __init__(self, multiline: bool = False, stdin=None, stdout=None):
        self.multiline = multiline
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.interactive = self.stdin.isatty()
        self._session = None

    # ------------------------------------------------------------------ input

    def prompt_for_input(self, role: str) -> str | None:
        """One user message; None at end of input (EOF / Ctrl-D)."""
        try:
            if self.interactive:
                return self._read_terminal(role)
            return self._read_pipe(role)
        except EOFError:
            if self.interactive:
                self.write("\n")  # Ctrl-D leaves the cursor after the prompt
            return None

    def _read_terminal(self, role: str) -> str:
        if not self.multiline:
            return input(f"{role}: ")
        if self._session is None:
            from prompt_toolkit import PromptSession

            self._session = PromptSession()
        self.write(f"{role} [Esc+Enter to send]:\n")
        return self._session.prompt("", multiline=True)

    def _read_pipe(self, role: str) -> str:
        self.write(f"{role}: ")
        if not self.multiline:
            line = self.stdin.readline()
            if not line:
                raise EOFError
            self.write(line if line.endswith("\n") else line + "\n")
            return line.rstrip("\n")
        lines: list[str] = []
        while True:
            line = self.stdin.readline()
            if not line:
                if not lines:
                    raise EOFError
                break
            if not line.strip() and lines:
                break
            lines.append(line.rstrip("\n"))
        text = "\n".join(lines)
        self.write(text + "\n")
        return text

    # ------------------------------------------------------------------ output

    def write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def info(self, text: str) -> None:
        self.write(text + "\n")

    def stream_output(self, role: str, deltas: Iterable[str]) -> str:
        """Show the reply as it streams; return its full text."""
        self.write(f"{role}: ")
        parts: list[str] = []
        try:
            for d in deltas:
                parts.append(d)
                self.write(d)
        finally:
            self.write("\n")
        return "".join(parts)


class RichChatIO(ChatIO):
    """Replies rendered as Markdown, re-rendered live while they stream."""

    def __init__(self, multiline: bool = False, stdin=None, stdout=None):
        super().__init__(multiline, stdin, stdout)
        from rich.console import Console

        self.console = Console(file=self.stdout, highlight=False)

    def write(self, text: str) -> None:
        self.console.print(text, end="", markup=False, highlight=False)

    def info(self, text: str) -> None:
        self.console.print(text, style="dim", markup=False, highlight=False)

    def stream_output(self, role: str, deltas: Iterable[str]) -> str:
        from rich.live import Live
        from rich.markdown import Markdown

        self.console.print(f"[bold]{role}:[/bold]")
        text = ""
        with Live(console=self.console, refresh_per_second=8, vertical_overflow="visible") as live:
            for d in deltas:
                text += d
                live.update(Markdown(text))
        if not self.console.is_terminal:
            self.console.print()  # Live leaves the cursor after the last render off a terminal
        return text


def make_io(style: str, multiline: bool) -> ChatIO:
    if style == "rich":
        return RichChatIO(multiline)
    return ChatIO(multiline)
