"""``probprune certificate check CERT --weights PRUNED [--target TARGET]``: confirm or reject a certificate."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from probprune.cli.app import app, console, emit_json, print_header
from probprune.config import ProbPruneError

if TYPE_CHECKING:
    from probprune.runner.certificate import CheckOutcome

certificate_app = typer.Typer(rich_markup_mode=None,
                              help="Pruning certificates: JSON documents with the gap sandwich of a pruned "
                              "network — chain (schema probprune/certificate.schema.json), ONNX graph "
                              "(certificate4.schema.json) or local balls (certificate4-local.schema.json).",
                              no_args_is_help=True)
app.add_typer(certificate_app, name="certificate")


@certificate_app.command("check", help="Validate a certificate against its schema, re-derive every number it states "
                         "from the weights (re-run pruning, statistics, certified bound and norms, the gap at the "
                         "witness, ε(δ), digests) and confirm it (exit 0, listing what could not be re-derived) or "
                         "reject it (exit 2, naming the field, the stated and the recomputed value).")
def check_cmd(
    cert: Annotated[str, typer.Argument(help="The certificate (.json).")],
    weights: Annotated[str, typer.Option(help="Chain certificate: the pruned network f (.safetensors). Graph "
                                          "certificate (an ONNX model): the target F (.onnx), with --pruned.")],
    target: Annotated[Optional[str], typer.Option(
        help="The target F (.safetensors); not needed when the certified target was sampled from a law.")] = None,
    pruned: Annotated[Optional[str], typer.Option(
        help="Graph certificate: the pruned model f (.onnx); --weights is then the target, as `gap` takes them.")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the resolved input and stop.")] = False,
) -> None:
    from probprune.report.certificate import read_certificate  # here: torch/matplotlib only when it runs
    from probprune.runner.certificate import CertificateRejected

    print_header({"certificate": cert, "weights": weights, "target": target, "pruned": pruned}, None, as_json)
    if dry_run:
        return
    doc = read_certificate(cert)
    try:
        res = _check(doc, cert, weights, target, pruned)
    except CertificateRejected as e:
        if as_json:  # the machine-readable verdict on stdout, then the one error line and exit 2
            emit_json({**e.to_dict(), "certificate": cert, "weights": weights})
        raise
    if as_json:
        emit_json({**res.to_dict(), "certificate": cert, "weights": weights})
        return
    console.print(f"certificate confirmed: {len(res.verified)} fields re-derived from the weights; the certified "
                  f"upper bound is {res.upper:.6g}, the lower bound {res.lower:.6g} (at the witness), radius "
                  f"r = {res.radius:g}, target {res.target_source}", markup=False, soft_wrap=True)
    console.print("not verified (the confirmation does not cover them): "
                  + "; ".join(f"{f} ({r})" for f, r in res.not_verified), markup=False, soft_wrap=True)
    for note in res.notes:
        console.print(f"note: {note}", markup=False, soft_wrap=True)


@certificate_app.command("show", help="Print a certificate as a short Markdown report: the model kind (chain or "
                         "graph), files and digests, the pruning, the gap sandwich and its assumptions, and a table "
                         "of its local balls. It shows what the certificate states; `certificate check` confirms it.")
def show_cmd(cert: Annotated[str, typer.Argument(help="The certificate (.json).")]) -> None:
    from probprune.report.certificate import read_certificate, render_certificate

    console.print(render_certificate(read_certificate(cert)), markup=False, soft_wrap=True, highlight=False)


def _check(doc: dict[str, Any], cert: str, weights: str, target: str | None, pruned: str | None) -> CheckOutcome:
    """The checker of the certificate's model kind: a chain (format 3) or a graph (format 4, ``model: graph``)."""
    where = f"certificate={cert!r}"
    if doc.get("model") == "chain" or "local" in doc:  # format 4: a local certificate (balls around inputs)
        from probprune.runner.certificate_local import check_local_certificate

        if pruned is None or target is not None:
            raise ProbPruneError(f"{where}: a local certificate is checked with --weights TARGET --pruned PRUNED "
                                 "(as `probprune certify` takes them), not --target")
        return check_local_certificate(doc, weights, pruned, where=where, cert_dir=Path(cert).parent)
    if doc.get("model") == "graph":
        from probprune.runner.certificate_graph import check_graph_certificate

        if pruned is None or target is not None:
            raise ProbPruneError(f"{where}: a graph certificate is checked with --weights TARGET.onnx --pruned "
                                 "PRUNED.onnx (as `probprune gap` takes them), not --target")
        return check_graph_certificate(doc, weights, pruned, where=where)
    from probprune.runner.certificate import check_certificate

    if pruned is not None:
        raise ProbPruneError(f"pruned={pruned!r}: a chain certificate is checked with --weights PRUNED "
                             "[--target TARGET]; --pruned is for graph certificates")
    return check_certificate(doc, weights, target, where=where)
