"""The cap on connections in their handshake, counted per listener and per peer address.

A connection is counted from its accept until its HELLO is accepted or it closes
(``connection.StoreConnection``): at most ``MAX_HANDSHAKES`` on each listener, the Unix socket's
and TCP's counted apart, and of those on TCP at most ``MAX_HANDSHAKES_PER_ADDRESS`` from one peer
address. Peers on the network that never authenticate cannot lock out the Unix socket's clients,
nor can one host take every TCP slot.
"""

from __future__ import annotations

from .errors import StoreBusy

MAX_HANDSHAKES = 128
"""Connections not greeted yet at once on each listener (each may hold a handshake frame for up
to STORE_HANDSHAKE_TIMEOUT); past it a new one is refused as past ``connection.MAX_CLIENTS``."""
MAX_HANDSHAKES_PER_ADDRESS = 16
"""Of those on TCP, the ones from one peer address: one host cannot take every slot."""


class HandshakeSlots:
    """The connections not greeted yet, counted apart for the Unix socket and for TCP, and on
    TCP by peer address. Apart, because a network peer cannot authenticate but can connect as
    fast as it likes: on one count, 128 idle ones would refuse every API worker on the local
    socket (owner-only) too, for as long as they kept reconnecting."""

    __slots__ = ("by_address", "tcp", "unix")

    def __init__(self) -> None:
        self.unix = 0
        self.tcp = 0
        self.by_address: dict[str, int] = {}

    def __len__(self) -> int:
        return self.unix + self.tcp

    def take(self, address: str | None) -> StoreBusy | None:
        """Count a connection from ``address`` (``None``: the Unix socket), or return the
        error it is refused with."""
        if (self.unix if address is None else self.tcp) >= MAX_HANDSHAKES:
            return StoreBusy("too many connections in their handshake", {"max": MAX_HANDSHAKES})
        if address is None:
            self.unix += 1
            return None
        mine = self.by_address.get(address, 0)
        if mine >= MAX_HANDSHAKES_PER_ADDRESS:
            return StoreBusy(
                "too many connections in their handshake from this address",
                {"max": MAX_HANDSHAKES_PER_ADDRESS},
            )
        self.tcp += 1
        self.by_address[address] = mine + 1
        return None

    def release(self, address: str | None) -> None:
        if address is None:
            self.unix -= 1
            return
        self.tcp -= 1
        mine = self.by_address.pop(address) - 1
        if mine:
            self.by_address[address] = mine
