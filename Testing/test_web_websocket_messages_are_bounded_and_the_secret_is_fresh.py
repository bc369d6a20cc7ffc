"""At the websocket: a frame declaring a huge message is refused without memory, and the secret is fresh.

A hand-made wslink client of ``python -m PositionRegressionADWeb`` (aiohttp; no browser). wslink's own
un-chunker lets an authenticated client declare a message of up to 4 GB in a 12-byte header and
allocates it at once (RSS +1 GB for one 13-byte frame): here the connection is closed and the server's
resident memory does not grow, while an upload piece as the page sends it (4 MiB) still goes through.
The connection secret is not wslink's default "wslink-secret" (refused), and each launch has its own.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from PositionRegressionADWeb.testing import ViewerServer, WslinkClient

DECLARED_BYTES = 1_000_000_000


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def huge_frame(url: str, pid: int) -> tuple[int, int, str]:
    async with WslinkClient(url) as client:
        assert "result" in await client.hello()
        # The server imports torch to look for a GPU once it is ready: measure after that.
        for _ in range(240):
            reply = await client.call("trame.state.get")
            if reply["result"]["state"]["device_line"] != "Looking for a GPU ...":
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)
        before = resident_bytes(pid)
        await client.ws.send_bytes(struct.pack("<III", 7, 0, DECLARED_BYTES) + b"\x00")
        try:
            outcome = repr(await client.call("trame.state.get", timeout_seconds=30))
        except ConnectionError as error:
            outcome = str(error)
        await asyncio.sleep(1.0)
        return before, resident_bytes(pid), outcome


async def default_secret_and_an_upload_piece(url: str) -> str:
    async with WslinkClient(url) as client:
        secret = client.settings["secret"]
        assert secret != "wslink-secret" and len(secret) >= 32
        assert "error" in await client.hello("wslink-secret")
    async with WslinkClient(url) as client:
        assert "result" in await client.hello()
        reply = await client.call("trame.trigger", ["ppr_upload_begin", ["piece.nii.gz", 6_000_000], {}])
        assert reply.get("result") is True, reply
        piece = {"name": "piece.nii.gz", "content": bytes(4 * 1024 * 1024)}
        reply = await client.call("trame.trigger", ["ppr_upload_piece", [piece, 0], {}])
        assert reply.get("result") is True, reply
    return secret


@pytest.mark.slow
def test_a_huge_declared_message_is_refused_and_the_secret_is_fresh(dev_data_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    secrets = []
    for launch in range(2):
        with ViewerServer(["--data-dir", str(data), "--max-upload-mb", "8"],
                          log=tmp_path / f"server{launch}.log") as server:
            if launch == 0:
                before, after, outcome = asyncio.run(huge_frame(server.url, server.process.pid))
                assert after - before < 100_000_000, (before, after)
                assert "closed the connection" in outcome, outcome[:300]
            secrets.append(asyncio.run(default_secret_and_an_upload_piece(server.url)))
            assert server.alive() and server.answers_http()
    assert secrets[0] != secrets[1]
