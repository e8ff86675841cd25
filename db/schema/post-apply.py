"""yoyo post-apply hook: re-applies db/functions and db/policies after `yoyo apply`.

yoyo runs it only when some migration was pending; `keen-db migrate` re-applies them on every
run itself. A release that changes only functions or policies adds a small marker migration so
that a plain `yoyo apply` sees something pending.
"""

import sys
from pathlib import Path

from yoyo import step

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from keen_db.deploy import apply_repeatables

steps = [step(apply_repeatables)]
