"""The container images of the installed release: load them into the Docker Engine, or push them
into an enclave registry."""

from typing import Annotated, Any

import typer

from chiron.cli.app import JsonOpt, PrefixOpt, StateOpt, WaitOpt, app, emit, host_paths, say, setting

images_app = typer.Typer(
    help="The container images of the INSTALLED release: load them into the Docker Engine or push them.",
    no_args_is_help=True,
)
app.add_typer(images_app, name="images")


def _images(action: str, registry: str | None, prefix: Any, state_dir: Any, wait: Any, as_json: bool) -> None:
    from chiron.engines.host import installed_images

    prefix, state_dir = host_paths(prefix, state_dir)
    info = installed_images(prefix, state_dir, action, registry, setting("host.wait", wait))
    if as_json:
        emit(info)
    else:
        say(info["message"])


@images_app.command("load")
def images_load(
    prefix: PrefixOpt = None,
    state_dir: StateOpt = None,
    wait: WaitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Load the current release's images (from its kept appliance, re-hashed) into the Docker Engine."""
    _images("load", None, prefix, state_dir, wait, as_json)


@images_app.command("push")
def images_push(
    registry: Annotated[str, typer.Option("--registry", help="Enclave registry HOST[:PORT][/PREFIX].")],
    prefix: PrefixOpt = None,
    state_dir: StateOpt = None,
    wait: WaitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Push the current release's images (from its kept appliance, re-hashed) into an enclave registry."""
    _images("push", registry, prefix, state_dir, wait, as_json)
