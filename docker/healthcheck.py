"""HEALTHCHECK of the sleepfed images: ask the agent or the server whether it is healthy.

    sleepfed-healthcheck agent CONFIG   # `sleepfed-agent status --json`: daemon.running, exit 0
                                        # (healthy) or 3 (degraded: e.g. the wearable is off —
                                        # restarting the container would not bring it back)
    sleepfed-healthcheck server CONFIG  # GET /health through the fleet proxy on host:port:
                                        # nginx answers TLS with a certificate from the
                                        # configured CA and the SuperLink behind it (on
                                        # 127.0.0.1:superlink_port) answers 200

Exit 0 healthy, 1 unhealthy (Docker's convention). Runs with the image's venv python.
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys


def agent(config: str) -> int:
    result = subprocess.run(
        ["sleepfed-agent", "status", "--json", "--config", config],
        capture_output=True,
        text=True,
        timeout=25,
    )
    if result.returncode not in (0, 3):
        print(f"status exited {result.returncode}: {result.stderr.strip()[-200:]}")
        return 1
    daemon = json.loads(result.stdout).get("daemon", {})
    print(f"daemon running={daemon.get('running')} health={daemon.get('health')}")
    return 0 if daemon.get("running") else 1


def server(config: str) -> int:
    from sleepfed.server.ops.config import load_config

    loaded = load_config(config)
    host = "127.0.0.1" if loaded.host in ("", "0.0.0.0", "::") else loaded.host
    if loaded.insecure:
        connection: http.client.HTTPConnection = http.client.HTTPConnection(
            host, loaded.port, timeout=10
        )
    else:
        # the chain must lead to the configured CA; the name is not checked (the certificate
        # names the public address, this check connects from inside the container)
        context = ssl.create_default_context(cafile=str(loaded.ca_certfile))
        context.check_hostname = False
        connection = http.client.HTTPSConnection(host, loaded.port, timeout=10, context=context)
    try:
        connection.request("GET", "/health")
        status = connection.getresponse().status
    finally:
        connection.close()
    if status != 200:  # 502 from nginx: the SuperLink behind it is down
        print(f"fleet proxy on {host}:{loaded.port} answers GET /health with {status}")
        return 1
    print(f"fleet proxy on {host}:{loaded.port} and the SuperLink behind it answer GET /health")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("agent", "server"):
        print(__doc__, file=sys.stderr)
        return 1
    try:
        return agent(argv[1]) if argv[0] == "agent" else server(argv[1])
    except Exception as error:  # any failure is "unhealthy", with the reason in the log
        print(f"unhealthy: {type(error).__name__}: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
