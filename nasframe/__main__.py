import signal
import sys


def _stop(signum, frame):  # SIGTERM before the CLI installs its own handler
    raise SystemExit(143)


signal.signal(signal.SIGTERM, _stop)

from nasframe.cli import main  # noqa: E402

sys.exit(main())
