"""PY-1 of the interop matrix: every call of the PyPI server SDK (pusher
3.3.4) against herald, each checked by what a connected client sees."""

import json

from conftest import RawSocket


def test_py_1_every_server_sdk_call_succeeds(herald, sdk):
    ws = RawSocket(herald)

    # authenticate: a private and a presence channel (json.dumps channel_data, with spaces).
    private = sdk.authenticate(channel="private-py1", socket_id=ws.socket_id)
    answer = ws.subscribe("private-py1", **private)
    assert answer["event"] == "pusher_internal:subscription_succeeded", answer
    presence = sdk.authenticate(
        channel="presence-py1", socket_id=ws.socket_id, custom_data={"user_id": "py", "user_info": {"name": "Py"}}
    )
    assert ": " in presence["channel_data"], "json.dumps separators, as Python backends sign them"
    answer = ws.subscribe("presence-py1", **presence)
    assert answer["event"] == "pusher_internal:subscription_succeeded", answer
    assert json.loads(answer["data"])["presence"]["ids"] == ["py"]

    # authenticate_user: pusher:signin.
    user = sdk.authenticate_user(ws.socket_id, {"id": "py", "user_info": {"name": "Py"}})
    ws.send({"event": "pusher:signin", "data": user})
    success = ws.event("pusher:signin_success")
    assert success["data"] == {"user_data": user["user_data"]}

    # trigger and trigger_batch.
    assert sdk.trigger("private-py1", "Hello", {"n": 1}) == {}
    assert json.loads(ws.event("Hello", "private-py1")["data"]) == {"n": 1}
    assert sdk.trigger(["private-py1", "presence-py1"], "Both", "text") == {}
    assert ws.event("Both", "private-py1")["data"] == "text"
    assert ws.event("Both", "presence-py1")["data"] == "text"
    batch = [{"channel": "private-py1", "name": "Batched", "data": {"n": n}} for n in range(3)]
    assert sdk.trigger_batch(batch) == {}
    assert [json.loads(ws.event("Batched")["data"])["n"] for _ in range(3)] == [0, 1, 2]

    # The queries (every GET carries body_md5 of the empty body).
    assert sdk.channels_info(prefix_filter="presence-", attributes=["user_count"]) == {
        "channels": {"presence-py1": {"user_count": 1}}
    }
    assert sdk.channel_info("presence-py1", ["user_count", "subscription_count"]) == {
        "occupied": True,
        "user_count": 1,
        "subscription_count": 1,
    }
    assert sdk.channel_info("py1-nobody") == {"occupied": False}
    assert sdk.users_info("presence-py1") == {"users": [{"id": "py"}]}

    # send_to_user: to the signed-in socket, on #server-to-user-py.
    assert sdk.send_to_user("py", "Direct", {"x": 1}) == {}
    assert json.loads(ws.event("Direct", "#server-to-user-py")["data"]) == {"x": 1}

    # terminate_user_connections (the SDK posts to /users/py/terminate_connections, without /apps/1).
    assert sdk.terminate_user_connections("py") == {}
    error = ws.event("pusher:error")
    assert error["data"]["code"] == 4009, error
    assert ws.wait_closed() == 4009
