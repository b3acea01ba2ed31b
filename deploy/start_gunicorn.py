"""The API role's command (``deploy/entrypoint.sh api``): gunicorn with deploy/gunicorn.conf.py,
started only once the settings are known to be valid.

gunicorn reads WEB_CONCURRENCY by itself, as the default of its ``workers``, when it is imported
and before it reads its config file: a value it cannot take (``two``, ``-1``) ended in its own
plain-text error or a traceback, and the config's ``invalid_settings`` line never came. So the
config runs here first (a bad setting: one ``invalid_settings`` JSON line, exit 2), and gunicorn
then gets WEB_CONCURRENCY as the number the settings parsed it to.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

CONFIG = Path(__file__).with_name("gunicorn.conf.py")


def main(argv: list[str]) -> None:
    # Import the application from the working directory (/app in the image), as gunicorn's
    # own command does (its ``chdir`` setting), not from this script's directory.
    sys.path[0] = os.getcwd()
    config = runpy.run_path(str(CONFIG))  # exits 2 on invalid settings
    os.environ["WEB_CONCURRENCY"] = str(config["workers"])
    from gunicorn.app.wsgiapp import run

    sys.argv = ["gunicorn", "--config", str(CONFIG), *argv]
    run()


if __name__ == "__main__":
    main(sys.argv[1:])
