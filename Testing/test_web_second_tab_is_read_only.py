"""Two connections to one running viewer: the first owns it, the second is read-only, refused on the server.

Two hand-made wslink clients (as two browser tabs would connect) talk to ``python -m PositionRegressionADWeb``.
Tab A connects first and loads a scan. Tab B then tries to cancel, load another scan, start a detection,
change the state A's detection would use, and stop the server: each request is refused with the
read-only message (sent to B only), and A's scan, settings and server are unchanged. When A closes,
a tab that connects next owns the viewer.
"""

from __future__ import annotations

import asyncio

import pytest

from PositionRegressionADWeb.connections import LOCKED_KEY, READ_ONLY_MESSAGE
from PositionRegressionADWeb.testing import ViewerServer, WslinkClient


def state_of(reply: dict) -> dict:
    return reply["result"]["state"]


def refused(reply: dict) -> bool:
    return "error" in reply and READ_ONLY_MESSAGE in str(reply["error"])


async def two_tabs(url: str) -> None:
    async with WslinkClient(url) as tab_a:
        assert "result" in await tab_a.hello()
        state = state_of(await tab_a.call("trame.state.get"))
        assert state.get(LOCKED_KEY, "") == ""
        reply = await tab_a.call("trame.trigger", ["ppr_load_data_file", ["a.nii.gz"], {}], timeout_seconds=120)
        assert reply.get("result") is True, reply

        async with WslinkClient(url) as tab_b:
            assert "result" in await tab_b.hello()
            assert state_of(await tab_b.call("trame.state.get")).get(LOCKED_KEY) == READ_ONLY_MESSAGE
            for method, args in (("trame.trigger", ["ppr_cancel", [], {}]),
                                 ("trame.trigger", ["ppr_load_data_file", ["b.nii.gz"], {}]),
                                 ("trame.trigger", ["ppr_load_sample", [], {}]),
                                 ("trame.trigger", ["ppr_detect", [], {}]),
                                 ("trame.trigger", ["ppr_upload_begin", ["c.nii.gz", 10], {}]),
                                 ("trame.state.update", [[{"key": "quality", "value": "full"},
                                                          {"key": "device", "value": "cpu"}]]),
                                 ("trame.rca.event", []),
                                 ("application.exit", [])):
                reply = await tab_b.call(method, args)
                assert refused(reply), (method, args, reply)
            assert READ_ONLY_MESSAGE in tab_b.published_state(LOCKED_KEY)

            await asyncio.sleep(1.0)
            state = state_of(await tab_a.call("trame.state.get"))
            assert state["input_name"] == "a"
            assert (state["quality"], state["device"], state["running"]) == ("preview", "auto", False)
            assert state.get(LOCKED_KEY, "") == ""
            assert not tab_a.published_state(LOCKED_KEY)
            # A still works.
            reply = await tab_a.call("trame.state.update", [[{"key": "quality", "value": "full"}]])
            assert "error" not in reply, reply
            assert state_of(await tab_a.call("trame.state.get"))["quality"] == "full"

    await asyncio.sleep(1.0)
    # A and B have gone: the next tab owns the viewer.
    async with WslinkClient(url) as tab_c:
        assert "result" in await tab_c.hello()
        assert state_of(await tab_c.call("trame.state.get"))[LOCKED_KEY] == ""
        reply = await tab_c.call("trame.trigger", ["ppr_load_data_file", ["b.nii.gz"], {}], timeout_seconds=120)
        assert reply.get("result") is True, reply


@pytest.mark.slow
def test_a_second_tab_cannot_cancel_replace_the_scan_or_detect(dev_data_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a", "b"):
        (data / f"{name}.nii.gz").write_bytes((dev_data_dir / "ctich_054.nii.gz").read_bytes())
    arguments = ["--data-dir", str(data), "--model", str(tmp_path / "no-model"),
                 "--sample", str(dev_data_dir / "ctich_054.nii.gz")]
    with ViewerServer(arguments, log=tmp_path / "server.log") as server:
        asyncio.run(two_tabs(server.url))
        assert server.alive()
    assert server.process.returncode == 0
