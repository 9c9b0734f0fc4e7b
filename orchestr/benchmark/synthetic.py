"""Deterministic, natural-looking English text of about a given number of tokens: the shared
system prompt of the multi-turn workload (an assistant's policy), the documents of the random
and head-of-line workloads, and the users' questions.

Text, not random token ids: servers tokenise what they receive, and a prompt the model reads like
real instructions gives answers like real ones. Sentences come from fixed templates filled in by a
seeded ``random.Random``, so the same seed gives the same text on every machine. Token counts use
the benchmark's tokenizer; byte-level BPE splits before a space, so the count of a text is the sum
of its sentences' counts, each taken with its leading space.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

Counter = Callable[[str], int]

COMPANY = "Northwind Outfitters"
TOPICS = [
    "refunds", "returns of used items", "shipping delays", "lost parcels", "billing questions",
    "double charges", "account security", "password resets", "privacy requests", "data deletion",
    "gift cards", "store credit", "warranty claims", "repairs", "product sizes", "stock availability",
    "order changes", "order cancellations", "subscription renewals", "loyalty points", "discount codes",
    "international orders", "customs fees", "damaged goods", "missing items", "delivery addresses",
]
ACTIONS = [
    "confirm the order number before anything else", "explain the next steps in plain words",
    "apologise once for the inconvenience and move on to the solution", "offer to pass the case to a human agent",
    "summarise what you have understood in one sentence", "check whether the account is verified",
    "point the customer to the matching help centre article", "ask one short clarifying question",
    "state the time frame the customer can expect", "mention the cost before the customer commits",
    "write down the reference number for the customer", "describe what happens after the request is sent",
    "keep the promise you make realistic", "repeat the key figure so that nothing is misread",
    "offer the cheapest option first", "remind the customer of the return window of thirty days",
]
CONDITIONS = [
    "confirmed the email address on the account", "given the last four digits of the card",
    "sent a photo of the damaged item", "asked for it explicitly", "agreed to the new terms",
    "received a case number from the support team", "logged in to the customer portal",
]
FORBIDDEN = [
    "promise a refund", "share another customer's details", "change the delivery address",
    "issue store credit", "guess at a delivery date", "discuss internal prices", "reset the password",
]
STYLES = [
    "short and friendly", "clear and specific", "polite but direct", "calm and patient",
    "warm without being too informal", "precise and free of jargon",
]
SUBJECTS = [
    "the warehouse team", "a courier", "the old harbour", "a small bakery", "the night train", "the city council",
    "a research group", "the village library", "an engineer", "the weather service", "a young gardener",
    "the museum", "a ferry captain", "the school choir", "a travelling musician", "the repair shop",
]
VERBS = [
    "prepared", "described", "measured", "discovered", "rebuilt", "announced", "painted", "counted",
    "recorded", "explained", "organised", "inspected", "delivered", "planned", "photographed", "repaired",
]
OBJECTS = [
    "a new timetable for the spring", "the results of a long experiment", "the broken bridge near the river",
    "a list of every book that had gone missing", "the strange lights above the hills", "a plan for the festival",
    "the oldest map in the collection", "a report on the autumn harvest", "the route across the mountains",
    "a collection of letters from the last century", "the noise that kept the neighbours awake",
    "a cheaper way to heat the houses", "the reasons behind the long delay", "the boats that came back late",
]
DETAILS = [
    "after weeks of careful work", "before anyone else had noticed", "with the help of two volunteers",
    "although the weather was terrible", "in front of a surprised audience", "for the first time in years",
    "while the rest of the town was asleep", "using only simple tools", "as the sun went down",
]
QUESTIONS = [
    "what should I do first?", "how long will it take?", "is there a fee for that?",
    "can you explain the process step by step?", "what do you need from me?",
    "what happens if it does not work?",
]
FOLLOW_UPS = [
    "Thanks. Can you explain that in a little more detail?", "What should I do if that does not work?",
    "Could you summarise the steps in a short list?", "Is there anything else I should know?",
    "How can I check the status later?", "And what if I am travelling at the time?",
    "Can I do this from my phone?", "Who should I contact if I have more questions?",
]


def _policy_sentences(rng: random.Random) -> Iterator[str]:
    """An endless assistant policy: an opening, then numbered sections of rules."""
    yield (f"You are the customer support assistant of {COMPANY}, an online shop for outdoor clothing "
           "and equipment.")
    yield "Read these instructions carefully and follow them in every conversation."
    section = 0
    while True:
        section += 1
        topic = rng.choice(TOPICS)
        yield f"Section {section}: {topic[0].upper()}{topic[1:]}."
        for _ in range(rng.randint(3, 6)):
            kind = rng.randrange(5)
            if kind == 0:
                yield f"When a customer asks about {topic}, {rng.choice(ACTIONS)}."
            elif kind == 1:
                a, b = rng.sample(ACTIONS, 2)
                yield f"Always {a}, and then {b}."
            elif kind == 2:
                yield (f"Never {rng.choice(FORBIDDEN)} unless the customer has {rng.choice(CONDITIONS)}.")
            elif kind == 3:
                yield f"Keep your answers about {topic} {rng.choice(STYLES)}, and {rng.choice(ACTIONS)}."
            else:
                yield (f"If the request also concerns {rng.choice(TOPICS)}, {rng.choice(ACTIONS)} "
                       f"before you {rng.choice(ACTIONS)}.")


def _story_sentences(rng: random.Random) -> Iterator[str]:
    """Endless plain narrative sentences (documents to read)."""
    while True:
        subject = rng.choice(SUBJECTS)
        yield f"{subject[0].upper()}{subject[1:]} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(DETAILS)}."


def _fill(sentences: Iterator[str], target: int, count: Counter, whole_sentences: bool) -> str:
    """Sentences until about ``target`` tokens: with ``whole_sentences`` the sentence boundary
    closest to the target, else words of the last sentence up to the target."""
    parts: list[str] = []
    total = 0
    for sentence in sentences:
        n = count(sentence if not parts else " " + sentence)
        if total + n <= target:
            parts.append(sentence)
            total += n
            if total == target:
                break
            continue
        if whole_sentences:
            if not parts or (total + n - target) < (target - total):
                parts.append(sentence)
            break
        for word in sentence.split(" "):
            n = count(word if not parts else " " + word)
            if total + n > target and parts:
                break
            parts.append(word)
            total += n
        break
    return " ".join(parts)


def system_prompt(tokens: int, count: Counter, seed: int = 0) -> str:
    """An assistant's policy of about ``tokens`` tokens, ending at a sentence boundary."""
    return _fill(_policy_sentences(random.Random(seed)), tokens, count, whole_sentences=True)


def document(tokens: int, count: Counter, seed: int = 0) -> str:
    """Narrative text of about ``tokens`` tokens (exact within a token or two)."""
    return _fill(_story_sentences(random.Random(seed)), tokens, count, whole_sentences=False)


def user_turn(conversation: int, turn: int, seed: int = 0) -> str:
    """The ``turn``-th (0-based) message of a conversation's user: a question on a topic first,
    follow-ups afterwards."""
    rng = random.Random(f"{seed}/{conversation}/{turn}")
    if turn == 0:
        topic = TOPICS[(conversation + seed) % len(TOPICS)]
        return f"Hello, I have a question about {topic}: {rng.choice(QUESTIONS)}"
    return rng.choice(FOLLOW_UPS)
