"""The fixed prompt set: eight "write a long story"-style chat prompts of mixed lengths.

Fixed so that every server, every run and every concurrency level sees the same load; mixed
lengths so that prefills of different sizes interleave with decodes, as in real traffic.
"""

from __future__ import annotations

PROMPTS: list[str] = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Write a long story about a robot learning to paint. Describe its first exhibition in detail.",
    "Tell me a long, detailed story about two friends who get lost in a forest at night and what "
    "they discover before sunrise.",
    "Write a long adventure story set on a ship crossing the Atlantic in 1850. Include a storm, "
    "a mutiny and a surprising ending. Give every main character a name and a secret.",
    "Write a long story for children about a small dragon who is afraid of fire.",
    "Write a long science-fiction story about the first city on Mars. The city has a council of "
    "seven members, a water shortage and a mysterious signal coming from under the ice. Tell the "
    "story from the point of view of the youngest council member, and describe the city, its "
    "people and the day the signal changed.",
    "Write a long mystery story in which a detective solves a theft at a village bakery.",
    "I am preparing a reading evening for a book club. Write a long, atmospheric story about an old "
    "library that rearranges its shelves every night. The librarian, who has worked there for forty "
    "years, tries to understand the pattern. Include dialogue between the librarian and a curious "
    "student, several mysterious books, a map hidden in a catalogue card, and an ending that leaves "
    "the reader wondering whether the library is alive. Keep the tone warm rather than frightening.",
]


def prompt_messages(index: int) -> list[dict[str, str]]:
    """Chat messages of the ``index``-th request (prompts cycle)."""
    return [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}]
