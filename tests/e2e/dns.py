"""The cluster DNS's data: every Service's cluster IP under <name>.<namespace>.svc.<domain>, written as a
hosts file into the directory dnsmasq watches (--hostsdir), so names resolve as they do with CoreDNS.

Run by cluster.py as a daemon; it watches Services (a list, then a watch from its resourceVersion, again after
any error) and rewrites the file atomically whenever the set of names changes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def hosts_lines(services: list[dict[str, Any]], domain: str) -> list[str]:
    """`<ip> <name>.<ns>.svc.<domain>` for each Service with a cluster IP (headless ones have none)."""
    lines = []
    for svc in services:
        ip = (svc.get("spec") or {}).get("clusterIP")
        if not ip or ip == "None":
            continue
        meta = svc["metadata"]
        lines.append(f"{ip} {meta['name']}.{meta['namespace']}.svc.{domain}")
    return sorted(lines)


def write_hosts(directory: Path, lines: list[str]) -> None:
    tmp = directory / ".services.tmp"
    tmp.write_text("".join(f"{line}\n" for line in lines))
    tmp.replace(directory / "services")


def serve(kubeconfig: str, directory: Path, domain: str) -> None:
    from kubernetes import client, config, watch

    api = client.CoreV1Api(config.new_client_from_config(kubeconfig))
    while True:
        try:
            listed = json.loads(api.list_service_for_all_namespaces(_preload_content=False).data)
            services = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in listed["items"]}
            written = hosts_lines(list(services.values()), domain)
            write_hosts(directory, written)
            stream = watch.Watch().stream(api.list_service_for_all_namespaces,
                                          resource_version=listed["metadata"]["resourceVersion"],
                                          timeout_seconds=300)
            for event in stream:
                obj = event["raw_object"]
                key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
                if event["type"] == "DELETED":
                    services.pop(key, None)
                else:
                    services[key] = obj
                lines = hosts_lines(list(services.values()), domain)
                if lines != written:
                    write_hosts(directory, lines)
                    written = lines
        except Exception as err:  # noqa: BLE001 - the API server restarting or a watch expiring: list again
            print(f"dns: {type(err).__name__}: {err}; listing again", file=sys.stderr, flush=True)
            time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--hosts-dir", required=True, type=Path)
    parser.add_argument("--domain", default="cluster.local")
    args = parser.parse_args()
    os.environ.pop("KUBERNETES_SERVICE_HOST", None)
    serve(args.kubeconfig, args.hosts_dir, args.domain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
