"""``hicache storage attach|detach|status``: a client of a node's (or SGLang's) admin API."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

API_KEY_ENV = "HICACHE_ADMIN_API_KEY"


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "storage", help="attach, detach or show the L3 backend of a running node (SGLang admin API)",
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
    import httpx
    from rich.console import Console

    from hicache_core.node.cli_args import parse_json_or_file

    out, err = Console(), Console(stderr=True)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    url = args.url.rstrip("/")
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=args.timeout) as client:
            if args.storage_op == "attach":
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
                resp = client.put("/hicache/storage-backend", json=body)
            elif args.storage_op == "detach":
                resp = client.delete("/hicache/storage-backend")
            else:
                resp = client.get("/hicache/storage-backend")
                if resp.status_code == 200 and args.full:
                    full = client.get("/hicache/status")
                    full.raise_for_status()
                    out.print_json(data={"storage_backend": resp.json(), "status": full.json()})
                    return 0
    except httpx.HTTPError as exc:
        err.print(f"[red]cannot reach {url}: {exc}; is the node running (hicache serve)?[/]")
        return 1
    try:
        data = resp.json()
    except ValueError:
        data = {"message": resp.text}
    out.print_json(data=data)
    if resp.status_code == 401:
        err.print("[red]401: wrong or missing admin key; pass --api-key or set "
                  f"${API_KEY_ENV} to the node's --admin-api-key[/]")
    elif resp.status_code == 400 and "admin API key" in json.dumps(data):
        err.print("[red]400: the node was started without --admin-api-key; restart it with one[/]")
    return 0 if resp.status_code == 200 else 1
