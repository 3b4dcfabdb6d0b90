"""``open_reuseport_sockets``: one listening socket per intake process, all on one port."""

from __future__ import annotations

import socket

import pytest

from zonemta.conf import config_from_dict
from zonemta.inbound.interfaces import interface_settings
from zonemta.inbound.listener import open_reuseport_sockets
from zonemta.transport.interface import InterfaceSettings


def interface(port: int) -> InterfaceSettings:
    return interface_settings(
        config_from_dict({"smtp": {"feeder": {"host": "127.0.0.1", "port": port}}}), "feeder"
    )


def test_every_set_listens_on_the_same_port_and_each_takes_connections() -> None:
    sets = open_reuseport_sockets(interface(0), 3)
    try:
        assert [len(group) for group in sets] == [1, 1, 1]
        ports = {group[0].getsockname()[1] for group in sets}
        assert len(ports) == 1 and 0 not in ports
        port = ports.pop()
        assert len({group[0].fileno() for group in sets}) == 3
        # Connections from many source ports land on more than one of the sockets.
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        taken = []
        for group in sets:
            group[0].setblocking(False)
            count = 0
            while True:
                try:
                    accepted, _ = group[0].accept()
                except BlockingIOError:
                    break
                accepted.close()
                count += 1
            taken.append(count)
        assert sum(taken) == 40 and sum(1 for n in taken if n) >= 2, taken
        for client in clients:
            client.close()
    finally:
        for group in sets:
            for sock in group:
                sock.close()


def test_a_port_in_use_by_another_listener_is_refused() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            open_reuseport_sockets(interface(taken.getsockname()[1]), 2)
