"""An embedded pure-Python MQTT 3.1.1 broker (amqtt) for ``driver-stats demo``.

``python -m cli.amqtt_broker PORT`` listens on 127.0.0.1:PORT,
anonymous, until SIGTERM or SIGINT. Used only where mosquitto is missing.
Note: amqtt speaks MQTT 3.1.1 only.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys


def config(port: int) -> dict:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def serve(port: int) -> None:
    from amqtt.broker import Broker

    broker = Broker(config(port))
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m cli.amqtt_broker PORT", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="amqtt %(levelname)s %(message)s")
    asyncio.run(serve(int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
