"""`mimrepro`: one subcommand per DVC stage.  `mimrepro STAGE --help` explains each."""
from __future__ import annotations

import click

from mim.errors import MimError
from stages.common import PROFILE_FILE, read_yaml

PROFILES = ("smoke", "micro", "paper", "mini")


class _Group(click.Group):
    """Turns user-facing errors (MimError) into one-line messages instead of tracebacks."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except MimError as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Reproduce MAE, BEiT, DINO and Img2Vec end to end; `dvc repro` chains these stages."""


@main.command("profile")
@click.argument("name", required=False, type=click.Choice(PROFILES))
def profile(name: str | None) -> None:
    """Show or switch the active params profile (smoke, micro, paper) in params/profile.yaml."""
    if name is None:
        click.echo(read_yaml(PROFILE_FILE)["profile"] if PROFILE_FILE.is_file() else "smoke")
        return
    PROFILE_FILE.parent.mkdir(parents=True, exist_ok=True)
    PROFILE_FILE.write_text(
        "# Active profile: params/<profile>.yaml feeds every stage (switch: mimrepro profile NAME)\n"
        f"profile: {name}\n"
    )
    click.echo(f"profile: {name} (params/{name}.yaml); run `dvc repro` to rebuild what changed")

# One command per DVC stage (each module keeps its heavy imports inside the command).
from stages.budget import budget  # noqa: E402
from stages.check_params import check_params  # noqa: E402
from stages.curves import curves  # noqa: E402
from stages.detect import detect  # noqa: E402
from stages.diff import diff  # noqa: E402
from stages.finetune import finetune  # noqa: E402
from stages.fingerprint_data import fingerprint_data  # noqa: E402
from stages.import_student import import_student  # noqa: E402
from stages.parity import parity  # noqa: E402
from stages.prepare_data import prepare_data  # noqa: E402
from stages.pretrain_student import pretrain_student  # noqa: E402
from stages.pretrain_teacher import import_teacher, pretrain_teacher  # noqa: E402
from stages.probe import probe  # noqa: E402
from stages.segment import segment  # noqa: E402
from stages.tables import tables  # noqa: E402
from stages.token_diversity import token_diversity  # noqa: E402
from stages.tokenizer import convert_dalle, tokenizer  # noqa: E402

for _command in (check_params, fingerprint_data, prepare_data, pretrain_teacher, import_teacher, tokenizer, convert_dalle,
                 pretrain_student, import_student, token_diversity, finetune, probe, detect, segment, tables, parity, budget, diff, curves):
    main.add_command(_command)


if __name__ == "__main__":  # `torchrun --nproc_per_node=8 -m stages.cli pretrain-student ...`
    main()
