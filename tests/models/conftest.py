"""Fixtures for the model tests: no test here may reach the network."""

import socket

import pytest


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any attempt to open a connection, so a hidden weight download shows up as an error."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
