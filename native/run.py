"""supervisord's entry for a program: exec its argv with the environment `./stack up` saved for it.

Keeping the environment in a private JSON file avoids supervisord's quoting rules for secrets.
A second argument, the digest of the program's settings, is only there for supervisord to compare.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    os.execvpe(spec["argv"][0], spec["argv"], spec["env"])


if __name__ == "__main__":
    main()
