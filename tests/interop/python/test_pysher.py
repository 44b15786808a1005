"""PY-2 and PRES-2 (Pysher's half) of the interop matrix: Pysher 1.0.8, a
protocol-6 client that signs its own subscriptions with json.dumps'
separators, against herald, with events from the PyPI server SDK."""

import json
import logging

import pysher

from conftest import APP, wait_for


class Watched:
    """A Pysher client and every channel event it dispatches, in order."""

    def __init__(self, herald, user_data):
        self.client = pysher.Pusher(
            key=APP["key"],
            secret=APP["secret"],
            custom_host=herald.host,
            port=herald.port,
            secure=False,
            user_data=user_data,
            log_level=logging.WARNING,
        )
        self.events = []
        self.errors = []
        self.pongs = []
        # Pysher hands every channel event to this one function: see them all,
        # including the answers to subscribes made before a channel object exists.
        dispatch = self.client.connection.event_handler

        def observe(event, data, channel):
            self.events.append((event, data, channel))
            dispatch(event, data, channel)

        self.client.connection.event_handler = observe
        self.client.connection.bind("pusher:error", self.errors.append)
        self.client.connection.bind("pusher:pong", self.pongs.append)
        self.client.connect()
        wait_for(lambda: self.client.connection.state == "connected", "Pysher to connect")

    def subscribe(self, channel):
        self.client.subscribe(channel)
        return wait_for(
            lambda: next(
                (
                    (event, data)
                    for event, data, name in self.events
                    if name == channel and event in ("pusher_internal:subscription_succeeded", "pusher:subscription_error")
                ),
                None,
            ),
            "the answer to subscribing %s" % channel,
        )

    def received(self, event, channel):
        return [data for name, data, on in self.events if name == event and on == channel]

    def close(self):
        self.client.disconnect(timeout=2)


def test_py_2_pysher_public_private_presence(herald, sdk):
    watched = Watched(herald, {"user_id": "pysher", "user_info": {"name": "Py"}})
    try:
        # Pysher pings right after opening, with "" as data.
        wait_for(lambda: watched.pongs, "the pong to Pysher's ping")
        for channel in ("py2", "private-py2", "presence-py2"):
            event, data = watched.subscribe(channel)
            assert event == "pusher_internal:subscription_succeeded", (channel, data)
        presence = json.loads(watched.received("pusher_internal:subscription_succeeded", "presence-py2")[0])
        assert presence["presence"]["ids"] == ["pysher"]
        assert presence["presence"]["hash"] == {"pysher": {"name": "Py"}}

        for n, channel in enumerate(("py2", "private-py2", "presence-py2")):
            assert sdk.trigger(channel, "Hello", {"n": n}) == {}
        for n, channel in enumerate(("py2", "private-py2", "presence-py2")):
            got = wait_for(lambda: watched.received("Hello", channel), "Hello on %s" % channel)
            assert [json.loads(data) for data in got] == [{"n": n}]

        # A client event on a public channel: a pusher:error, whose data Pysher reads as an object.
        watched.client.connection.send_event("client-nope", {}, channel_name="py2")
        wait_for(lambda: watched.errors, "the pusher:error")
        assert isinstance(watched.errors[0], dict), watched.errors
        assert "code" in watched.errors[0] and "message" in watched.errors[0]
        assert watched.client.connection.state == "connected"
        assert sdk.trigger("py2", "Still", {}) == {}
        wait_for(lambda: watched.received("Still", "py2"), "an event after the error")
    finally:
        watched.close()


def test_pres_2_pysher_channel_data_with_spaces_and_a_numeric_id(herald, sdk):
    # Pysher signs json.dumps(user_data): '{"user_id": 7, "user_info": {"name": "Seven"}}'.
    watched = Watched(herald, {"user_id": 7, "user_info": {"name": "Seven"}})
    try:
        event, data = watched.subscribe("presence-pres2-py")
        assert event == "pusher_internal:subscription_succeeded", data
        presence = json.loads(data)["presence"]
        assert presence["ids"] == ["7"]
        assert presence["hash"] == {"7": {"name": "Seven"}}
        assert sdk.users_info("presence-pres2-py") == {"users": [{"id": "7"}]}
    finally:
        watched.close()
