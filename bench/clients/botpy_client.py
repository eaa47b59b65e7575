"""The official SDK (qq-botpy) as a client for the throughput benchmark; runs in its own venv.

    python botpy_client.py API_BASE TOKEN_URL APP_ID SECRET COUNT [reply]

botpy has no setting for its endpoints: the API's scheme and host and the token URL are
patched here to point at the local simulator. Nothing else is changed.
"""

from __future__ import annotations

import sys
import time

import aiohttp
import botpy
from botpy import robot
from botpy.http import Route

api_base, token_url, app_id, secret, count = sys.argv[1:6]
REPLY = len(sys.argv) > 6 and sys.argv[6] == "reply"
EXPECTED = int(count)
Route.SCHEME, Route.DOMAIN = api_base.split("://", 1)


async def update_access_token(self):  # botpy's own code, with the token URL as a parameter
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url=token_url, json={"appId": self.app_id, "clientSecret": self.secret}
        ) as response,
    ):
        data = await response.json()
    self.access_token = data["access_token"]
    self.expires_in = int(data["expires_in"]) + int(time.time())


robot.Token.update_access_token = update_access_token


class Client(botpy.Client):
    received = 0

    async def on_ready(self):
        print(f"READY {time.monotonic():.6f}", flush=True)

    async def on_group_at_message_create(self, message):
        if REPLY:
            await message.reply(content=message.content)
        Client.received += 1
        if Client.received == EXPECTED:
            print(f"DONE {Client.received} {time.monotonic():.6f}", flush=True)
            await self.close()


botpy.logging.configure_logging = lambda *a, **k: None
client = Client(intents=botpy.Intents(public_messages=True), log_level=40)
client.run(appid=app_id, secret=secret)
