"""Locust entry point: `locust -f loadtests/locustfile.py --host URL ...` (see loadtests/README.md)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

try:
    import loadtests  # noqa: F401 - installed with the project (pip install -e .)
except ImportError:  # run from a plain checkout: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gevent
from locust import events
from locust.runners import LocalRunner, MasterRunner, WorkerRunner

from loadtests.options import add_arguments, request_rate_from_argv, settings_from
from loadtests.recording import Recorder
from loadtests.shapes import shape_from_argv
from loadtests.users import STATE, load_workload

logger = logging.getLogger("loadtests")

# Locust runs every User class this module defines: export the closed-loop user, or with --request-rate
# the open-loop one (one per process, -u <processes>), never both
if request_rate_from_argv(sys.argv) > 0:
    from loadtests.openloop import OpenLoopUser

    __all__ = ["OpenLoopUser"]
else:
    from loadtests.users import LLMStreamUser

    __all__ = ["LLMStreamUser"]

# Locust picks up any LoadTestShape in this module; export the one --shape names (none: -u/-r/-t apply)
_shape = shape_from_argv(sys.argv)
if _shape is not None:
    globals()[_shape.__name__] = _shape


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    add_arguments(parser)


def _prepare(environment: Any) -> None:
    """Validate the options, load the prompts, set up this process's recorder (raises on bad input)."""
    settings = settings_from(environment.parsed_options)
    load_workload(settings)
    STATE.settings = settings
    if STATE.recorder is None or STATE.recorder.records_dir != settings.records_dir:
        STATE.recorder = Recorder(
            environment, settings.records_dir, settings.cpu_warn_percent, settings.lag_warn_ms
        )
    STATE.model = None  # re-resolve: the host or --model may have changed (web UI)


def _graceful_master_quit(runner: MasterRunner) -> None:
    """Make the master stop the workers (and collect their final stats) before it quits.

    Locust's MasterRunner.quit() sends "quit" and waits only 0.5 s for the workers' last stats report; a
    busy worker needs longer to stop hundreds of users, and Locust's totals then miss its final seconds.
    stop() sends "stop" and waits until every worker reports "client_stopped", which each worker sends
    after the stats it flushes in `_test_stop` below (one ordered channel), so no count is lost.
    """
    quit_now = runner.quit

    def quit_after_stop() -> None:
        runner.stop()
        quit_now()

    runner.quit = quit_after_stop  # type: ignore[method-assign]


@events.init.add_listener
def _init(environment: Any, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        _graceful_master_quit(environment.runner)
    if environment.parsed_options is None:
        return
    try:
        settings_from(environment.parsed_options)
        if isinstance(environment.runner, LocalRunner):
            # fail before the test starts; workers get their options from the master at test start
            _prepare(environment)
    except Exception as e:
        logger.error("cannot start the load test: %s", e)
        sys.exit(2)
    if isinstance(environment.runner, WorkerRunner):
        # workers take their options from the master at test start, and load the prompts then, after the
        # master has armed --run-time (seconds of a short step on a busy machine); load them now from this
        # process's own options, identical for --processes forks (test start reuses them when they match)
        try:
            load_workload(settings_from(environment.parsed_options))
        except Exception as e:  # the master's options decide at test start
            logger.debug("prompts not preloaded: %s", e)
    # gevent's loop clock is cached and has not moved since the imports and the prompt loading above
    # (seconds on a busy machine); Locust arms its --run-time timer right after this event, against that
    # stale clock, so without this every step ended that much early
    gevent.get_hub().loop.update_now()


@events.test_start.add_listener
def _test_start(environment: Any, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        return  # the master runs no users: no records, no prompts
    try:
        _prepare(environment)
    except Exception as e:
        logger.error("cannot start the load test: %s", e)
        environment.process_exit_code = 2
        STATE.settings = None
        gevent.spawn(environment.runner.quit)  # not from inside the runner's own start()
        return
    assert STATE.recorder is not None
    if not STATE.settings or not STATE.settings.records_dir:
        logger.warning("no --records-dir: per-request records are not written (Locust stats only)")
    STATE.recorder.monitor.start()


@events.test_stopping.add_listener
def _test_stopping(environment: Any, **_: Any) -> None:
    # before the users are stopped: stopping hundreds of them and writing their cut records lags the loop,
    # and that lag belongs to the shutdown, not to the measured window
    if STATE.recorder is not None:
        STATE.recorder.monitor.stop()


@events.test_stop.add_listener
def _test_stop(environment: Any, **_: Any) -> None:
    if STATE.recorder is not None:
        STATE.recorder.monitor.stop()
        logger.info(STATE.recorder.monitor.summary())
        STATE.recorder.close()
    runner = environment.runner
    if isinstance(runner, WorkerRunner) and hasattr(runner, "_send_stats"):
        runner._send_stats()  # every user has stopped: this report is final (see _graceful_master_quit)
