"""``samkit fiftyone ...``: put the ``@samkit/fiftyone`` plugin where FiftyOne looks for plugins.

Standard library only at import time (the ``samkit`` command imports every adapter's cli).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

PLUGIN_NAME = "@samkit/fiftyone"
PLUGIN_FILES = ("fiftyone.yml", "__init__.py")
INSTALL_HINT = 'FiftyOne is not installed; install it with: pip install "samkit[fiftyone]"'


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
