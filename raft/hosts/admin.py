"""`python -m raft cluster ...`: operate a running cluster through its HTTP API (the local
runner's `run --serve`, or the Functions app with its function key).

    python -m raft cluster status [--url URL]
    python -m raft cluster leader SERVER [--url URL]     move leadership to SERVER
    python -m raft cluster add SERVER [--url URL]        add a server to the configuration
    python -m raft cluster remove SERVER [--url URL]     remove one
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:7071/api"
ROUTES = {
    "status": ("GET", "/cluster"),
    "leader": ("POST", "/cluster/leader"),
    "add": ("POST", "/cluster/servers"),
    "remove": ("DELETE", "/cluster/servers"),
}


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=sorted(ROUTES), help="what to do")
    parser.add_argument("server", nargs="?", help="the server to lead, add or remove")
    parser.add_argument(
        "--url",
        default=os.environ.get("RAFT_API_URL", DEFAULT_URL),
        help=f"the API's base URL (default $RAFT_API_URL or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--key",
        default=os.environ.get("RAFT_FUNCTION_KEY", ""),
        help="the Functions app's function key (default $RAFT_FUNCTION_KEY)",
    )
    parser.add_argument("--timeout-s", type=float, default=60.0, help="HTTP timeout")


def run_cluster(args: argparse.Namespace) -> int:
    method, path = ROUTES[args.action]
    body = None
    if args.action != "status":
        if not args.server:
            print(f"cluster {args.action} needs a server id", file=sys.stderr)
            return 2
        body = json.dumps({"server": args.server}).encode()
    headers = {"content-type": "application/json"}
    if args.key:
        headers["x-functions-key"] = args.key
    request = urllib.request.Request(
        args.url.rstrip("/") + path, data=body, headers=headers, method=method
    )
    status, answer = _call(request, args.timeout_s)
    print(json.dumps(answer, indent=1))
    return 0 if 200 <= status < 300 else 1


def _call(request: urllib.request.Request, timeout_s: float) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except urllib.error.URLError as exc:
        return 0, {"error": f"cannot reach {request.full_url}: {exc.reason}"}
