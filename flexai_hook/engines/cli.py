"""`flexai install|uninstall docker|containerd|podman` and `flexai doctor` (registered in cli.py)."""

from __future__ import annotations

import os
import sys

import click

from .. import client
from . import ConfigError, Plan, apply, containerd, docker, podman, render_diff, write_failure

ENGINES = ("docker", "containerd", "podman")


def _engine_options(f):
    options = [
        click.option("--dry-run", is_flag=True, help="Print the changes as a unified diff; change nothing."),
        click.option("--config", "config", default=None,
                     help=f"The engine's main config (default: {docker.DAEMON_JSON}, {containerd.MAIN_CONFIG} "
                          f"or {podman.CONTAINERS_CONF})."),
        click.option("--dropin", default=containerd.DROPIN, show_default=True,
                     help="containerd: the drop-in file flexai owns."),
        click.option("--hooks-dir", default=None,
                     help="podman: the OCI hooks directory (default: the one this Podman reads: containers.conf's "
                          f"engine.hooks_dir, else {podman.BUILTIN_HOOKS_DIRS[0]})."),
        click.option("--root", default="/", show_default=True,
                     help="podman: the folder that stands for / when finding Podman's files (image builds, tests)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _report(plan: Plan, dry_run: bool) -> None:
    if not plan.effective:
        click.echo(f"{plan.engine}: already {'installed' if plan.action == 'install' else 'uninstalled'}; nothing to change")
        return
    if dry_run:
        click.echo(render_diff(plan), nl=False)
        click.echo(f"dry run: nothing changed; `flexai {plan.action} {plan.engine}` would change "
                   f"{len(plan.effective)} file(s)")
        return
    for line in apply(plan):
        click.echo(line)
    click.echo(f"then {plan.restart}")
    for note in plan.notes:
        click.echo(f"note: {note}")


def _default_config(engine: str, config: str | None, root: str = "/") -> str:
    if engine != "podman" and root and os.path.abspath(root) != "/":
        raise click.UsageError("--root is for podman only")
    if config:
        return config
    if engine == "podman":
        return podman.in_root(root, podman.CONTAINERS_CONF)
    return {"docker": docker.DAEMON_JSON, "containerd": containerd.MAIN_CONFIG}[engine]


@click.command()
@click.argument("engine", type=click.Choice(ENGINES))
@_engine_options
@click.option("--default", "make_default", is_flag=True, help="Also make flexai the engine's default runtime.")
@click.option("--runtime-path", default=None, help="flexai-runtime's path (default: /usr/local/bin/flexai-runtime).")
@click.option("--hook-path", default=None, help="podman: flexai-hook's path (default: /usr/local/bin/flexai-hook).")
@click.option("--socket", default=None, help="podman: flexaid socket the hooks use, when not the default.")
def install(engine, dry_run, config, dropin, hooks_dir, root, make_default, runtime_path, hook_path, socket):
    """Register the flexai runtime with ENGINE (docker, containerd or podman).

    Edits the engine's config so `--runtime=flexai` (Docker, Podman), RuntimeClass `flexai`
    (containerd/Kubernetes) and, for Podman, any container with a flexai.io/ annotation get a
    slice. Idempotent; every replaced file is kept as FILE.flexai-backup-TIME.
    """
    config = _default_config(engine, config, root)
    try:
        if engine == "docker":
            plan = docker.plan_install(config, runtime_path, make_default)
        elif engine == "containerd":
            plan = containerd.plan_install(config, dropin, runtime_path, make_default)
        else:
            env = {"FLEXAI_SOCKET": socket} if socket and socket != client.DEFAULT_SOCKET else None
            plan = podman.plan_install(config, hooks_dir, runtime_path, hook_path, make_default, env, root)
        _report(plan, dry_run)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(write_failure(exc, _command_line())) from None


@click.command()
@click.argument("engine", type=click.Choice(ENGINES))
@_engine_options
def uninstall(engine, dry_run, config, dropin, hooks_dir, root):
    """Remove the flexai runtime from ENGINE's config (the reverse of `flexai install`)."""
    config = _default_config(engine, config, root)
    try:
        if engine == "docker":
            plan = docker.plan_uninstall(config)
        elif engine == "containerd":
            plan = containerd.plan_uninstall(config, dropin)
        else:
            plan = podman.plan_uninstall(config, hooks_dir, root)
        _report(plan, dry_run)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(write_failure(exc, _command_line())) from None


def _command_line() -> str:
    """The command as the user typed it (for the fix in an error line): flexai and its arguments."""
    import shlex

    return shlex.join(["flexai", *sys.argv[1:]])


@click.command()
@click.option("--socket", envvar="FLEXAI_SOCKET", default=client.DEFAULT_SOCKET, show_default=True,
              help="flexaid's Unix socket (env FLEXAI_SOCKET).")
@click.option("--engine", "engines", multiple=True, type=click.Choice(ENGINES),
              help="Check only this engine (repeatable; default: all).")
@click.option("--docker-config", default=docker.DAEMON_JSON, show_default=True)
@click.option("--containerd-config", default=containerd.MAIN_CONFIG, show_default=True)
@click.option("--containerd-dropin", default=containerd.DROPIN, show_default=True)
@click.option("--podman-config", default=None, help=f"(default: {podman.CONTAINERS_CONF})")
@click.option("--hooks-dir", default=None, help="Podman's hooks folder (default: the ones this Podman reads).")
@click.option("--podman-root", default="/", show_default=True,
              help="The folder that stands for / when finding Podman's files.")
@click.option("--runtime-config", envvar="FLEXAI_RUNTIME_CONFIG", default="/etc/flexai/runtime.json",
              show_default=True, help="flexai-runtime's config (cdi_spec_dirs, chain_without_cdi; env "
                                      "FLEXAI_RUNTIME_CONFIG), for where each card's driver comes from.")
def doctor(socket, engines, docker_config, containerd_config, containerd_dropin, podman_config, hooks_dir,
           podman_root, runtime_config):
    """Check that this host can start sliced containers, and say what to fix.

    Engine configs (and whether the engine has read them since they changed), flexaid and its
    socket's permissions, the preload library, the cgroup layout, and where each card's driver
    comes from in a sliced container (its CDI device, or what is missing). Exits 1 when
    something fails.
    """
    from . import doctor as doctor_mod

    podman_config = podman_config or podman.in_root(podman_root, podman.CONTAINERS_CONF)
    findings = doctor_mod.run(socket, docker_config, containerd_config, containerd_dropin, podman_config,
                              hooks_dir, tuple(engines) or ENGINES, podman_root,
                              runtime_config=runtime_config)
    for finding in findings:
        click.echo(finding.render())
    failed = [f for f in findings if f.level == doctor_mod.FAIL]
    click.echo(f"\n{len(failed)} problem(s) to fix" if failed else "\nno problems found")
    sys.exit(1 if failed else 0)


COMMANDS = (install, uninstall, doctor)
