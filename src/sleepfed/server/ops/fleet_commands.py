"""The ``sleepfed-server`` commands about who may join: ``boards`` (register, list, revoke
enrolled boards, recover a damaged registry) and ``certs`` (a CA and a server certificate
for demos and tests)."""

from __future__ import annotations

import argparse
import grp
import json
import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sleepfed.server.ops.config import ServerConfig, load_config
from sleepfed.server.ops.exit_codes import EXIT_CONFIG

if TYPE_CHECKING:
    from sleepfed.server.fleet.boards import Registry


def _register(args: argparse.Namespace, registry: Registry) -> bool:
    """Add the requests (files, CSV) to the registry; False if none was given."""
    from sleepfed.provisioning.request import parse_request
    from sleepfed.server.fleet.boards import parse_csv

    requests = [parse_request(Path(f).read_text()) for f in args.requests]
    if args.csv:
        requests += parse_csv(Path(args.csv))
    if not requests:
        return False
    for request in requests:
        print(f"{request.board_id}: {registry.add(request)}")
    return True


def _apply(config: ServerConfig, registry: Registry) -> None:
    """Hand the registry to a running SuperLink now; otherwise ``run`` does when it starts."""
    from sleepfed.server.ops.status import accepts_connections

    if accepts_connections("127.0.0.1", config.superlink_port, 2.0):
        for line in registry.sync():
            print(line)
    else:
        print("the server is not running: the change applies when it starts")


def _list(boards: list[dict[str, object]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(boards, indent=2))
        return
    for b in boards:
        print(f"{b['board_id']:24s} {b['status']:15s} node {b['node_id'] or '-'}")
    if not boards:
        print("no boards enrolled")


def cmd_boards(args: argparse.Namespace) -> int:
    from sleepfed.provisioning.request import RequestError
    from sleepfed.server.fleet.boards import Registry

    config = load_config(args.config)
    if args.action == "recover":
        from sleepfed.server.fleet.registry_recovery import recover_registry

        print("\n".join(recover_registry(config.state_dir, apply=args.yes)))
        return 0
    registry = Registry(config)  # a registry that cannot be used: StateFileError, EXIT_STATE
    try:
        if args.action == "register" and not _register(args, registry):
            print("sleepfed-server boards register: no request given", file=sys.stderr)
            return EXIT_CONFIG
        if args.action == "revoke":
            for board_id in args.boards:
                registry.revoke(board_id)
                print(f"{board_id}: revoked")
        if args.action in ("register", "revoke"):
            _apply(config, registry)
        boards = registry.boards()
        if args.action == "list":
            _list(boards, args.json)
    except (RequestError, OSError) as error:
        print(f"sleepfed-server boards: {error}", file=sys.stderr)
        return 1
    finally:
        registry.close()
    return 0


def _make_parents(out: Path) -> None:
    """The folders above ``out`` that do not exist yet, 0755 like any system folder: the
    command runs under umask 077, and ``--out /etc/sleepfed/tls`` must not make
    ``/etc/sleepfed`` (where server.toml goes) a folder the service cannot enter."""
    for folder in reversed(out.absolute().parents):
        if not folder.exists():
            os.mkdir(folder)
            os.chmod(folder, 0o755)


def _share_server_key(key: Path, group: int) -> None:
    """The service reads the server's key through its group: the key 0640, its folder
    entered by the group; the CA's key (same folder) stays 0600, the owner's alone."""
    folder = key.parent
    os.chown(folder, -1, group)
    folder.chmod(stat.S_IMODE(folder.stat().st_mode) | 0o050)
    os.chown(key, -1, group)
    key.chmod(0o640)


def cmd_certs(args: argparse.Namespace) -> int:
    from sleepfed.provisioning.pki import ensure_demo_pki, fingerprint_sha256

    group = None
    if args.group:
        try:
            group = grp.getgrnam(args.group).gr_gid
        except KeyError:
            print(f"sleepfed-server certs: --group: no group {args.group!r}", file=sys.stderr)
            return EXIT_CONFIG
    _make_parents(Path(args.out))
    paths = ensure_demo_pki(Path(args.out), args.host)
    if group is not None:
        _share_server_key(paths["key"], group)
    for name, path in paths.items():
        print(f"{name:7s} {path}")
    print(
        f"CA SHA-256 fingerprint (give it to boards out of band): {fingerprint_sha256(paths['ca'])}"
    )
    return 0
