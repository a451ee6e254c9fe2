"""The `flexai` command: status of the host's slices, and a demo of a sliced container."""

from __future__ import annotations

import json
import sys

import click

from . import client, status_view


def _socket_option(f):
    return click.option(
        "--socket",
        envvar="FLEXAI_SOCKET",
        default=client.DEFAULT_SOCKET,
        show_default=True,
        help="flexaid's Unix socket (env FLEXAI_SOCKET).",
    )(f)


def _call(message: dict, socket: str) -> dict:
    try:
        return client.call(message, socket)
    except (client.DaemonUnavailable, client.DaemonRefused) as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="flexai")
def main() -> None:
    """flexai: fractional GPU slices for ordinary containers.

    Start a container with FLEXAI_FRACTION=0.3 (or the flexai.io/fraction annotation) through
    flexai-runtime and it gets 30 % of one card; `flexai status` shows who holds what.
    """


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print flexaid's status reply as JSON.")
@_socket_option
def status(as_json: bool, socket: str) -> None:
    """Show the cards on this host and the slices reserved on them."""
    reply = _call({"op": "status"}, socket)
    if as_json:
        click.echo(json.dumps(reply["status"], indent=2))
    else:
        click.echo(status_view.render(reply["status"], socket))


@main.command()
@click.option("--fraction", default="0.3", show_default=True, help="FLEXAI_FRACTION of the demo container.")
@click.option("--seconds", default=4, show_default=True, help="How long the demo container runs.")
@click.option("--runtime-root", default="/run/flexai/demo-runc", show_default=True, help="runc --root for the demo.")
@_socket_option
def demo(fraction: str, seconds: int, runtime_root: str, socket: str) -> None:
    """Run a busybox container with a slice through flexai-runtime and show its reservation."""
    from . import demo as demo_mod

    try:
        code = demo_mod.run(fraction=fraction, seconds=seconds, runtime_root=runtime_root, socket=socket)
    except demo_mod.DemoError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


if __name__ == "__main__":
    main()
