"""Option types and output helpers the CLI's command modules share."""

from __future__ import annotations

from enum import Enum

import typer


class Precision(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


def echo_err(msg: str) -> None:
    typer.echo(msg, err=True)
