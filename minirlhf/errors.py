"""One exception type for bad user input, so the CLI can print one line instead of a traceback.

Raise `InputError("data.jsonl:12: field 'chosen' is missing")`; `minirlhf` prints the message and
exits with status 2. A run whose loss, reward or gradient became NaN or inf raises `TrainingDiverged`:
the input was fine, the optimisation was not, so it has its own one line and status 3 (a script can tell
"fix the command" from "lower the learning rate"). Anything else that goes wrong is a bug and keeps its
traceback.
"""


class InputError(Exception):
    """A problem with something the user passed: a file, a field, a flag. Message: `where: what`."""


def at(path, line: int, what: str) -> InputError:
    """InputError formatted as `file:line: what is wrong`."""
    return InputError(f"{path}:{line}: {what}")


class TrainingDiverged(Exception):
    """A loss, reward or gradient norm became NaN or inf. The last good checkpoint is kept. `minirlhf` prints
    the message and exits with status 3."""
