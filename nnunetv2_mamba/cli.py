"""The ``nnunetv2_mamba`` command. Each subcommand is a module of :mod:`nnunetv2_mamba.commands` listed below,
exposing ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int | None``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS: list[tuple[str, str]] = [
    ("plans", "nnunetv2_mamba.commands.plans"),
    ("ext-trainer-path", "nnunetv2_mamba.commands.ext_trainer_path"),
    ("doctor", "nnunetv2_mamba.commands.doctor"),
    ("slim-checkpoint", "nnunetv2_mamba.commands.slim_checkpoint"),
    ("challenge-predict", "nnunetv2_mamba.commands.challenge_predict"),
    ("demo", "nnunetv2_mamba.commands.demo"),
    ("convert-h5", "nnunetv2_mamba.commands.convert_h5"),
    ("simulate-scribbles", "nnunetv2_mamba.commands.simulate_scribbles"),
    ("check-scribbles", "nnunetv2_mamba.commands.check_scribbles"),
    ("evaluate", "nnunetv2_mamba.commands.evaluate"),
    ("predict-clicks", "nnunetv2_mamba.commands.predict_clicks"),
    ("preprocess-unlabeled", "nnunetv2_mamba.commands.preprocess_unlabeled"),
    ("remove-small-components", "nnunetv2_mamba.commands.remove_small_components"),
    ("ensemble-weights", "nnunetv2_mamba.commands.ensemble_weights"),
    ("ensemble", "nnunetv2_mamba.commands.ensemble"),
]


# What bad input raises (our errors derive from ValueError): a one-paragraph message, the traceback with --debug only.
USER_ERRORS = (ValueError, OSError, KeyError)


def main(argv: list[str] | None = None) -> int:
    from nnunetv2_mamba.utilities.openmp import choose_wait_policy

    policy = choose_wait_policy()  # before any command imports torch
    if policy:
        print(policy, file=sys.stderr)
    parser = argparse.ArgumentParser(
        prog="nnunetv2_mamba",
        description="Mamba networks and scribble-supervised training for nnU-Net v2. Run a subcommand with -h.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS:
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("numexpr").setLevel(logging.WARNING)  # its thread-count notice is noise in our output
    try:
        return args.run(args) or 0
    except USER_ERRORS as e:
        if args.debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error ({args.command}): {message}\n(nnunetv2_mamba --debug {args.command} ... shows the traceback)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
