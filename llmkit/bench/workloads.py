"""What the benchmark asks every server: the prompts, the conversation's topics, the tools to call,
a fresh start."""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from collections import Counter
from typing import Any

from llmkit.client import ToolCall

TURNS = 10  # the turns of the growing conversation

# A prompt a base model keeps answering at temperature 0, so that streams run to max_tokens.
GENERATION_PROMPT = "Count from 1 to 1000, separated by commas."
JSON_PROMPT = (
    'Write a JSON object with a key "people": a list of 100 fictional people, each '
    "with name, age, city, job and a one-sentence biography."
)
# Two tools, so that the model chooses; the prompt asks for the first. Strings and lists are
# bounded, so that a tiny model cannot write one value until max_tokens.
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "create_event",
            "description": "Add an event to the user's calendar.",
            "parameters": {
                "type": "object",
                "properties": {
                    "title": {"type": "string", "maxLength": 40},
                    "date": {"type": "string", "description": "YYYY-MM-DD", "maxLength": 10},
                    "start_time": {"type": "string", "description": "HH:MM", "maxLength": 5},
                    "attendees": {
                        "type": "array",
                        "items": {"type": "string", "maxLength": 20},
                        "maxItems": 6,
                    },
                },
                "required": ["title", "date", "attendees"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "send_message",
            "description": "Send a short text message to one person.",
            "parameters": {
                "type": "object",
                "properties": {
                    "to": {"type": "string", "maxLength": 20},
                    "text": {"type": "string", "maxLength": 200},
                },
                "required": ["to", "text"],
                "additionalProperties": False,
            },
        },
    },
]
TOOL_PROMPT = (
    "Put a planning meeting called Garden Plans in my calendar for 14 May 2025 at 10:30, "
    "with Ana, Ben, Chloe and Dev."
)
# Every server must answer with exactly one call: no free-text way out, no run of repeated calls.
TOOL_REQUEST: dict[str, Any] = {
    "tools": TOOLS,
    "tool_choice": "required",
    "parallel_tool_calls": False,
}
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


def new_seed() -> str:
    """A run's seed for Nonces: new each run, so that a peer left running has none cached."""
    return secrets.token_hex(4)


class Nonces:
    """Fresh starts for one server's prompts, so that no server answers one from its prompt cache,
    and the same for every server of a run: the k-th prompt of a workload is the same text on each.

    At temperature 0 a start decides what a base model writes (counting, or repeating the prompt,
    which n-gram drafts copy at several times the speed), so servers given different starts would
    be measured on different texts."""

    def __init__(self, seed: str) -> None:
        self.seed = seed
        self._drawn: Counter[str] = Counter()
        self._lock = threading.Lock()  # concurrent clients draw together

    def __call__(self, workload: str) -> str:
        with self._lock:
            k = self._drawn[workload]
            self._drawn[workload] += 1
        digest = hashlib.sha256(f"{self.seed}:{workload}:{k}".encode()).hexdigest()
        return f"[{digest[:8]}]"


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


def turn_question(turn: int, start: str) -> str:
    """The question of one turn (from 0) of the conversation; the first begins with `start`."""
    first = start + " " if turn == 0 else ""
    return f"{first}Question {turn + 1}: tell me one thing about {TOPICS[turn % len(TOPICS)]}."


def call_problem(calls: list[ToolCall]) -> str | None:
    """Why an answer to the tool request is not a valid call (None: it is one).

    Valid: at least one call, each naming one of TOOLS with arguments that parse as a JSON object
    holding every key its schema requires.
    """
    if not calls:
        return "no call in the answer"
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for call in calls:
        if call.name not in schemas:
            return f"a call to {call.name!r}, which is not offered"
        try:
            arguments = json.loads(call.arguments)
        except ValueError:
            return f"{call.name}'s arguments are not JSON: {call.arguments[:80]!r}"
        if not isinstance(arguments, dict):
            return f"{call.name}'s arguments are not a JSON object: {call.arguments[:80]!r}"
        missing = [key for key in schemas[call.name]["required"] if key not in arguments]
        if missing:
            return f"{call.name}'s arguments lack {', '.join(missing)}"
    return None
