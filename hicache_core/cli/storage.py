"""``hicache storage attach|detach|status``: a client of a node's (or SGLang's) admin API."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

API_KEY_ENV = "HICACHE_ADMIN_API_KEY"


#: The subcommands this module registers and their one-line help (``hicache --help`` lists
#: them without building their parsers).
COMMANDS: dict[str, str] = {
    "storage": "attach, detach or show the L3 backend of a running node (SGLang admin API)",
}


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "storage", help=COMMANDS["storage"],
    )
    ops = p.add_subparsers(dest="storage_op", metavar="OP", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--url", default="http://127.0.0.1:30000", help="node URL (default http://127.0.0.1:30000)")
        q.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                       help=f"admin API key (default: ${API_KEY_ENV})")
        q.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the answer")
        q.set_defaults(handler=run)

    a = ops.add_parser("attach", help="PUT /hicache/storage-backend")
    common(a)
    a.add_argument("--backend", required=True, help="backend name (e.g. file, mooncake, dynamic)")
    a.add_argument("--extra-config", help="backend config: a JSON object or @file.json")
    a.add_argument("--prefetch-policy", help="best_effort, wait_complete or timeout")
    a.add_argument("--write-policy", help="write_through, write_through_selective or write_back")
    a.add_argument("--replace", action="store_true",
                   help="switch from the attached backend in one step (hicache extension)")
    common(ops.add_parser("detach", help="DELETE /hicache/storage-backend"))
    s = ops.add_parser("status", help="GET /hicache/storage-backend (and --full: GET /hicache/status)")
    common(s)
    s.add_argument("--full", action="store_true", help="also show tiers, breaker and counters")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    out, err = Console(), Console(stderr=True)
    url = args.url.rstrip("/")
    try:
        if args.storage_op == "attach":
            from hicache_core.node.cli_args import parse_json_or_file  # imports torch: attach only

            try:
                extra = parse_json_or_file(args.extra_config, "--extra-config")
            except ValueError as exc:
                err.print(f"[red]{exc}[/]")
                return 2
            body: dict[str, Any] = {"hicache_storage_backend": args.backend}
            if extra:
                body["hicache_storage_backend_extra_config_json"] = json.dumps(extra)
            if args.prefetch_policy:
                body["hicache_storage_prefetch_policy"] = args.prefetch_policy
            if args.write_policy:
                body["hicache_write_policy"] = args.write_policy
            if args.replace:
                body["replace"] = True
            status, data = _call(url, "PUT", "/hicache/storage-backend", args, body)
        elif args.storage_op == "detach":
            status, data = _call(url, "DELETE", "/hicache/storage-backend", args)
        else:
            status, data = _call(url, "GET", "/hicache/storage-backend", args)
            if status == 200 and args.full:
                full_status, full = _call(url, "GET", "/hicache/status", args)
                if full_status != 200:
                    err.print(f"[red]GET /hicache/status answered {full_status}[/]")
                    return 1
                out.print_json(data={"storage_backend": data, "status": full})
                return 0
    except OSError as exc:  # refused, unreachable, timed out (urllib's URLError is an OSError)
        reason = getattr(exc, "reason", exc)
        err.print(f"[red]cannot reach {url}: {reason}; is the node running (hicache serve)?[/]")
        return 1
    out.print_json(data=data)
    if status == 401:
        err.print("[red]401: wrong or missing admin key; pass --api-key or set "
                  f"${API_KEY_ENV} to the node's --admin-api-key[/]")
    elif status == 400 and "admin API key" in json.dumps(data):
        err.print("[red]400: the node was started without --admin-api-key; restart it with one[/]")
    return 0 if status == 200 else 1


def _call(url: str, method: str, path: str, args: argparse.Namespace, body: Any = None) -> tuple[int, Any]:
    """``(status, JSON body)`` of one admin API call (the standard library's HTTP client:
    it starts in milliseconds, where httpx takes a few hundred)."""
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:  # an answer with an error status: still an answer
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, {"message": raw.decode(errors="replace")}
