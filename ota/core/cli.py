"""``edgefleet delta``: make, apply and inspect delta patches from the shell.

Mounted lazily by the root CLI (``ota/cli.py``) as ``edgefleet delta``. A thin shell over
``ota.core.delta``: it imports nothing heavier than the delta engine, so it runs on a device too.
Errors from the engine become a one-line message and exit code 1, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ota.core.delta import DeltaError, PatchHeader, apply_delta, make_delta, read_header
from ota.core.files import sha256_file

delta_app = typer.Typer(
    name="delta",
    help="Make, apply and inspect model-aware delta patches.",
    add_completion=False,
    no_args_is_help=True,
)

OutOption = Annotated[Path, typer.Option("--output", "-o", help="File to write.", dir_okay=False)]


def _fail(exc: DeltaError) -> typer.Exit:
    typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
    return typer.Exit(code=1)


def _summary(header: PatchHeader) -> str:
    base = (
        f"base {header.base_sha256[:12]}… ({header.base_length} B)"
        if header.base_sha256
        else "no base (full)"
    )
    ratio = 100 * header.patch_length / header.result_length if header.result_length else 0.0
    return (
        f"{header.codec} patch, {header.patch_length} B = {ratio:.2f} % of the {header.result_length} B "
        f"result; {base}; result {header.result_sha256[:12]}…"
    )


@delta_app.command("make")
def make_command(
    old: Annotated[
        Path | None, typer.Argument(help="Base file devices already have; omit with --full.", dir_okay=False)
    ] = None,
    new: Annotated[Path | None, typer.Argument(help="New file to deliver.", dir_okay=False)] = None,
    output: OutOption = Path("delta.efd"),
    full: Annotated[
        bool, typer.Option("--full", help="No base: model-aware full compression of NEW.")
    ] = False,
) -> None:
    """Make a patch that turns OLD into NEW (`edgefleet delta make OLD NEW -o PATCH`)."""
    if full and new is None:
        old, new = None, old
    if new is None or (old is None and not full):
        raise typer.BadParameter("give OLD and NEW, or --full NEW")
    try:
        header = make_delta(None if full else old, new, output)
    except DeltaError as exc:
        raise _fail(exc) from exc
    typer.echo(f"wrote {output}: {_summary(header)}")


@delta_app.command("apply")
def apply_command(
    old: Annotated[
        Path | None, typer.Argument(help="Base file (omit for a full patch).", dir_okay=False)
    ] = None,
    patch: Annotated[Path | None, typer.Argument(help="Patch file.", dir_okay=False)] = None,
    output: OutOption = Path("result.bin"),
    max_output_bytes: Annotated[
        int | None, typer.Option("--max-output-bytes", help="Refuse patches whose result is larger.")
    ] = None,
) -> None:
    """Rebuild NEW from OLD and PATCH, verifying its sha256 (`edgefleet delta apply OLD PATCH -o OUT`)."""
    if patch is None:
        old, patch = None, old
    if patch is None:
        raise typer.BadParameter("give OLD PATCH, or PATCH alone for a full patch")
    try:
        header = apply_delta(old, patch, output, max_output_bytes=max_output_bytes)
    except DeltaError as exc:
        raise _fail(exc) from exc
    # The header keeps only a prefix of the result's sha256 (an accident check); print the whole one.
    typer.echo(f"wrote {output} ({header.result_length} B, sha256 {sha256_file(output)[0]}) verified")


@delta_app.command("info")
def info_command(patch: Annotated[Path, typer.Argument(help="Patch file.", dir_okay=False)]) -> None:
    """Print a patch's header (`edgefleet delta info PATCH`)."""
    try:
        header = read_header(patch)
    except DeltaError as exc:
        raise _fail(exc) from exc
    typer.echo(_summary(header))
    for name in (
        "version",
        "codec",
        "base_sha256",
        "base_length",
        "result_sha256",
        "result_length",
        "header_length",
        "control_length",
        "control_method",
        "literal_length",
        "literal_method",
        "data_length",
    ):
        typer.echo(f"  {name:14} {getattr(header, name)}")
