"""The viewer's websocket connections: one tab owns the viewer, messages are bounded, the secret is fresh.

trame serves every connection from one state, so a second browser tab could cancel the first tab's
run, replace its scan or start a detection on it. Here the first connection that authenticates owns
the viewer; any other connection is read-only: it may read the state and watch the views, but every
other request (triggers, state changes, view interaction and resizing, ``application.exit``) is
refused on the server with ``READ_ONLY_MESSAGE``, which that tab shows (state key ``LOCKED_KEY``, sent
to that tab only). When the owning tab closes, the next tab that connects (or is reloaded) owns it.

wslink lets an authenticated client declare a message of up to 4 GB in a 12-byte chunk header and
allocates it at once; ``BoundedUnChunker`` refuses a message, or pending messages together, above
``message_limit`` (a little above the largest upload piece), and the connection is closed.

The connection secret is not wslink's built-in "wslink-secret": each launch makes a fresh random one
(``new_secret``), given to the page by ``POST /paraview/`` (where trame's client asks for its session
settings before it connects; the answer carries no CORS header, so another web site open in the
same browser cannot read it and cannot drive the viewer through a websocket of its own).

It touches wslink's handler objects (``WebAppServer._ws_handlers``), the only place these limits can
be set; ``install`` is called from trame's ``on_server_bind``.
"""

from __future__ import annotations

import logging
import secrets

from aiohttp import web
from wslink.chunking import HEADER_LENGTH, UnChunker, _decode_header

LOG = logging.getLogger("PositionRegressionADWeb")
LOCKED_KEY = "viewer_locked_text"
READ_ONLY_MESSAGE = ("Another browser tab is using this viewer, so this tab is read-only: what you do here "
                     "is refused. Close the other tab, then reload this one to use the viewer here.")
# What a read-only tab may still ask: the state, its errors, and the pictures of the views.
READ_ONLY_METHODS = frozenset({"trame.state.get", "trame.error.client", "trame.force.push", "trame.rca.push",
                               "trame.rca.drop", "trame.rca.video.codecs", "trame.rca.video.negotiate"})
SESSION_PATH = "/paraview/"
REFUSED = -32001  # wslink's error code for a refused request (its AUTHENTICATION_ERROR)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


class BoundedUnChunker(UnChunker):
    """wslink's un-chunker with a cap on one message and on all unfinished messages of a connection."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.max_message_size = min(self.max_message_size, limit)

    def set_max_message_size(self, size: int) -> None:  # wslink raises it to 4 GB after the hello
        self.max_message_size = min(size, self.limit)

    def process_chunk(self, chunk: bytes):
        message_id, _, total_size = _decode_header(chunk[:HEADER_LENGTH])
        if message_id not in self.pending_messages:
            pending = sum(len(message["content"]) for message in self.pending_messages.values())
            if pending + total_size > self.max_message_size:
                self.release_pending_messages()
                raise ValueError(f"A message of {total_size} bytes was declared; at most {self.max_message_size} "
                                 "are accepted: the connection is closed.")
        return super().process_chunk(chunk)


class ConnectionGuard:
    """Owner, read-only tabs, message cap and secret for one server; see the module docstring."""

    def __init__(self, secret: str, message_limit: int) -> None:
        self.secret = secret
        self.message_limit = message_limit
        self.owner: str | None = None

    def install(self, web_server) -> None:
        for handler in web_server._ws_handlers:
            self._guard(handler)
        web_server.app.router.add_post(SESSION_PATH, self._session_settings)

    async def _session_settings(self, request: web.Request) -> web.Response:
        scheme = "wss" if request.secure else "ws"
        return web.json_response({"sessionURL": f"{scheme}://{request.host}/ws", "secret": self.secret},
                                 headers={"Cache-Control": "no-store"})

    def _guard(self, handler) -> None:
        on_connect, on_close = handler.onConnect, handler.onClose
        system_message, complete_message = handler.handleSystemMessage, handler.onCompleteMessage

        async def connect(request, client_id):
            await on_connect(request, client_id)
            handler.unchunkers[client_id] = BoundedUnChunker(self.message_limit)

        async def close(client_id):
            if client_id == self.owner:
                self.owner = None
            await on_close(client_id)

        async def hello(rpcid, method, args, client_id):
            handled = await system_message(rpcid, method, args, client_id)
            if self.owner is None and handler.isClientAuthenticated(client_id):
                self.owner = client_id
            return handled

        async def message(rpc, client_id):
            method = rpc.get("method") if isinstance(rpc, dict) else None
            rpcid = str(rpc.get("id", "")) if isinstance(rpc, dict) else ""
            if (rpcid and not rpcid.startswith("system:") and handler.isClientAuthenticated(client_id)
                    and client_id != self.owner and method not in READ_ONLY_METHODS):
                LOG.info("refused %s from a read-only tab", method)
                handler.publish("trame.state.topic", {LOCKED_KEY: READ_ONLY_MESSAGE}, client_id=client_id)
                await handler.sendWrappedError(rpcid, REFUSED, READ_ONLY_MESSAGE, client_id=client_id)
                return
            await complete_message(rpc, client_id)

        handler.onConnect, handler.onClose = connect, close
        handler.handleSystemMessage, handler.onCompleteMessage = hello, message

        protocol, get_state = handler.functionMap["trame.state.get"]

        def state_for_this_tab(server_protocol):
            state = get_state(server_protocol)
            if handler.web_app.last_active_client_id != self.owner:
                state = {**state, "state": {**state.get("state", {}), LOCKED_KEY: READ_ONLY_MESSAGE}}
            return state

        handler.functionMap["trame.state.get"] = (protocol, state_for_this_tab)
