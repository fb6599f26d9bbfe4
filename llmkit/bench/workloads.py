"""What the benchmark asks every server: the prompts, the conversation's topics, a fresh start."""

from __future__ import annotations

import uuid

TURNS = 10  # the turns of the growing conversation

# A prompt a base model keeps answering at temperature 0, so that streams run to max_tokens.
GENERATION_PROMPT = "Count from 1 to 1000, separated by commas."
JSON_PROMPT = (
    'Write a JSON object with a key "people": a list of 100 fictional people, each '
    "with name, age, city, job and a one-sentence biography."
)
TOPICS = (
    "the sea",
    "volcanoes",
    "bees",
    "the moon",
    "glass",
    "bread",
    "rivers",
    "owls",
    "copper",
    "clocks",
    "maps",
    "salt",
)


def nonce() -> str:
    """A fresh start for a prompt, so that no server answers it from its prompt cache."""
    return f"[{uuid.uuid4().hex[:8]}]"


def long_prompt(lines: int) -> str:
    """A ~25-tokens-a-line document to read and a short question about it."""
    colours = ("red", "green", "blue", "grey", "white", "black", "yellow")
    animals = ("fox", "heron", "badger", "otter", "crow", "hare", "stag", "wolf")
    places = ("mill", "harbour", "bridge", "market", "chapel", "forest", "quarry")
    log = [
        f"Day {i + 1}: the {colours[i % 7]} {animals[i % 8]} walked {3 + i * 7 % 23} miles to "
        f"the {places[i % 7]} and counted {11 + i * 13 % 97} stones on the way."
        for i in range(lines)
    ]
    question = "In one sentence: which animal walked furthest?"
    return "Here is a traveller's log.\n" + "\n".join(log) + "\n" + question


def turn_question(turn: int) -> str:
    """The question of one turn (from 0) of the conversation; the first starts fresh."""
    first = nonce() + " " if turn == 0 else ""
    return f"{first}Question {turn + 1}: tell me one thing about {TOPICS[turn % len(TOPICS)]}."
