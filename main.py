"""One two-stage run from the shell, e.g.
python main.py --model-name resnet32 --imbalance-type long_tail --method ldam_drw

Every setting of a run (config.TwoStageConfig) is an option below; the script builds the config,
calls the same function a notebook would (run_two_stage), and prints stage 1 vs stage 2 on test.
A finished run keeps its model in <log dir>/<run name>.model.pt;
python main.py --evaluate results/<run name>.model.pt [--json metrics.json]
prints its test metrics and confusion matrix again (saved_model.evaluate_file).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import sys

import saved_model
from cli import ArgumentParser, one_line_warnings, unwritable_file
from results_logger import write_json
from runfiles import RunLockedError
from config import CONFIG_GROUPS, TwoStageConfig
from two_stage_ictta import run_two_stage

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _base_type(annotation: str):
    """'int | None' -> (int, True); the dataclass annotations are strings (PEP 563)."""
    parts = [p.strip() for p in str(annotation).split("|")]
    return _TYPES.get(parts[0], str), "None" in parts


def _none_or(tp):
    def parse(text: str):
        return None if text.lower() == "none" else tp(text)
    parse.__name__ = tp.__name__
    return parse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends "(default: X)" to an option's help unless the text already says what the default is."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or "%(default)" in text or action.default in (None, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def build_parser(config_cls=TwoStageConfig, description: str | None = None,
                 groups: dict | None = CONFIG_GROUPS) -> argparse.ArgumentParser:
    """An option per config field, typed from its annotation, documented from its metadata (its
    ``help``; its ``choices``, enforced here; and with ``groups``, its ``group`` of the --help).
    Required fields are not required here, so that --evaluate can go without them: see main()."""
    parser = ArgumentParser(description=description or __doc__, formatter_class=HelpFormatter,
                            allow_abbrev=False)
    sections = {key: parser.add_argument_group(title) for key, title in (groups or {}).items()}
    if config_cls is TwoStageConfig:
        ev = parser.add_argument_group("evaluate a saved model instead of training")
        ev.add_argument("--evaluate", metavar="MODEL_PT", help="a run's .model.pt: print its test metrics and "
                                                               "confusion matrix (--data-root, --device apply)")
        ev.add_argument("--json", metavar="OUT", help="with --evaluate: also write the metrics to this JSON file")
    for f in dataclasses.fields(config_cls):
        where = sections[f.metadata["group"]] if groups else parser
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if f.default is dataclasses.MISSING:
            help_text += " (required)"
        default = None if f.default is dataclasses.MISSING else f.default
        if f.name == "lr_milestones":
            where.add_argument(flag, type=int, nargs=2, default=list(default), metavar=("E1", "E2"), help=help_text)
            continue
        tp, optional = _base_type(f.type)
        if tp is bool:
            where.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            where.add_argument(flag, type=_none_or(tp) if optional else tp, default=default,
                               choices=f.metadata.get("choices"), help=help_text)
    return parser


def missing_required(args: argparse.Namespace, config_cls=TwoStageConfig) -> list[str]:
    """The flags of the required fields that ``args`` leaves unset."""
    return ["--" + f.name.replace("_", "-") for f in dataclasses.fields(config_cls)
            if f.default is dataclasses.MISSING and getattr(args, f.name) is None]


def config_from_args(args: argparse.Namespace, config_cls=TwoStageConfig):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)}
    if "lr_milestones" in values:
        values["lr_milestones"] = tuple(values["lr_milestones"])
    return config_cls(**values)


def config_argv(cfg, config_cls=TwoStageConfig) -> list[str]:
    """The options of this script that rebuild ``cfg``: each field that differs from its default
    (and every required one), so that ``config_from_args(build_parser().parse_args(config_argv(cfg)))
    == cfg``. A grid's run becomes a command a shell can run on its own."""
    argv = []
    for f in dataclasses.fields(config_cls):
        value = getattr(cfg, f.name)
        if f.default is not dataclasses.MISSING and value == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (tuple, list)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]  # every None-able field defaults to None
    return argv


def format_table(results: dict) -> str:
    """Stage 1 vs stage 2 on test (final and best-by-validation epochs), as aligned text."""
    metrics = ("acc", "macro_f1", "tail_macro_f1", "many_acc", "medium_acc", "few_acc")
    lines = [f"{'test metric':<16}{'stage 1':>10}{'stage 2':>10}{'delta':>10}   (epoch picked by)"]
    for kind in ("final", "best"):
        s1 = results.get("stage1", {}).get(kind, {})
        s2 = results.get("stage2", {}).get(kind, {})
        how = "last epoch" if kind == "final" else f"{s2.get('selected_on', s1.get('selected_on', ''))} macro-F1"
        lines.append(f"-- {kind} ({how})")
        for m in metrics:
            a, b = s1.get("test", {}).get(m), s2.get("test", {}).get(m)
            fmt = lambda v: f"{100 * v:10.2f}" if v is not None else f"{'-':>10}"
            delta = fmt(b - a) if a is not None and b is not None else f"{'-':>10}"
            lines.append(f"{m:<16}{fmt(a)}{fmt(b)}{delta}")
    return "\n".join(lines)


def evaluate_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """--evaluate: a saved model's test metrics, printed and, with --json, written."""
    why_not = args.json and unwritable_file(args.json)
    if why_not:  # before the evaluation, not after it
        parser.error(f"--json {args.json}: {why_not}; give a file path you can write")
    try:
        result = saved_model.evaluate_file(args.evaluate, data_root=args.data_root, device=args.device)
    except (OSError, EOFError, RuntimeError, KeyError, pickle.UnpicklingError) as e:  # no such file, not a model file
        why = f"{type(e).__name__}: {e}" if str(e) else "the file is empty or cut short"
        parser.error(f"--evaluate {args.evaluate}: not a model file of this project ({why})")
    except ValueError as e:
        parser.error(str(e))
    print(saved_model.format_evaluation(result))
    if args.json:
        write_json(args.json, result)
        print(f"metrics: {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.json and not args.evaluate:
        parser.error("--json goes with --evaluate")
    if args.evaluate:
        return evaluate_main(parser, args)
    missing = missing_required(args)
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    try:
        cfg = config_from_args(args)
        results = run_two_stage(cfg)
    except ValueError as e:  # bad settings or data: a usage error, not a traceback
        parser.error(str(e))
    except RunLockedError as e:  # another process is writing this run: say so, no traceback
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    if results.get("skipped"):
        print("finished before with these settings: its results, not retrained (--no-resume trains it again)")
    print(format_table(results))
    print(f"results: {results['paths']['csv']}")
    return 0


def quiet_on_closed_pipe(run) -> int:
    """``run()``, ending quietly when the reader of our output goes away (``... | head``)."""
    try:
        return run()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


if __name__ == "__main__":
    one_line_warnings()
    sys.exit(quiet_on_closed_pipe(main))
