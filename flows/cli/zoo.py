"""`graftline zoo list | install | verify`: the catalog of packaged pretrained backbones."""

from __future__ import annotations

import typer

from graftline.flows.cli.errors import command

app = typer.Typer(no_args_is_help=True, help="The backbone catalog: packaged pretrained backbones that load offline.")


@app.command("list")
@command
def zoo_list() -> None:
    """Every catalog backbone: kind, whether it is installed, size, licence."""
    from graftline.tasks.engine import catalog

    header = f"{'name':20s} {'kind':6s} {'installed':10s} {'params':>12s} {'layers':>6s} {'width':>6s}  "
    print(header + f"{'licence':34s} summary")
    for entry in catalog.CATALOG.values():
        facts = {}
        if catalog.installed(entry):
            try:
                facts = catalog.describe(entry.name)
            except Exception as exc:  # a broken install is reported, not fatal for the listing
                facts = {"summary": f"(unusable: {exc})"}
        print(
            f"{entry.name:20s} {entry.kind:6s} {'yes' if catalog.installed(entry) else 'no':10s} "
            f"{facts.get('parameters', ''):>12} {facts.get('layers') or '':>6} {facts.get('width') or '':>6}  "
            f"{entry.licence:34s} {facts.get('summary', entry.summary)}"
        )


@app.command("install")
@command
def zoo_install(
    names: list[str] = typer.Argument(None, help="Catalog names; none: every entry."),
    force: bool = typer.Option(False, "--force", help="Reinstall and rebuild even when present."),
) -> None:
    """pip-install (no deps, hash-checked), materialise into the cache, verify, describe."""
    from graftline.tasks.engine import catalog

    for name in names or list(catalog.CATALOG):
        catalog.install(name, force=force)
        facts = catalog.describe(name)
        print(
            f"{name}: {facts['parameters']:,} parameters, {facts['layers']} x {facts['width']}, "
            f"tokenizer {facts['tokenizer']}, verified, in {facts['folder']}"
        )


@app.command("verify")
@command
def zoo_verify(names: list[str] = typer.Argument(None, help="Catalog names; none: every installed entry.")) -> None:
    """Re-hash materialised weights against the catalog; exit 2 on any mismatch."""
    from graftline.tasks.engine import catalog

    for name in names or [e.name for e in catalog.CATALOG.values() if catalog.installed(e)]:
        print(f"{name}: sha256 {catalog.verify(name)} ok")
