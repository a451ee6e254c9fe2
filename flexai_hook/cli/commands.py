"""The `flexai` command: status of the host's slices, a demo of a sliced container, engine
setup (install/uninstall/doctor, in engines/cli.py) and ledger recovery."""

from __future__ import annotations

import json
import os
import sys
import time

import click

from flexai_hook import client
from flexai_hook.engines.cli import doctor, install, uninstall

from . import status_view


def _kube_api_options(f):
    """--kube-api, --token-file, --ca-file: how the cluster commands reach the API server."""
    f = click.option("--ca-file", default=None, help="CA bundle for --kube-api.")(f)
    f = click.option("--token-file", default=None, help="Bearer token file for --kube-api.")(f)
    return click.option("--kube-api", default=None,
                        help="API server URL (default: in-cluster, from KUBERNETES_SERVICE_HOST).")(f)


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
@click.option("--watch", is_flag=True, help="Refresh in place until interrupted (Ctrl-C, exit status 0); "
              "while flexaid is down or restarting, wait for it.")
@click.option("--interval", default=2.0, show_default=True, help="Seconds between refreshes with --watch.")
@click.option("--count", default=0, help="With --watch: stop after this many refreshes (0: never).")
@_socket_option
def status(as_json: bool, watch: bool, interval: float, count: int, socket: str) -> None:
    """Show the cards on this host, the slices reserved on them and what they really use."""
    if not watch:
        reply = _call({"op": "status"}, socket)
        click.echo(json.dumps(reply["status"], indent=2) if as_json else status_view.render(reply["status"], socket))
        return
    try:
        _watch(as_json, interval, count, socket)
    except KeyboardInterrupt:
        click.echo("")  # the shell's prompt on a line of its own, no traceback


def _watch(as_json: bool, interval: float, count: int, socket: str) -> None:
    """Redraw the status every `interval` seconds. flexaid not answering (a restart, an upgrade)
    is waited for, said once per outage, with growing pauses between tries (status_view.retry_delay)."""
    shown = 0
    delay = None  # the pause before the next try while flexaid does not answer; None: it answers
    while True:
        try:
            reply = client.call({"op": "status"}, socket, timeout=max(5.0, interval))
        except client.DaemonUnavailable as exc:
            if exc.lasting:  # e.g. not in the socket's group: waiting would never end
                raise click.ClickException(str(exc)) from None
            if delay is None:
                click.echo(f"\nflexaid is not answering at {socket} ({exc.reason}); waiting for it, Ctrl-C to stop")
            delay = status_view.retry_delay(delay)
            time.sleep(delay)
            continue
        except client.DaemonRefused as exc:
            raise click.ClickException(str(exc)) from None
        delay = None
        text = json.dumps(reply["status"]) if as_json else status_view.render(reply["status"], socket)
        # Home the cursor and clear the screen: the table is redrawn in place.
        click.echo("\x1b[H\x1b[2J" + text + f"\n\nrefreshing every {interval:g}s; Ctrl-C to stop", nl=True)
        shown += 1
        if count and shown >= count:
            return
        time.sleep(interval)


@main.command()
@click.option("--config", "config_path", default=None, help="flexaid's config (default /etc/flexai/flexaid.json).")
@click.option("--runtime", "runtime_binary", default="runc", show_default=True, help="The OCI runtime to ask.")
@click.option("--root", "roots", multiple=True, help="runc state root to scan (repeatable; default: the config's "
              "reconcile.runtime_roots, i.e. runc, Docker and containerd defaults).")
