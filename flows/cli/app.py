"""`graftline` on the command line.

    graftline run                                 the embedded demo, end to end
    graftline run --train data.csv --eval other=other.csv --backbone minilm-l6
    graftline run --config params.yaml --set model.max_length=256
    graftline check --train data.csv              the pre-flight checks and the validation report, nothing trained
    graftline resume [RUN]                        continue a killed or failed run where it stopped
    graftline promote graftline-demo --to production
    graftline rollback graftline-demo --alias production
    graftline history graftline-demo
    graftline predict graftline-demo-student@production --input new.csv --output scored.csv
    graftline monitor graftline-demo-student@production --input new.csv   drift check (default: rows predict scored)
    graftline serve graftline-demo-student@production      MLflow's scoring server on the ONNX form
    graftline explain graftline-demo@production "my parcel never came"   the words behind a prediction
    graftline up | down | deploy                  servers, worker and deployments
    graftline zoo list | install | verify         the backbone catalog

Errors in the input print one line (`graftline: error: ...`) and exit with status 2 (cli/errors.py);
a promotion refused by its gates exits with status 1.
"""

from __future__ import annotations

import typer

from graftline.flows.cli import lifecycle, platform, registry, serving, zoo

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="The transfer-learning lifecycle, orchestrated and tracked.",
)


@app.callback()
def _main() -> None:
    """graftline: validate, fine-tune, evaluate, distil and register text classifiers."""


for module, names in (
    (lifecycle, ("run", "check", "resume")),
    (registry, ("promote", "rollback", "history")),
    (serving, ("predict", "monitor", "serve", "explain")),
    (platform, ("up", "down", "deploy")),
):
    for name in names:
        app.command(name)(getattr(module, name))
app.add_typer(zoo.app, name="zoo")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
