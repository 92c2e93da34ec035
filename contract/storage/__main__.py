"""The job store from a shell, for operators: `python -m contract.storage create-bucket` or `check`.

Both read the same settings as the API and the workers (STORAGE_URL and the AWS variables; DATA_DIR
where STORAGE_URL is unset). `create-bucket` makes the bucket (nothing happens to one that is
already there), then checks it; `check` writes and removes a small object and says what is wrong
when it cannot. One line on stdout, or one on stderr and exit status 2.
"""

import argparse
import sys

from pydantic import ValidationError

from contract.options import first_error
from contract.settings import Settings
from contract.storage import StorageError, open_store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contract.storage", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["create-bucket", "check"])
    action = parser.parse_args(argv).action
    try:
        store = open_store(Settings())
        created = store.create() if action == "create-bucket" else False
        store.check()
    except (ValidationError, ValueError, StorageError) as exc:
        reason = first_error(exc)[1] if isinstance(exc, ValidationError) else str(exc)
        print(f"contract.storage {action}: error: {reason}", file=sys.stderr)
        return 2
    made = "created; " if created else ("already there; " if action == "create-bucket" else "")
    print(f"{store}: {made}reachable and writable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
