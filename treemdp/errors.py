"""The one exception type for bad user input (the CLI turns it into ``error: ...`` and exit 2),
and reading a user's JSON file with errors of that kind."""

import json
from pathlib import Path


class UserError(ValueError):
    """Input a user can fix (bad file, bad value, bad name). The message is one line."""


class TrainingDiverged(UserError):
    """The loss or the probabilities became NaN/inf (toy and LLM training alike)."""


def read_json_file(path, what: str):
    """The JSON value in ``path``, or a one-line UserError naming ``what`` (e.g. "data file") and the path."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{what} {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {str(path)!r} is a directory") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {what} {str(path)!r}: {e}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {str(path)!r} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
