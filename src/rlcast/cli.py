"""The `rlcast` command line. Commands import their heavy modules lazily so `rlcast --help` is instant."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from rlcast.errors import RlcastError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Analyse, extrapolate and accelerate RL runs of language models from their rank-1 weight dynamics.",
)
console = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _state["debug"] = debug


# --- commands (each owns its section; keep imports inside the function) ---


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 1 (tracebacks only with --debug)."""
    try:
        app(standalone_mode=False)
    except RlcastError as err:
        if _state["debug"] or "--debug" in sys.argv:
            raise
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except Exception as err:  # click usage errors carry their own exit codes
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise


if __name__ == "__main__":
    main()
