"""Network namespaces for fault tests: each board in its own namespace, joined to the host by
a veth pair with a private 10.200.x.0/30 (host end .1, board end .2). Nothing else is
addressed: the server listens on one pair's host end, the other boards reach that address
through their own pair. Needs root and iproute2 (``ip``); everything is removed on close,
even when the test fails."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

import pytest

SUBNET_PREFIX = "10.200"


def _ip(*args: str, namespace: str | None = None, check: bool = True) -> str:
    command = ["ip", *args] if namespace is None else ["ip", "-n", namespace, *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")
    return result.stdout


def skip_unless_possible() -> None:
    """Skip (with the reason) where namespaces cannot be made: no iproute2 or not root."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")


@dataclass(frozen=True)
class BoardLink:
    namespace: str
    host_if: str
    board_if: str
    host_address: str  # the host end: 10.200.x.1
    board_address: str  # the board end: 10.200.x.2

    def exec_prefix(self) -> list[str]:
        """Run a command inside this board's namespace."""
        return ["ip", "netns", "exec", self.namespace]


class NetworkLab:
    """Creates and removes the namespaces and veth pairs of one test."""

    def __init__(self) -> None:
        self.tag = f"sf{os.getpid() % 100000}"
        self.links: list[BoardLink] = []

    def _free_subnet(self) -> int:
        used = _ip("-o", "-4", "addr", "show")
        for third in range(1 + os.getpid() % 200, 255):
            if f" {SUBNET_PREFIX}.{third}." not in used:
                return third
        raise RuntimeError(f"no free {SUBNET_PREFIX}.x.0/30 subnet")

    def add_board(self, name: str) -> BoardLink:
        index = len(self.links)
        third = self._free_subnet()
        link = BoardLink(
            namespace=f"{self.tag}-{name}",
            host_if=f"{self.tag}h{index}",
            board_if=f"{self.tag}b{index}",
            host_address=f"{SUBNET_PREFIX}.{third}.1",
            board_address=f"{SUBNET_PREFIX}.{third}.2",
        )
        _ip("netns", "add", link.namespace)
        self.links.append(link)
        _ip("link", "add", link.host_if, "type", "veth", "peer", "name", link.board_if)
        _ip("link", "set", link.board_if, "netns", link.namespace)
        _ip("addr", "add", f"{link.host_address}/30", "dev", link.host_if)
        _ip("link", "set", link.host_if, "up")
        _ip(
            "addr",
            "add",
            f"{link.board_address}/30",
            "dev",
            link.board_if,
            namespace=link.namespace,
        )
        _ip("link", "set", link.board_if, "up", namespace=link.namespace)
        _ip("link", "set", "lo", "up", namespace=link.namespace)  # the SuperNode's own APIs
        return link

    def route(self, link: BoardLink, address: str) -> None:
        """Let the board reach ``address`` (on the host) through its own pair."""
        if address != link.host_address:
            _ip("route", "add", f"{address}/32", "via", link.host_address, namespace=link.namespace)

    def cut(self, link: BoardLink) -> None:
        """The access point goes away: the host end goes down, the board loses carrier."""
        _ip("link", "set", link.host_if, "down")

    def restore(self, link: BoardLink) -> None:
        _ip("link", "set", link.host_if, "up")

    def close(self) -> None:
        for link in self.links:
            _ip("link", "del", link.host_if, check=False)  # removes both ends
            _ip("netns", "del", link.namespace, check=False)
        self.links = []
