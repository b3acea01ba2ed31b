"""The API role's command (``deploy/entrypoint.sh api``): gunicorn with deploy/gunicorn.conf.py,
started only once the settings are known to be valid.

gunicorn reads WEB_CONCURRENCY by itself, as the default of its ``workers``, when it is imported
and before it reads its config file: a value it cannot take (``two``, ``-1``) ended in its own
plain-text error or a traceback, and the config's ``invalid_settings`` line never came. So the
config runs here first (a bad setting: one ``invalid_settings`` JSON line, exit 2), and gunicorn
then gets WEB_CONCURRENCY as the number the settings parsed it to. JOB_RESULT_DIR is made here
too, or refused the same way (``check_job_result_dir``).

A worker that cannot start because of a setting of the store (it refuses the API's tables:
``STORE_MAX_MEMORY`` below what an empty store uses, ``STORE_MAX_TABLES`` below the API's
tables) fails to boot at once, and gunicorn exits 3, which supervisord restarts as a crash.
Such a worker leaves the reason in a file at a path this process chose
(``START_REFUSAL_FILE_ENV``): then the last line is ``api_failed_to_start`` with that reason,
and the exit 2, a configuration error that `make run` stops on at once, as for
``invalid_settings``.
"""

from __future__ import annotations

import os
import runpy
import secrets
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

CONFIG = Path(__file__).with_name("gunicorn.conf.py")
WORKER_BOOT_ERROR = 3  # gunicorn's exit when a worker failed to boot ("Worker failed to boot.")
EXIT_CONFIGURATION = 2  # as for invalid_settings: supervisord.conf's exitcodes for the api


def main(argv: list[str]) -> None:
    # Import the application from the working directory (/app in the image), as gunicorn's
    # own command does (its ``chdir`` setting), not from this script's directory.
    sys.path[0] = os.getcwd()
    config = runpy.run_path(str(CONFIG))  # exits 2 on invalid settings
    check_job_result_dir()
    os.environ["WEB_CONCURRENCY"] = str(config["workers"])
    from gunicorn.app.wsgiapp import run
    from gunicorn.errors import HaltServer

    refusal_file = make_refusal_file()
    master = os.getpid()
    sys.argv = ["gunicorn", "--config", str(CONFIG), *argv]
    try:
        run()
    except (SystemExit, HaltServer) as exc:
        # A second worker failing to boot while gunicorn halts for the first one interrupts
        # that halt: its HaltServer leaves run() (gunicorn 27), after every worker was told
        # to stop. And the workers are forked inside run(): their own exit passes here too.
        code = exc.exit_status if isinstance(exc, HaltServer) else exc.code
        if os.getpid() != master or code != WORKER_BOOT_ERROR:
            raise
        reason = read_refusal(refusal_file)
        if not reason:
            raise
        refuse_to_start(reason, config["log_start_failure"])
    finally:
        if refusal_file is not None and os.getpid() == master:
            refusal_file.unlink(missing_ok=True)


def check_job_result_dir() -> None:
    """JOB_RESULT_DIR made as the job runner makes it, or one ``invalid_settings`` line and
    exit 2, as gunicorn.conf.py does for PROMETHEUS_MULTIPROC_DIR: a directory the workers
    cannot write failed every export job (INTERNAL_ERROR) in a service that looked healthy."""
    import structlog

    from api.logs import configure_logging
    from api.settings import get_settings, job_result_dir_error

    error = job_result_dir_error(get_settings())
    if error is not None:
        configure_logging("INFO")  # as gunicorn.conf.py's: seen whatever LOG_LEVEL says
        structlog.get_logger("api").error("invalid_settings", errors=error)
        sys.exit(EXIT_CONFIGURATION)


def make_refusal_file() -> Path | None:
    """A path no file has yet, named to the workers (``START_REFUSAL_FILE_ENV``): the first
    worker refusing to start creates it (owner-only, never over an existing file). Not made
    here: stopped during gunicorn's wait for the store (by the default action of SIGTERM, no
    clean-up), this process would leave it behind. None without a temporary directory: then
    a refusal ends as gunicorn ends it, "Worker failed to boot." and exit 3."""
    from api.settings import START_REFUSAL_FILE_ENV

    try:
        folder = tempfile.gettempdir()
    except OSError:
        return None
    path = Path(folder) / f"memdb-api-start-{secrets.token_hex(8)}"  # unguessable
    os.environ[START_REFUSAL_FILE_ENV] = str(path)
    return path


def read_refusal(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text("utf-8", "replace").strip()
    except OSError:
        return ""


def refuse_to_start(reason: str, log_start_failure: Callable[..., None]) -> NoReturn:
    """The last line (after gunicorn's "Reason: Worker failed to boot."), written whatever
    LOG_LEVEL says (gunicorn.conf.py's ``log_start_failure``), and exit 2."""
    log_start_failure("api_failed_to_start", error=reason)
    sys.exit(EXIT_CONFIGURATION)


if __name__ == "__main__":
    main(sys.argv[1:])
