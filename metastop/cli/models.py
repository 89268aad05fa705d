"""``metastop models``: the registry's versions, champion, promotion and rollback."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from .main import library_errors, main, print_table, write_json


@main.group(invoke_without_command=True)
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Registry folder (default: $METASTOP_MODELS or the project's models/).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
@library_errors
def models(ctx: click.Context, root: str | None, as_json: bool) -> None:
    """List model versions (folders with a manifest.json) and their metrics.

    \b
    Example:
      metastop models
      metastop models show default
    """
    _check_root(root)
    ctx.obj = {"root": root, "as_json": as_json}
    if ctx.invoked_subcommand is not None:
        return
    from ..ops.registry import Registry

    versions = Registry(root).versions()
    if as_json:
        write_json([v.to_dict() for v in versions], "-")
        return
    rows = [[v.name, "*" if v.champion else "", v.created, _metrics_text(v.metrics), v.problem]
            for v in versions]
    print_table(f"model versions in {Registry(root).root}",
                ["version", "champion", "created", "metrics", "problem"], rows)


def _check_root(root: str | None) -> None:
    """Refuse a registry folder that was named (``--root``: exit status 2, or
    ``$METASTOP_MODELS``: 1) but is not there: listing it would show nothing and exit 0, as
    if the registry were empty."""
    from ..predict.champion import ENV_ROOT

    if root is not None:
        named, given = root, "--root"
    elif os.environ.get(ENV_ROOT):
        named, given = os.environ[ENV_ROOT], f"${ENV_ROOT}"
    else:
        return
    if named and Path(named).is_dir():
        return
    problem = ("is not a folder" if Path(named).exists() else "does not exist") if named else \
        "is an empty path"
    where = "" if root is not None else f" ({given})"  # click names the option itself
    message = (f"registry folder {named!r}{where} {problem}: give the folder that holds the "
               f"model versions (a `metastop retrain --registry` folder), or leave out {given} "
               f"for the project's models/")
    if root is not None:  # a bad option: a usage error, exit status 2
        raise click.BadParameter(message, param_hint="'--root'")
    raise click.ClickException(message)


def _metrics_text(metrics: dict[str, Any], limit: int = 6) -> str:
    flat = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float))]
    return ", ".join(f"{k}={v:.4g}" for k, v in flat[:limit]) or "-"


@models.command("show")
@click.argument("version")
@click.pass_context
@library_errors
def models_show(ctx: click.Context, version: str) -> None:
    """Show the manifest of one model version.

    \b
    Example:
      metastop models show default
    """
    from ..ops.registry import Registry, read_manifest

    manifest = read_manifest(Registry(ctx.obj["root"]).path(version))
    if ctx.obj["as_json"]:
        write_json(manifest, "-")
        return
    rows = [[k, json.dumps(v, default=str) if isinstance(v, (dict, list)) else v]
            for k, v in manifest.items()]
    print_table(f"model {version}", ["key", "value"], rows)


@models.command("promote")
@click.argument("version")
@click.option("--reason", default="manual promotion", show_default=True)
@click.pass_context
@library_errors
def models_promote(ctx: click.Context, version: str, reason: str) -> None:
    """Make VERSION the champion (verified first; atomic).

    \b
    Example:
      metastop models promote 20250101-120000-3fa2c1d0
    """
    from ..ops.registry import Registry

    Registry(ctx.obj["root"]).promote(version, reason=reason)
    click.echo(f"champion: {version}")


@models.command("rollback")
@click.option("--reason", default="manual rollback", show_default=True)
@click.pass_context
@library_errors
def models_rollback(ctx: click.Context, reason: str) -> None:
    """Go back to the previous champion (atomic).

    \b
    Example:
      metastop models rollback
    """
    from ..ops.registry import Registry

    click.echo(f"champion: {Registry(ctx.obj['root']).rollback(reason=reason)}")


@models.command("clean")
@click.pass_context
@library_errors
def models_clean(ctx: click.Context) -> None:
    """Remove what killed retrains and promotions left behind (.add-* folders,
    .current.*.tmp files). Every registry write also does this first.

    \b
    Example:
      metastop models clean --root models
    """
    from ..ops.registry import Registry

    removed = Registry(ctx.obj["root"]).clean()
    click.echo(f"removed {len(removed)}: {', '.join(removed)}" if removed else "nothing to clean")
