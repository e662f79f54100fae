"""Fixtures for the model tests: no test here may reach the network (only the loopback stand-in Hub)."""

import socket

import pytest

_connect, _create_connection = socket.socket.connect, socket.create_connection


def _loopback(address) -> bool:
    return isinstance(address, tuple) and address[0] in {"127.0.0.1", "::1", "localhost"}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any connection beyond 127.0.0.1, so a hidden weight download shows up as an error."""

    def connect(self, address):
        if not _loopback(address):
            raise AssertionError(f"a model test tried to reach the network ({address})")
        return _connect(self, address)

    def create_connection(address, *args, **kwargs):
        if not _loopback(address):
            raise AssertionError(f"a model test tried to reach the network ({address})")
        return _create_connection(address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", create_connection)
