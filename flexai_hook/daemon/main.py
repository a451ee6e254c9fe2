"""flexaid's entry point: arguments, configuration, cards, then the service behind its socket."""

from __future__ import annotations

import argparse
import os
import resource
import sys
from collections.abc import Sequence
from dataclasses import replace

from flexai_hook.devices import inventory

from . import ledger, server, supervisor
from .config import DEFAULT_CONFIG, ConfigError, load_config
from .service import Service


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flexaid",
        description="flexai daemon: places GPU slices on this host's cards and keeps the ledger. "
        "Runs under systemd (Type=notify, socket activation) or directly.",
    )
    parser.add_argument("--config", help=f"JSON config file (default {DEFAULT_CONFIG} if it exists)")
    parser.add_argument("--socket", help="override the config's socket path")
    parser.add_argument("--state-dir", help="override the config's state_dir (holds ledger.json)")
    parser.add_argument("--slices-dir", help="override the config's slices_dir")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-file", help="log to this file, rotated by size (overrides the config's log.file; "
                        "default: stderr, or the journal under systemd)")
    args = parser.parse_args(argv)
    supervisor.configure_logging(args.log_level)
    try:
        config = load_config(args.config)
        overrides = {
            k: v
            for k, v in (("socket", args.socket), ("state_dir", args.state_dir), ("slices_dir", args.slices_dir),
                         ("log_file", args.log_file))
            if v
        }
        config = replace(config, **overrides)
        if config.log_file:
            supervisor.configure_logging(args.log_level, log_file=config.log_file,
                                         max_bytes=config.log_max_bytes, backups=config.log_backups)
        _raise_fd_limit()
        cards = inventory.discover(config.backend, config.simulated_cards)
        if cards[0].backend == "simulated":
            inventory.ensure_sim_nodes(cards)
        os.makedirs(config.state_dir, mode=0o755, exist_ok=True)
        service = Service(config, cards)
        server.serve(service, config, supervisor.Supervisor())
    except (ConfigError, inventory.InventoryError, ledger.LedgerCorrupt, server.ServeError,
            supervisor.LogFileError) as exc:
        print(f"flexaid: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"flexaid: {exc}", file=sys.stderr)
        return 1
    return 0


def _raise_fd_limit() -> None:
    """Idle clients each hold a descriptor; take the hard limit rather than the default 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


if __name__ == "__main__":
    sys.exit(main())
