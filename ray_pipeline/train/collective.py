"""Allreduce of small float64 vectors between the Ray Train workers of the logistic-regression loop.

A star over TCP: every rank sends its vector to rank 0, which reduces them in rank order and
sends the result back, so every rank gets bit-identical values and the same worker count always
sums in the same order. The loop exchanges a gradient (plus, for Newton, a d x d Hessian) per
step: small messages, where a round trip on one machine costs tens of microseconds.

Why not XGBoost's collective (which the loop used before): Ray Train's XGBoostConfig backend
imports xgboost in the controller and every worker and starts its tracker and collective, a fixed
cost every run paid for a few small messages (docs/benchmarks.md).
Rank 0 opens the socket; the other ranks learn its address through Ray Train's
`broadcast_from_rank_zero`. A peer that dies closes its socket: the others get an error, and Ray
Train restarts the worker group from the last checkpoint.
"""

from __future__ import annotations

import socket
import struct

import numpy as np

from ray_pipeline.train import session

_HEADER = struct.Struct("!Q")  # payload bytes
_TIMEOUT_S = 1800.0  # a peer silent this long is stuck, not slow: fail so Ray Train restarts the group
_group: "StarGroup | None" = None


class StarGroup:
    """One worker's end of the star: rank 0 holds a socket per other rank, the others one to rank 0."""

    def __init__(self, rank: int, world_size: int, key: str) -> None:
        from ray.train.collective import broadcast_from_rank_zero
        from ray.util import get_node_ip_address

        self.rank, self.world_size, self.key = rank, world_size, key
        self.peers: list[socket.socket] = []
        server = None
        address = None
        if rank == 0:
            server = socket.create_server(("", 0), backlog=world_size)
            address = (get_node_ip_address(), server.getsockname()[1])
        address = broadcast_from_rank_zero(address)  # also a barrier: rank 0 listens before anyone connects
        if rank == 0:
            assert server is not None
            by_rank: dict[int, socket.socket] = {}
            server.settimeout(_TIMEOUT_S)
            while len(by_rank) < world_size - 1:
                conn, _ = server.accept()
                _setup(conn)
                by_rank[int(_recv_array(conn)[0])] = conn
            server.close()
            self.peers = [by_rank[r] for r in range(1, world_size)]
        else:
            conn = socket.create_connection(tuple(address), timeout=_TIMEOUT_S)
            _setup(conn)
            _send_array(conn, np.array([rank], dtype=np.float64))
            self.peers = [conn]

    def allreduce(self, values: np.ndarray, op: str) -> np.ndarray:
        """The sum (or max) of `values` over every rank, identical on all of them."""
        values = np.ascontiguousarray(values, dtype=np.float64)
        if self.rank != 0:
            _send_array(self.peers[0], values)
            return _recv_array(self.peers[0]).reshape(values.shape)
        out = values.copy()
        for conn in self.peers:  # rank order: the same sum, bit for bit, on every run
            other = _recv_array(conn).reshape(values.shape)
            out = out + other if op == "sum" else np.maximum(out, other)
        for conn in self.peers:
            _send_array(conn, out)
        return out


def allreduce(values: np.ndarray, op: str = "sum") -> np.ndarray:
    """Sum (or max) across the Ray Train workers of this run; the identity for one worker."""
    global _group

    ctx = session.get_context()
    world_size = ctx.get_world_size()
    if world_size == 1:
        return np.asarray(values, dtype=np.float64)
    key = f"{ctx.get_experiment_name()}/{world_size}"
    if _group is None or _group.key != key:  # first call of this run in this worker process
        _group = StarGroup(ctx.get_world_rank(), world_size, key)
    return _group.allreduce(values, op)


def _setup(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small messages: no Nagle delay
    conn.settimeout(_TIMEOUT_S)


def _send_array(conn: socket.socket, values: np.ndarray) -> None:
    payload = values.tobytes()
    conn.sendall(_HEADER.pack(len(payload)) + payload)


def _recv_array(conn: socket.socket) -> np.ndarray:
    (size,) = _HEADER.unpack(_recv_exactly(conn, _HEADER.size))
    return np.frombuffer(_recv_exactly(conn, size), dtype=np.float64)


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = conn.recv_into(view[got:])
        if n == 0:
            raise ConnectionError(f"allreduce: a peer closed its connection (rank died?) after {got} of {size} bytes")
        got += n
    return bytes(buf)
