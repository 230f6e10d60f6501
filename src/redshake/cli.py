"""Command line: ``redshake CONFIG.toml`` (also installed as ``redis-shake``)."""

from __future__ import annotations

import argparse
import os
import platform
import sys

from . import __version__
from .errors import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, exit_code

USAGE = """\
usage: redshake CONFIG.toml
       SYNC=true|SCAN=true SHAKE_SRC_ADDRESS=host:port SHAKE_DST_ADDRESS=host:port redshake
       redshake verify CONFIG.toml | --source URL --target URL [options]  (see verify --help)
       redshake wait --converged CONFIG.toml [options]  (see wait --help)
       redshake version | --version | -v
       redshake --help

Runs the sync / restore described by CONFIG.toml (RedisShake v4 `shake.toml` or v3
`sync.toml` format). Env-only mode (RedisShake's container entrypoint): with SYNC=true
or SCAN=true and no config file, the config comes from the SHAKE_* variables.

exit codes: 0 done, 1 runtime failure, 2 bad config or bad input
"""


def version_line() -> str:
    return f"redshake version {__version__} {sys.platform}/{platform.machine()} (python {platform.python_version()})"


def main(argv: list[str] | None = None) -> int:
    from .config.envmode import env_mode

    args = list(sys.argv[1:] if argv is None else argv)
    mode = env_mode(os.environ)
    if not args and mode:
        return _run_env(mode)
    if not args:
        sys.stderr.write("config file not found: give the path of a config file\n\n" + USAGE)
        return EXIT_BAD_INPUT
    if args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return EXIT_OK
    if args[0] in ("-v", "--version", "version"):
        print(version_line())
        return EXIT_OK
    if args[0] in ("verify", "wait"):
        from .verify import cli as verify_cli

        return (verify_cli.main_verify if args[0] == "verify" else verify_cli.main_wait)(args[1:])
    p = argparse.ArgumentParser(prog="redshake", usage=USAGE, add_help=False)
    p.add_argument("config")
    ns, extra = p.parse_known_args(args)
    if extra:
        sys.stderr.write(f"unexpected arguments: {' '.join(extra)}\n\n" + USAGE)
        return EXIT_BAD_INPUT

    from pathlib import Path

    if mode:  # the container's default config path is given but the variables say env-only
        if Path(ns.config).exists():
            sys.stderr.write(
                f"config error: {mode.upper()}=true (env-only mode) and the config file "
                f"{ns.config} both given: unset {mode.upper()} or remove the file\n"
            )
            return EXIT_BAD_INPUT
        return _run_env(mode)

    from .config.loader import ConfigError, load_config

    try:
        cfg = load_config(ns.config)
    except ConfigError as e:
        sys.stderr.write(f"config error: {e}\n")
        return exit_code(e)
    except FileNotFoundError:
        sys.stderr.write(f"config file not found: {ns.config}\n")
        return EXIT_BAD_INPUT
    return _run(cfg)


def _run_env(mode: str) -> int:
    from .config.envmode import env_config_text
    from .config.loader import ConfigError, load_config_text

    try:
        cfg = load_config_text(env_config_text(mode, os.environ))
    except ConfigError as e:
        sys.stderr.write(f"config error ({mode.upper()}=true env-only mode): {e}\n")
        return exit_code(e)
    return _run(cfg)


def _run(cfg) -> int:
    """Run a config; the one place where what escapes the run becomes an exit code (the
    errors of the house carry theirs: see errors.py)."""
    from .pipeline import run
    from .workdir import WorkDirLocked

    try:
        return run(cfg)
    except WorkDirLocked as e:
        sys.stderr.write(f"{e}\n")
        return exit_code(e)
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except Exception as e:  # a defect: one line for the user, the traceback in the debug log
        import logging

        logging.getLogger("redshake").debug("unexpected error", exc_info=True)
        sys.stderr.write(f"redshake failed: {type(e).__name__}: {e} (log_level = \"debug\" logs where)\n")
        return exit_code(e)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
