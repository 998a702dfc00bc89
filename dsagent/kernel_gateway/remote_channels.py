"""The kernel websocket of a remote Jupyter server (``/api/kernels/{id}/channels``).

Speaks the ``v1.kernel.websocket.jupyter.org`` binary subprotocol when the
server offers it (the server then forwards the kernel's message parts without
re-encoding them) and the legacy JSON protocol otherwise.

Why ``TCP_QUICKACK``: tornado's websocket server leaves Nagle's algorithm on,
so of the burst of small frames one cell produces (busy, execute_input,
result, idle, reply) each waits until the previous one is ACKed, and Linux
delays that ACK by ~40 ms. ``1+1`` took ~48 ms that way; acknowledging at
once on our side brings it to ~5 ms. We cannot change the server's socket,
only ours.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import uuid
from datetime import datetime, timezone
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State

from dsagent.kernel_gateway.remote_http import ServerAddress, refused, unreachable

__all__ = ["V1_PROTOCOL", "ChannelClosed", "KernelChannel"]

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
PROTOCOL_VERSION = "5.3"
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class ChannelClosed(Exception):
    """The websocket dropped; the caller decides whether to reconnect."""


class _QuickAckConnection(ClientConnection):
    """A websocket client connection that ACKs every segment at once (see the module docstring)."""

    def data_received(self, data: bytes) -> None:
        sock = self.transport.get_extra_info("socket")
        if sock is not None and _QUICKACK is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:
                pass
        super().data_received(data)


def encode_v1(channel: str, msg: dict[str, Any]) -> bytes:
    """A message as one v1 binary frame: offsets, channel name, then the JSON parts."""
    parts = [json.dumps(msg[key]).encode() for key in ("header", "parent_header", "metadata", "content")]
    name = channel.encode()
    offsets = [8 * (len(parts) + 3)]
    offsets.append(offsets[-1] + len(name))
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    head = struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets)
    return b"".join([head, name, *parts])


def decode_v1(frame: bytes) -> dict[str, Any]:
    count = int.from_bytes(frame[:8], "little")
    offsets = struct.unpack_from(f"<{count}Q", frame, 8)
    channel = frame[offsets[0] : offsets[1]].decode()
    parts = [frame[offsets[i] : offsets[i + 1]] for i in range(1, count - 1)]
    msg = {
        "channel": channel,
        "header": json.loads(parts[0]),
        "parent_header": json.loads(parts[1]),
        "metadata": json.loads(parts[2]),
        "content": json.loads(parts[3]),
        "buffers": parts[4:],
    }
    msg["msg_type"] = msg["header"].get("msg_type")
    return msg


def decode_legacy(frame: str | bytes) -> dict[str, Any]:
    """A legacy frame: JSON text, or (with binary buffers) a 4-byte-offset table, JSON, buffers."""
    if isinstance(frame, str):
        msg = json.loads(frame)
    else:
        count = int.from_bytes(frame[:4], "big")
        offsets = [int.from_bytes(frame[4 * (i + 1) : 4 * (i + 2)], "big") for i in range(count)] + [len(frame)]
        msg = json.loads(frame[offsets[0] : offsets[1]])
        msg["buffers"] = [frame[offsets[i] : offsets[i + 1]] for i in range(1, count)]
    msg.setdefault("msg_type", msg.get("header", {}).get("msg_type"))
    return msg


class KernelChannel:
    """One websocket to one kernel; a reader task queues every message it receives.

    The same ``session_id`` is used on every (re)connect, so the server replays
    what it buffered while we were away.
    """

    def __init__(self, address: ServerAddress, kernel_id: str, open_timeout: float = 30.0) -> None:
        self.address = address
        self.kernel_id = kernel_id
        self.session_id = uuid.uuid4().hex
        self.open_timeout = open_timeout
        self.subprotocol: str | None = None
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    @property
    def connected(self) -> bool:
        return self._ws is not None and self._ws.state is State.OPEN and self._reader is not None and not self._reader.done()

    async def connect(self, *, fresh: bool = False) -> None:
        """Open (or reopen) the websocket; raises ``KernelServerError`` when refused or unreachable.

        ``fresh`` uses a new session id, so the server builds new kernel channels
        instead of reusing (and replaying) those it kept for the old one.
        """
        await self.close()
        if fresh:
            self.session_id = uuid.uuid4().hex
        url = self.address.ws(f"kernels/{self.kernel_id}/channels") + f"?session_id={self.session_id}"
        try:
            ws = await websockets.connect(
                url,
                additional_headers=self.address.headers,
                subprotocols=[V1_PROTOCOL],  # type: ignore[list-item]
                create_connection=_QuickAckConnection,
                open_timeout=self.open_timeout,
                max_size=None,  # a cell's output is capped by max_output_bytes, not here
                compression=None,  # loopback and LAN: deflate costs more than it saves
                close_timeout=2.0,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise refused(self.address, status, "the kernel websocket") from exc
            raise ChannelClosed(f"websocket refused with HTTP {status}") from exc
        except TimeoutError as exc:
            # the server accepted the connection but its kernel did not answer in time
            raise ChannelClosed(f"the server did not open the kernel websocket within {self.open_timeout:g}s") from exc
        except (OSError, InvalidHandshake) as exc:
            raise unreachable(self.address, exc) from exc
        self._ws = ws
        self.subprotocol = ws.subprotocol
        self._queue = asyncio.Queue()
        self._reader = asyncio.create_task(self._read(ws, self._queue))

    async def _read(self, ws: ClientConnection, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        decode = decode_v1 if ws.subprotocol == V1_PROTOCOL else decode_legacy
        try:
            async for frame in ws:
                queue.put_nowait(decode(frame))  # type: ignore[arg-type]
        except ConnectionClosed:
            pass
        finally:
            queue.put_nowait(None)  # tells the consumer the socket is gone

    async def send(self, channel: str, msg_type: str, content: dict[str, Any]) -> str:
        """Send one request; its msg_id. Raises ``ChannelClosed`` if the socket is down."""
        if not self.connected:
            raise ChannelClosed("not connected")
        msg_id = uuid.uuid4().hex
        msg = {
            "header": {
                "msg_id": msg_id,
                "msg_type": msg_type,
                "username": "dsagent",
                "session": self.session_id,
                "date": datetime.now(timezone.utc).isoformat(),
                "version": PROTOCOL_VERSION,
            },
            "parent_header": {},
            "metadata": {},
            "content": content,
        }
        try:
            if self.subprotocol == V1_PROTOCOL:
                await self._ws.send(encode_v1(channel, msg))  # type: ignore[union-attr]
            else:
                await self._ws.send(json.dumps({**msg, "channel": channel, "buffers": []}))  # type: ignore[union-attr]
        except ConnectionClosed as exc:
            raise ChannelClosed(str(exc)) from exc
        return msg_id

    async def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next message, None after ``timeout`` seconds of silence; ``ChannelClosed`` when the socket dropped."""
        try:
            msg = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None
        if msg is None:
            self._queue.put_nowait(None)  # stays closed for later callers too
            raise ChannelClosed("the kernel websocket closed")
        return msg

    def drain(self) -> None:
        """Forget queued messages (those of earlier requests)."""
        while not self._queue.empty():
            if self._queue.get_nowait() is None:
                self._queue.put_nowait(None)
                return

    def abort(self) -> None:
        """Drop the connection now, without a closing handshake (safe while being cancelled)."""
        if self._ws is not None:
            self._ws.transport.abort()

    async def close(self) -> None:
        ws, reader = self._ws, self._reader
        self._ws = self._reader = None
        try:
            if ws is not None:
                await ws.close()
        except asyncio.CancelledError:
            ws.transport.abort()  # type: ignore[union-attr]
            raise
        except Exception:
            ws.transport.abort()  # type: ignore[union-attr]
        finally:
            if reader is not None:
                reader.cancel()
