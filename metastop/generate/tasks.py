"""Seeded generators of exact-answer tasks and the character vocabulary they share.

Each task maps a ``random.Random`` and a difficulty to an :class:`Example` (a prompt and the
one correct answer). :func:`make_split` draws a training set and a disjoint held-out set.

Example:
    >>> import random
    >>> ex = TASKS["addition"](random.Random(0), 3)
    >>> int(ex.answer) == sum(int(x) for x in ex.prompt.rstrip("=").split("+"))
    True
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Callable

from ..errors import ParameterError

PAD, BOS, EOS = 0, 1, 2
_SPECIALS = ("<pad>", "<bos>", "<eos>")
CHARS = string.digits + string.ascii_lowercase + "+=%|:;?,()[] "
VOCAB_SIZE = len(_SPECIALS) + len(CHARS)
_CHAR_ID = {c: i + len(_SPECIALS) for i, c in enumerate(CHARS)}

NAMES = ("ann", "bob", "cy", "dee", "eli", "fay", "gus", "hal", "ida", "jo", "kim", "lou",
         "max", "ned", "olga", "pat", "quin", "rex", "sue", "tom")
CITIES = ("rome", "oslo", "lima", "kiev", "bonn", "nice", "riga", "doha", "baku", "pune",
          "cork", "york", "graz", "linz", "bern", "ulm")


@dataclass(frozen=True)
class Example:
    """One task instance: the prompt the model reads and the answer it must produce."""

    prompt: str
    answer: str


def encode(text: str) -> list[int]:
    """Map characters to token ids.

    Raises:
        ParameterError: if ``text`` holds a character outside the vocabulary.
    """
    try:
        return [_CHAR_ID[c] for c in text]
    except KeyError as error:
        raise ParameterError(f"text holds a character outside the vocabulary: {error.args[0]!r} "
                             f"in text={text!r}") from None


def decode(ids: list[int]) -> str:
    """Map token ids back to text; special tokens are dropped."""
    return "".join(CHARS[i - len(_SPECIALS)] for i in ids if i >= len(_SPECIALS))


def addition(rng: random.Random, digits: int) -> Example:
    """``a+b=`` with two numbers of up to ``digits`` digits; the answer is the sum."""
    a, b = rng.randrange(10 ** digits), rng.randrange(10 ** digits)
    return Example(f"{a}+{b}=", str(a + b))


def reversal(rng: random.Random, length: int) -> Example:
    """A string of 2..``length`` letters followed by ``|``; the answer is it reversed."""
    text = "".join(rng.choice(string.ascii_lowercase[:16]) for _ in range(rng.randint(2, length)))
    return Example(f"{text}|", text[::-1])


def sorting(rng: random.Random, length: int) -> Example:
    """A string of 2..``length`` digits followed by ``|``; the answer is its digits sorted."""
    text = "".join(rng.choice(string.digits) for _ in range(rng.randint(2, length)))
    return Example(f"{text}|", "".join(sorted(text)))


def modular(rng: random.Random, modulus: int) -> Example:
    """``a+b%p=`` with ``a, b < p``; the answer is ``(a + b) mod p``."""
    a, b = rng.randrange(modulus), rng.randrange(modulus)
    return Example(f"{a}+{b}%{modulus}=", str((a + b) % modulus))


def copy_distractors(rng: random.Random, length: int) -> Example:
    """Copy the segment in ``(...)`` or ``[...]``, whichever the final query names.

    The prompt looks like ``xy(abc)z[defg]w?[``; the answer is ``defg``. Letters around
    and the other segment are distractors.
    """
    def letters(n: int) -> str:
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(n))

    round_part, square_part = letters(rng.randint(1, length)), letters(rng.randint(1, length))
    segments = [f"({round_part})", f"[{square_part}]"]
    rng.shuffle(segments)
    query = rng.choice("([")
    answer = round_part if query == "(" else square_part
    body = letters(rng.randint(0, 2)) + segments[0] + letters(rng.randint(0, 2)) + segments[1]
    return Example(f"{body}?{query}", answer)


def extractive_qa(rng: random.Random, entities: int) -> Example:
    """A passage of ``entities`` people (name, age, city) and a question on one of them.

    Prompt ``ann 23 rome;bob 41 oslo;?age bob=``, answer ``41``.
    """
    names = rng.sample(NAMES, entities)
    facts = [(name, str(rng.randint(10, 99)), rng.choice(CITIES)) for name in names]
    passage = "".join(f"{n} {a} {c};" for n, a, c in facts)
    name, age, city = rng.choice(facts)
    field = rng.choice(("age", "city"))
    return Example(f"{passage}?{field} {name}=", age if field == "age" else city)


TASKS: dict[str, Callable[[random.Random, int], Example]] = {
    "addition": addition, "reversal": reversal, "sorting": sorting, "modular": modular,
    "copy": copy_distractors, "qa": extractive_qa,
}

# Allowed difficulty range per task (inclusive); keeps sequences short and vocab valid.
DIFFICULTY_RANGE = {"addition": (1, 6), "reversal": (2, 16), "sorting": (2, 16),
                    "modular": (2, 199), "copy": (1, 10), "qa": (1, len(NAMES))}


def check_task(task: str, difficulty: int) -> None:
    """Raise ``ParameterError`` unless ``task`` is known and ``difficulty`` is in its range."""
    if task not in TASKS:
        raise ParameterError(f"task must be one of {sorted(TASKS)}, got task={task!r}")
    low, high = DIFFICULTY_RANGE[task]
    if not low <= difficulty <= high:
        raise ParameterError(f"difficulty for task {task!r} must be in [{low}, {high}], "
                             f"got difficulty={difficulty!r}")


def _draw_unique(make: Callable[[], Example], count: int, taken: set[str],
                 what: str) -> list[Example]:
    """Draw ``count`` examples whose prompts are not in ``taken`` (updated in place)."""
    out: list[Example] = []
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 50 * count + 1000:
            raise ParameterError(f"could not draw {count} distinct {what} examples: the task "
                                 f"has too few distinct prompts (got {len(out)})")
        example = make()
        if example.prompt not in taken:
            taken.add(example.prompt)
            out.append(example)
    return out


def make_split(task: str, difficulty: int, *, train_size: int, eval_size: int,
               seed: int) -> tuple[list[Example], list[Example]]:
    """A training set and a disjoint held-out set, each without repeated prompts.

    The held-out set depends on ``(task, difficulty, eval_size, seed)`` only, so runs that
    differ in training-set size are judged on the same questions.

    Args:
        task: a key of :data:`TASKS`.
        difficulty: the task's size parameter (digits, length, modulus, entities).
        train_size: number of distinct training examples (>= 1).
        eval_size: number of held-out examples (>= 1).
        seed: data seed.

    Returns:
        ``(train, held_out)`` lists of :class:`Example`.
    """
    check_task(task, difficulty)
    for name, value in (("train_size", train_size), ("eval_size", eval_size)):
        if value < 1:
            raise ParameterError(f"{name} must be >= 1, got {name}={value!r}")
    taken: set[str] = set()
    eval_rng = random.Random(f"eval/{task}/{difficulty}/{seed}")
    held_out = _draw_unique(lambda: TASKS[task](eval_rng, difficulty), eval_size, taken, "held-out")
    train_rng = random.Random(f"train/{task}/{difficulty}/{seed}")
    train = _draw_unique(lambda: TASKS[task](train_rng, difficulty), train_size, taken, "training")
    return train, held_out