@click.option("--dry-run", is_flag=True, help="Show what would be rebuilt; change nothing.")
def recover(config_path: str | None, runtime_binary: str, roots: tuple[str, ...], dry_run: bool) -> None:
    """Rebuild flexaid's ledger from the sliced containers that are running.

    For when flexaid refuses to start because its ledger is corrupt or truncated. Stop flexaid
    first; the unreadable ledger is kept beside the new one as ledger.json.corrupt-<time>.
    """
    import shutil

    from flexai_hook.daemon import config as daemon_config, ledger, recover as recover_mod
    from flexai_hook.devices import inventory

    try:
        config = daemon_config.load_config(config_path)
        binary = shutil.which(runtime_binary) or runtime_binary
        try:
            client.call({"op": "status"}, config.socket, timeout=2)
            raise click.ClickException(f"flexaid is running on {config.socket}; stop it before recovering its ledger")
        except client.DaemonUnavailable:
            pass
        cards = inventory.discover(config.backend, config.simulated_cards)
        containers = recover_mod.live_containers(binary, roots or config.runtime_roots)

        def read_spec(bundle: str) -> dict:
            with open(os.path.join(bundle, "config.json")) as f:
                return json.load(f)

        found, problems = recover_mod.reservations_from_containers(
            containers, read_spec, cards, config.slices_dir, binary, time.time()
        )
    except (daemon_config.ConfigError, inventory.InventoryError, RuntimeError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    for problem in problems:
        click.echo(f"skipped {problem}", err=True)
    click.echo(f"{len(containers)} live container(s), {len(found)} with a flexai slice:")
    for r in found:
        click.echo(f"  {r.container_id}: slice {r.slice_id} on card {r.card_index}, "
                   f"{r.memory_bytes} bytes, {r.compute}% compute")
    rebuilt = ledger.Ledger({r.container_id: r for r in found})
    problem = ledger.card_problem(rebuilt, cards)  # the same judgement flexaid makes at start
    if problem:
        raise click.ClickException(f"the live containers do not fit this host's cards: {problem}; not writing a ledger")
    if dry_run:
        click.echo("dry run: nothing written")
        return
    path = os.path.join(config.state_dir, "ledger.json")
    os.makedirs(config.state_dir, exist_ok=True)
    file = ledger.LedgerFile(path)
    stamp = time.strftime('%Y%m%dT%H%M%S')
    for old in (file.path, file.journal):
        if old.exists():
            aside = f"{old}.corrupt-{stamp}"
            os.replace(old, aside)
            click.echo(f"kept the old {old.name} as {aside}")
    file.save(rebuilt)
    click.echo(f"wrote {path}; start flexaid again")


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


@main.group("slice")
def slice_group() -> None:
    """Change a running slice."""


@slice_group.command("set")
@click.argument("container")
@click.option("--compute", type=click.IntRange(1, 100), default=None, help="New compute share, percent of the card.")
@click.option("--pause", "pause", flag_value=True, default=None, help="Hold the slice's kernel launches.")
@click.option("--resume", "pause", flag_value=False, help="Let a paused slice launch again.")
@_socket_option
def slice_set(container: str, compute: int | None, pause: bool | None, socket: str) -> None:
    """Set CONTAINER's compute share, or pause/resume it; the library obeys within one control period."""
    if compute is None and pause is None:
        raise click.UsageError("give --compute N, --pause or --resume")
    message: dict = {"op": "update", "container_id": container}
    if compute is not None:
        message["compute"] = compute
    if pause is not None:
        message["paused"] = pause
    reply = _call(message, socket)
    r = reply["reservation"]
    state = "" if pause is None else (", paused" if pause else ", resumed")
    click.echo(f"{container}: slice {r['slice_id']} on card {r['card_index']}, {r['compute']}% compute{state}")


@main.command("library-path")
def library_path() -> None:
    """Print the absolute path of libflexai.so, for use outside containers:

    FLEXAI_MEMORY=4GiB LD_PRELOAD=$(flexai library-path) python train.py
    """
    from flexai_hook.devices import library

    try:
        click.echo(str(library.library_path()))
    except library.LibraryMissing as exc:
        raise click.ClickException(str(exc)) from None


@main.command("dra")
@click.option("--registry-dir", default="/var/lib/kubelet/plugins_registry", show_default=True,
              help="The kubelet's plugin registration directory.")
@click.option("--plugin-dir", default="/var/lib/kubelet/plugins/gpu.flexai.io", show_default=True,
              help="Where the DRA service's socket goes.")
@click.option("--cdi-dir", default="/var/run/cdi", show_default=True, help="Where claims' CDI specs are written.")
@click.option("--node", envvar="NODE_NAME", default=None,
              help="This node's name, the pool its claims are allocated from (env NODE_NAME; default: any pool).")
@_kube_api_options
@click.option("--publish-interval", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds between checks of flexaid's cards for the node's ResourceSlice (0: do not publish).")
@click.option("--publish-backoff-max", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Longest wait between retries when the API server cannot be reached.")
@click.option("--http-listen", default=None, metavar="HOST:PORT",
              help="Serve /healthz and /metrics (Prometheus) over HTTP here, e.g. :9402 (default: off).")
@click.option("-v", "--verbose", is_flag=True, help="Log debug lines.")
@_socket_option
def dra(registry_dir: str, plugin_dir: str, cdi_dir: str, node: str | None, kube_api: str | None,
        token_file: str | None, ca_file: str | None, publish_interval: float, publish_backoff_max: float,
        http_listen: str | None, verbose: bool, socket: str) -> None:
    """Run the Kubernetes DRA kubelet plugin (driver gpu.flexai.io) in the foreground until
    SIGTERM: claims allocated on this node become flexaid slices and CDI specs
    (docs/kubernetes.md)."""
    import logging

    from flexai_hook.dra import agent
    from flexai_hook.dra.apiserver import ApiError, ApiServer
    from flexai_hook.dra.plugin import Sockets
    from flexai_hook.dra.protos import ProtoUnavailable

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        api = ApiServer(kube_api, token_file, ca_file) if kube_api else ApiServer.in_cluster()
        options = agent.Options(sockets=Sockets.under(registry_dir, plugin_dir), cdi_dir=cdi_dir, socket=socket,
                                api=api, node=node, publish_interval=publish_interval,
                                publish_max_backoff=publish_backoff_max, http_listen=http_listen)
        code = agent.run(options)
    except (ApiError, ProtoUnavailable, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


@main.command("extender")
@click.option("--listen", default=":8888", show_default=True, metavar="HOST:PORT",
              help="Where kube-scheduler reaches the extender (its urlPrefix).")
@click.option("--policy", type=click.Choice(["flexai", "fgd", "best-fit"]), default="flexai", show_default=True,
              help="Placement policy filter and prioritize follow (docs/placement.md).")
@_kube_api_options
@click.option("--relist-interval", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds between lists of ResourceSlices and ResourceClaims.")
@click.option("--max-age", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="While relisting fails, decide on the last view this many seconds, then answer filter with an "
                   "error (kube-scheduler skips an ignorable extender).")
@click.option("-v", "--verbose", is_flag=True, help="Log debug lines.")
def extender(listen: str, policy: str, kube_api: str | None, token_file: str | None, ca_file: str | None,
             relist_interval: float, max_age: float, verbose: bool) -> None:
    """Run the kube-scheduler extender in the foreground until SIGTERM: pods whose claims ask
    gpu.flexai.io for part of a card go to the node flexai's placement picks
    (docs/kubernetes.md, "Scheduler extender")."""
    import logging

    from flexai_hook.dra.apiserver import ApiError, ApiServer
    from flexai_hook.extender import server
    from flexai_hook.extender.cache import Cache

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        api = ApiServer(kube_api, token_file, ca_file) if kube_api else ApiServer.in_cluster()
        options = server.Options(listen=listen, policy=policy, interval=relist_interval, max_age=max_age)
        code = server.run(options, Cache(api, relist_interval, max_age))
    except (ApiError, OSError, ValueError) as exc:
        raise click.ClickException(f"flexai extender: {exc}") from None
    sys.exit(code)


@main.command("admission")
@click.option("--listen", default=":9443", show_default=True, metavar="HOST:PORT",
              help="Where the API server reaches the webhook (HTTPS; the Service's targetPort).")
@click.option("--cert", "cert_file", required=True, metavar="FILE",
              help="The serving certificate (PEM), valid for the Service's DNS name.")
@click.option("--key", "key_file", required=True, metavar="FILE", help="Its private key (PEM).")
@click.option("--card-memory", "card_memory", default=None, metavar="SIZE[@VENDOR],...",
              help="The cluster's card sizes, e.g. 80Gi@nvidia,64Gi@huawei, instead of listing the "
                   "gpu.flexai.io ResourceSlices (no API server access needed); a size without @VENDOR is a "
                   "simulated card.")
@_kube_api_options
@click.option("--relist-interval", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds between lists of the gpu.flexai.io ResourceSlices.")
@click.option("--max-age", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="While listing fails, complete claims from the last sizes this many seconds, then let them "
                   "through unchanged with a warning.")
@click.option("-v", "--verbose", is_flag=True, help="Log debug lines.")
def admission(listen: str, cert_file: str, key_file: str, card_memory: str | None, kube_api: str | None,
              token_file: str | None, ca_file: str | None, relist_interval: float, max_age: float,
              verbose: bool) -> None:
    """Run the mutating admission webhook in the foreground until SIGTERM: a ResourceClaim (or
    template) asking gpu.flexai.io for only memory or only compute gets the other in the same
    share of the card, as FLEXAI_MEMORY / FLEXAI_COMPUTE alone do (docs/kubernetes.md,
    "Claims that name one capacity")."""
    import logging

    from flexai_hook.admission import defaults, server
    from flexai_hook.dra.apiserver import ApiError, ApiServer
    from flexai_hook.dra.claim import ClaimError

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if card_memory:
            try:
                fixed = defaults.parse_cards(card_memory)
            except ClaimError as exc:
                raise click.ClickException(f"flexai admission: --card-memory: {exc}") from None
            sizes = server.Sizes(fixed=fixed)
        else:
            api = ApiServer(kube_api, token_file, ca_file) if kube_api else ApiServer.in_cluster()
            sizes = server.Sizes(api=api, interval=relist_interval, max_age=max_age)
        code = server.run(server.Options(listen=listen, cert_file=cert_file, key_file=key_file), sizes)
    except (ApiError, OSError, ValueError) as exc:
        raise click.ClickException(f"flexai admission: {exc}") from None
    sys.exit(code)


main.add_command(install)
main.add_command(uninstall)
main.add_command(doctor)

if __name__ == "__main__":
    main()
