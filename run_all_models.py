"""Run an experiment: the runs that an experiment file describes, resumable, on a launcher.

An experiment is a YAML file under ``experiments/`` (``experiments/README.md`` says every key).
It names a results folder, the settings every run shares (fields of :class:`config.TwoStageConfig`
over their defaults), and parts: each part is a suite (``baseline``, ``tuning``, ``compare`` or
``ablation``, which the tables read from the runs' tag), the models, scenarios and seeds it covers,
and its runs, each a few settings (``runs``) or a method name (``methods``). Every run of a part is
one combination of seed x model x scenario x run. :func:`load_experiment` reads and checks a file;
:func:`plan_experiment` turns it into configs; :mod:`launch` runs them: a finished run is skipped,
a killed one resumes from its last epoch, and runs that share a stage 1 train it once.

Before the first run the command prints the plan (:func:`format_plan`): the runs, how many finished
before and will be skipped, the epochs, and the time the rest will take here, estimated from a few
timed training steps per model (``--no-estimate`` skips them). ``--dry-run`` prints it and exits.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import launch
from cli import ArgumentParser, nearest_existing, one_line_warnings, unique, unwritable_folder
from config import TwoStageConfig, validate_config
from data_loader import DATASETS, DEFAULT_DATASET, IMBALANCE_TYPES
from estimate import format_duration, run_seconds, time_model
from methods import METHODS
from model import MODELS
from train_eval import precision_advice, resolve_device

HERE = Path(__file__).resolve().parent
EXPERIMENTS = HERE / "experiments"
DEFAULT_EXPERIMENT = EXPERIMENTS / "grid.yaml"
SUITES = ("baseline", "tuning", "compare", "ablation")  # what summary_tuning.py reads from a run's tag
EXPERIMENT_KEYS = ("about", "folder", "base", "settings", "models", "scenarios", "seeds", "parts")
PART_KEYS = ("suite", "models", "scenarios", "seeds", "settings", "runs", "methods")
SETTINGS = {f.name: f for f in dataclasses.fields(TwoStageConfig)}
PLANNED = ("model_name", "imbalance_type", "seed", "log_dir", "tag")  # set by the plan, not by a file


# ----------------------------------------------------------------------------------------------
# Experiment files

class ExperimentError(ValueError):
    """A malformed experiment file: one line that names the file, the key and the fix."""


@dataclass
class Part:
    suite: str
    models: list
    scenarios: list
    seeds: list
    settings: dict  # the part's settings, over the experiment's
    runs: list  # one dict of settings per run


@dataclass
class Experiment:
    path: Path
    about: str
    folder: str  # runs go to OUT/<folder>/
    settings: dict
    parts: list = field(default_factory=list)


def experiment_path(name_or_path: str) -> Path:
    """A file path as given, or ``experiments/<name>.yaml`` for a bare name (``--profile``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return EXPERIMENTS / f"{name_or_path}.yaml"


def experiment_names() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))


def load_experiment(path: str | Path) -> Experiment:
    """Read and check an experiment file; :class:`ExperimentError` names what is wrong in it."""
    path = Path(path)
    doc = _read_yaml(path)
    where = _Where(path)
    where.check_keys(doc, EXPERIMENT_KEYS, "")
    base = _load_base(path, doc, where)
    folder = doc.get("folder", base.folder if base else None)
    if not isinstance(folder, str) or not folder or "/" in folder:
        raise where.error("folder", f"{folder!r} is not a folder name; give one, e.g. folder: reduced")
    settings = {**(base.settings if base else {}), **where.settings(doc.get("settings"), "settings")}
    axes = {axis: doc.get(axis) for axis in ("models", "scenarios", "seeds")}
    parts = doc.get("parts")
    if not isinstance(parts, list) or not parts:
        raise where.error("parts", "expected a list of parts, each with a suite and its runs (experiments/README.md)")
    exp = Experiment(path, str(doc.get("about", "")), folder, settings)
    exp.parts = [_part(where, p, f"parts[{i}]", axes) for i, p in enumerate(parts)]
    return exp


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        names = ", ".join(experiment_names())
        raise ExperimentError(f"{path}: no such experiment file; the experiments are {names} (experiments/*.yaml)")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ExperimentError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(doc, dict):
        raise ExperimentError(f"{path}: expected a mapping of {', '.join(EXPERIMENT_KEYS)}; see experiments/README.md")
    return doc


def _load_base(path: Path, doc: dict, where: "_Where") -> Experiment | None:
    """The experiment named by ``base:``, whose folder and settings this one shares."""
    if "base" not in doc:
        return None
    base = path.parent / str(doc["base"])
    if not base.is_file():
        raise where.error("base", f"{base} does not exist; name an experiment file beside this one")
    return load_experiment(base)


def _part(where: "_Where", part, at: str, axes: dict) -> Part:
    if not isinstance(part, dict):
        raise where.error(at, "expected a mapping with a suite and its runs or methods")
    where.check_keys(part, PART_KEYS, at)
    if part.get("suite") not in SUITES:
        raise where.error(f"{at}.suite", f"{part.get('suite')!r} is not one of {', '.join(SUITES)}")
    if ("runs" in part) == ("methods" in part):
        raise where.error(at, "give either runs (a list of settings) or methods (a list of method names)")
    models = where.names(part.get("models", axes["models"]), f"{at}.models", MODELS)
    scenarios = where.names(part.get("scenarios", axes["scenarios"]), f"{at}.scenarios", IMBALANCE_TYPES)
    seeds = part.get("seeds", axes["seeds"])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise where.error(f"{at}.seeds", f"{seeds!r} is not a list of integer seeds >= 0, e.g. [0, 1, 2]")
    if "methods" in part:
        runs = [{"method": m} for m in where.names(part["methods"], f"{at}.methods", METHODS)]
    elif not isinstance(part["runs"], list) or not part["runs"]:
        raise where.error(f"{at}.runs", "expected a list of runs, each a mapping of settings, e.g. - {exp_name: baseline}")
    else:
        runs = [where.settings(r, f"{at}.runs[{i}]") for i, r in enumerate(part["runs"])]
    return Part(part["suite"], models, scenarios, seeds, where.settings(part.get("settings"), f"{at}.settings"), runs)


@dataclass
class _Where:
    """Error lines that name the file and the key."""
    path: Path

    def error(self, key: str, fix: str) -> ExperimentError:
        return ExperimentError(f"{self.path}: {key}: {fix}")

    def check_keys(self, d: dict, valid: tuple, at: str) -> None:
        for key in d:
            if key not in valid:
                raise self.error(f"{at}.{key}" if at else str(key), f"unknown key; valid: {', '.join(valid)}")

    def names(self, values, at: str, registry) -> list:
        if not isinstance(values, list) or not values:
            raise self.error(at, f"expected a list of names of {', '.join(registry)}")
        for v in values:
            if v not in registry:
                raise self.error(at, f"{v!r} is not one of {', '.join(registry)}")
        return values

    def settings(self, d, at: str) -> dict:
        """``d`` as run settings: known names, values of the field's type."""
        if d is None:
            return {}
        if not isinstance(d, dict):
            raise self.error(at, "expected a mapping of settings, e.g. {stage2_lr: 0.03}")
        return {key: self.setting(key, value, f"{at}.{key}") for key, value in d.items()}

    def setting(self, key, value, at: str):
        why = unknown_setting(key)
        if why:
            raise self.error(at, why)
        return coerce_setting(key, value)


def unknown_setting(key) -> str | None:
    """Why ``key`` cannot be a setting of an experiment (with the nearest name), or None."""
    if key in SETTINGS and key not in PLANNED:
        return None
    names = [k for k in SETTINGS if k not in PLANNED]
    close = difflib.get_close_matches(str(key), names, n=1) or [k for k in names if str(key) in k][:1]
    hint = f"did you mean {close[0]}? " if close else ""
    return (f"unknown setting; {hint}python main.py --help lists them"
            + ("" if key not in PLANNED else "; models, scenarios and seeds are keys of a part"))


def coerce_setting(key: str, value):
    """A value read from YAML or the command line as its field expects it: YAML reads ``5e-4``
    as a string and ``[16, 18]`` as a list; a float field takes an int."""
    default = SETTINGS[key].default
    kind = str(SETTINGS[key].type)
    if isinstance(value, str) and kind.startswith("float"):
        try:
            return float(value)
        except ValueError:
            return value  # validate_config names it
    if isinstance(value, int) and not isinstance(value, bool) and kind.startswith("float"):
        return float(value)
    if isinstance(value, list) and isinstance(default, tuple):
        return tuple(value)
    return value


# ----------------------------------------------------------------------------------------------
# From an experiment to configs

@dataclass
class Filters:
    """What the command line keeps of an experiment (None: all) and the settings it overrides."""
    models: list | None = None
    scenarios: list | None = None
    methods: list | None = None
    seeds: list | None = None  # replaces every part's seeds
    settings: dict = field(default_factory=dict)  # over everything the file says
    runs: list | None = None  # run names (exp_name, else the method's name)


def folder_label(folder: str, dataset: str = DEFAULT_DATASET) -> str:
    """The results folder of an experiment on a dataset: its folder, plus ``-<dataset>`` for
    another dataset than CIFAR-10, so that tables and figures never mix two datasets."""
    return folder if dataset == DEFAULT_DATASET else f"{folder}-{dataset}"


def _run_label(settings: dict) -> str:
    """What a run's files are named after: its exp_name, else its method's name."""
    return settings.get("exp_name") or settings.get("method", SETTINGS["method"].default)


def run_names(exp: Experiment) -> set[str]:
    """The names that ``--runs`` picks from: each run's exp_name, else its method's name."""
    return {_run_label({**exp.settings, **part.settings, **run}) for part in exp.parts for run in part.runs}


def plan_experiment(exp: Experiment, out: str | Path, filters: Filters | None = None) -> list[tuple[str, list]]:
    """The experiment's runs, as ``(suite, configs)`` per part in the file's order; within a part,
    seed x model x scenario x run. Raises :class:`ExperimentError` for a run whose settings are
    invalid, naming where in the file it comes from."""
    f = filters or Filters()
    dataset = {**exp.settings, **f.settings}.get("dataset", DEFAULT_DATASET)
    label = folder_label(exp.folder, dataset)
    log_dir = str(Path(out) / label)
    parts = []
    for i, part in enumerate(exp.parts):
        runs = [(f"parts[{i}].runs[{j}]", {"quiet": True, **exp.settings, **part.settings, **run, **f.settings})
                for j, run in enumerate(part.runs)]
        runs = [(at, s) for at, s in runs if not f.methods or s.get("method", SETTINGS["method"].default) in f.methods]
        runs = [(at, s) for at, s in runs if not f.runs or _run_label(s) in f.runs]
        keep = lambda values, only: [v for v in values if only is None or v in only]
        configs = [_config(exp.path, at, model, scenario, seed, log_dir, f"{part.suite}-{label}", settings)
                   for seed in (f.seeds or part.seeds) for model in keep(part.models, f.models)
                   for scenario in keep(part.scenarios, f.scenarios) for at, settings in runs]
        parts.append((part.suite, configs))
    return parts


def _config(path: Path, at: str, model: str, scenario: str, seed: int, log_dir: str, tag: str,
            settings: dict) -> TwoStageConfig:
    """One run's config, checked; an invalid setting names where in the file it comes from."""
    try:
        cfg = TwoStageConfig(model, scenario, seed=seed, log_dir=log_dir, tag=tag, **settings)
        validate_config(cfg)
    except ValueError as e:
        raise ExperimentError(f"{path}: {at}: {e}") from None
    return cfg


# ----------------------------------------------------------------------------------------------
# The plan: how many runs, how many finished, how long the rest will take here

ESTIMATE_STEPS = 3  # timed training steps per model setting: seconds of the user's time


def estimate_work(work: list[dict], datasets: dict, steps: int = ESTIMATE_STEPS) -> dict:
    """Time ``steps`` training steps of each model setting of the unfinished runs (:func:`estimate.time_model`)
    and set each one's ``seconds``; return the timings by model setting."""
    timings = {}
    for w in work:
        cfg, data = w["cfg"], datasets.get((w["cfg"].data_root, w["cfg"].dataset))
        if w["finished"] or data is None:
            continue
        key = (cfg.model_name, cfg.batch_size, cfg.eval_batch_size, cfg.device, cfg.precision, cfg.channels_last,
               cfg.threads, data.num_classes)
        if key not in timings:
            timings[key] = time_model(cfg, data.num_classes, data.train_x.shape[1:3], steps)
        w["seconds"] = run_seconds(cfg, w["sizes"], timings[key], w["trains_stage1"], w["resume_from"])
    return timings


def stage1_count(n: int) -> str:
    return f"{n} stage 1" + ("" if n == 1 else "s")


def runs_per_part(parts: list[tuple[str, list]]) -> str:
    """``compare 4, ablation 1``: the runs of each part name, in the file's order, parts that
    share a name counted together and parts the filters left empty left out."""
    counts = {}
    for name, cfgs in parts:
        counts[name] = counts.get(name, 0) + len(cfgs)
    return ", ".join(f"{name} {n}" for name, n in counts.items() if n) or "none"


def format_plan(work: list[dict], parts: list[tuple[str, list]], timings: dict | None = None) -> str:
    """The plan in a few lines: runs per part, epochs, finished and to run, stage-1 trainings, and
    the estimated time of what is left when it was timed."""
    todo = [w for w in work if not w["finished"]]
    epochs = sorted({f"{w['cfg'].stage1_epochs} + {w['cfg'].stage2_epochs}" for w in work})
    lines = [f"plan: {len(work)} runs ({runs_per_part(parts)}), "
             f"{' or '.join(epochs)} epochs each",
             f"  {len(work) - len(todo)} finished before (skipped), {len(todo)} to run, training "
             f"{stage1_count(sum(w['trains_stage1'] for w in todo))} (the others share one)"]
    if resumed := [w for w in todo if w["resume_from"]]:
        goes_on = "goes on from its checkpoint" if len(resumed) == 1 else "go on from their checkpoints"
        lines.append(f"  {len(resumed)} of them {goes_on}: "
                     f"{', '.join(launch.epoch_reached(w['cfg'], w['resume_from']) for w in resumed)}")
    elsewhere = sorted({w["read_elsewhere"] for w in work if w["read_elsewhere"]})
    if elsewhere:
        lines.append(f"  {sum(bool(w['read_elsewhere']) for w in work)} of the finished runs read their data from "
                     f"{', '.join(elsewhere)}, not this data root: reused all the same (data_root is not part of a "
                     f"run's identity); another --out trains them on this data")
    missing = sorted({str(w["cfg"].data_root or "the default data folder") for w in todo if w["sizes"] is None})
    if missing:
        lines.append(f"  no data yet in {', '.join(missing)}: no time estimate")
    elif todo and timings:
        seconds = sum(w["seconds"] for w in todo)
        per_model = ", ".join(f"{k[0]} {t['step_s']:.2f} s" for k, t in timings.items())
        lines.append(f"  estimated time here, one run after another: {format_duration(seconds)} "
                     f"(from {ESTIMATE_STEPS} timed steps per model: {per_model} per step of "
                     f"{'/'.join(sorted({str(k[1]) for k in timings}))} images"
                     f"{'; a SAM step counts as two' if any(w['cfg'].sam_rho > 0 for w in todo) else ''})")
    if advice := plan_precision_advice(todo):
        lines.append(f"  {advice}")
    return "\n".join(lines)


def plan_precision_advice(todo: list[dict]) -> str | None:
    """:func:`train_eval.precision_advice` for the first unfinished run it applies to."""
    for w in todo:
        cfg = w["cfg"]
        if cfg.device in ("auto", "cpu") and (advice := precision_advice(resolve_device(cfg.device), cfg.precision)):
            return advice
    return None


# ----------------------------------------------------------------------------------------------
# Command line

DESCRIPTION = """\
Run an experiment: every run an experiment file describes, resumable.

  python run_all_models.py                                  the default, experiments/grid.yaml
  python run_all_models.py experiments/literature.yaml --dry-run
  python run_all_models.py experiments/compare_reduced.yaml --seeds 0 --methods ce drw
  python run_all_models.py experiments/tuning.yaml --launcher local --jobs 2

A finished run is skipped and a killed one resumes from its last epoch: run the same command again.
Results go to OUT/<the experiment's folder>/; then:
  python summary_tuning.py --results OUT/<folder>    (tables)
  python plots.py --results OUT/<folder>             (figures)
"""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
                       allow_abbrev=False)
    p.add_argument("experiment", nargs="?", help=f"an experiment file (default: experiments/{DEFAULT_EXPERIMENT.name}); "
                                                 f"the experiments: {', '.join(experiment_names())}")
    p.add_argument("--profile", metavar="NAME", help="shorthand for experiments/NAME.yaml")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan and exit 0, writing nothing and downloading nothing")
    p.add_argument("--no-estimate", action="store_true",
                   help=f"skip the time estimate ({ESTIMATE_STEPS} timed training steps per model before the first run)")
    p.add_argument("--models", nargs="+", choices=tuple(MODELS), metavar="MODEL",
                   help=f"keep only these models, of {', '.join(MODELS)}")
    p.add_argument("--scenarios", nargs="+", choices=IMBALANCE_TYPES, help="keep only these scenarios")
    p.add_argument("--methods", nargs="+", choices=tuple(METHODS), metavar="METHOD",
                   help=f"keep only the runs of these methods, of {', '.join(METHODS)}")
    p.add_argument("--runs", nargs="+", metavar="NAME",
                   help="keep only the runs of these names (a run's exp_name, else its method), e.g. "
                        "--runs drw_sam mislas")
    p.add_argument("--seeds", nargs="+", type=int, help="run these seeds instead of the experiment's")
    p.add_argument("--set", nargs="+", metavar="KEY=VALUE", default=[],
                   help="override a setting of every run, e.g. --set stage2_lr=0.03 n_max=500 "
                        "(python main.py --help lists the settings)")
    p.add_argument("--dataset", choices=tuple(DATASETS), default=DEFAULT_DATASET,
                   help="dataset; runs of another than cifar10 go to OUT/FOLDER-DATASET/ (default: %(default)s)")
    p.add_argument("--data-root", help="dataset folder (default: $CIFAR10_ROOT, else data/cifar10; for cifar100 "
                                       "$CIFAR100_ROOT, else data/cifar100)")
    p.add_argument("--download", action="store_true", default=None,  # unset: data/<dataset> downloads, nothing else
                   help="download the dataset into --data-root if it is not there (data/cifar10 needs no flag)")
    p.add_argument("--out", default="results", help="results folder; runs go to OUT/FOLDER/ (default: results)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=("bf16", "fp32"), help="override the precision (default: bf16)")
    p.add_argument("--threads", type=int, help="CPU threads per run (local launcher default: cores / --jobs)")
    p.add_argument("--compile", nargs="?", const="default", metavar="MODE",
                   help="torch.compile the training forward (MODE: default, reduce-overhead, ...)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--accept-code-change", action="store_true",
                   help="keep (skip, resume, share) results made by other code: only after "
                        "tools/neutrality_check.py shows the change numerically neutral")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write each run's curves for TensorBoard to OUT/FOLDER/tensorboard/ (optional package)")
    _add_launcher_options(p.add_argument_group("launchers (jobs' files go to OUT/FOLDER/jobs/)"))
    return p


def _add_launcher_options(g) -> None:
    g.add_argument("--launcher", choices=("inline", "local", "slurm"), default="inline",
                   help="inline: one run after another in this process (default); local: --jobs subprocesses "
                        "at once, one GPU each; slurm: one SLURM job per run (job arrays)")
    g.add_argument("--status", action="store_true",
                   help="print how many runs of the plan are done, running, failed and missing, and exit")
    g.add_argument("--jobs", type=int, help="local: jobs at once (default: one per visible GPU, else 1; more jobs "
                                            "than GPUs share them, under NVIDIA MPS where it is installed); "
                                            "slurm: tasks of each job array running at once")
    g.add_argument("--budget-min", type=float, metavar="MIN",
                   help="local: after MIN minutes start no run and interrupt the running ones, which keep their "
                        "last finished epoch: the same command again goes on")
    g.add_argument("--retries", type=int, help="local, slurm --wait: resubmissions of a job that ended without "
                                               "reporting its runs: killed, out of memory, node failure (default 1)")
    g.add_argument("--timeout-min", type=int, help=f"local, slurm: minutes per job (slurm default "
                                                   f"{launch.SLURM_TIMEOUT_MIN}; a timed-out job is requeued and resumes)")
    g.add_argument("--partition", help="slurm: partition")
    g.add_argument("--gpus-per-job", type=int, help="slurm: GPUs per job (default 1; 0 for a CPU partition)")
    g.add_argument("--mem-gb", type=float, help="slurm: memory per job, GB")
    g.add_argument("--slurm-extra", nargs="+", metavar="KEY=VALUE",
                   help="slurm: more sbatch options, e.g. account=proj qos=high cpus-per-task=8 (a bare KEY "
                        "is a flag, e.g. exclusive)")
    g.add_argument("--wait", action="store_true", help="slurm: wait for the jobs, retry, and print the end report")


def _check_launcher_flags(parser: argparse.ArgumentParser, args) -> None:
    """Bad combinations of launcher flags are usage errors (exit 2)."""
    if args.launcher != "slurm":
        for flag, value in (("--partition", args.partition), ("--gpus-per-job", args.gpus_per_job),
                            ("--mem-gb", args.mem_gb), ("--slurm-extra", args.slurm_extra), ("--wait", args.wait or None)):
            if value is not None:
                parser.error(f"{flag} needs --launcher slurm")
    if args.launcher != "local" and args.budget_min is not None:
        parser.error("--budget-min needs --launcher local")
    if args.launcher == "inline":
        for flag, value in (("--jobs", args.jobs), ("--retries", args.retries), ("--timeout-min", args.timeout_min)):
            if value is not None:
                parser.error(f"{flag} needs --launcher local or slurm")
    for flag, value, least in (("--jobs", args.jobs, 1), ("--retries", args.retries, 0),
                               ("--timeout-min", args.timeout_min, 1), ("--gpus-per-job", args.gpus_per_job, 0)):
        if value is not None and value < least:
            parser.error(f"{flag} {value}: must be >= {least}")
    for flag, value in (("--mem-gb", args.mem_gb), ("--budget-min", args.budget_min)):
        if value is not None and not value > 0:
            parser.error(f"{flag} {value}: must be > 0")
    if args.launcher == "slurm" and args.retries is not None and not args.wait:
        parser.error("--retries with slurm needs --wait (without it, rerun the command: it resubmits what is missing)")
    if args.launcher != "inline" and args.device.startswith("cuda:"):
        parser.error(f"--device {args.device}: each job sees only its own GPU, as cuda:0; use --device auto or cuda")
    for item in args.slurm_extra or ():
        if not item.split("=", 1)[0]:
            parser.error(f"--slurm-extra {item!r}: expected KEY=VALUE or KEY")


def parse_set(items: list[str]) -> dict:
    """``--set KEY=VALUE ...`` as settings; a value is read as YAML (``0.03``, ``true``, ``null``)."""
    out = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq:
            raise ExperimentError(f"--set {item!r}: expected KEY=VALUE, e.g. --set stage2_lr=0.03")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        why = unknown_setting(key)
        if why:
            raise ExperimentError(f"--set {key}: {why}")
        out[key] = coerce_setting(key, value)
    return out


def common_settings(args) -> dict:
    """The settings that the command line's flags give every run of the plan."""
    common = {"device": args.device, "data_root": args.data_root, "download": args.download, "dataset": args.dataset}
    for key in ("precision", "threads"):
        if getattr(args, key) is not None:
            common[key] = getattr(args, key)
    if args.compile:
        common.update(compile=True, compile_mode=args.compile)
    if args.accept_code_change:
        common["accept_code_change"] = True
    if args.tensorboard:
        common["tensorboard"] = True
    return {**common, **parse_set(args.set)}


def show_plan(exp: Experiment, parts: list[tuple[str, list]], args) -> list[dict]:
    """Print the plan (:func:`format_plan`), timed unless ``--no-estimate``, ``--launcher slurm`` or
    nothing is left to run; return its work list. A dry run downloads nothing."""
    configs = [c for _, cfgs in parts for c in cfgs]
    datasets = launch.check_plan(configs, fetch=not args.dry_run)
    work = launch.plan_work(launch.order_for_sharing(configs), datasets)  # the launchers' order
    timed = not args.no_estimate and args.launcher != "slurm" and not all(w["finished"] for w in work)
    timings = estimate_work(work, datasets) if timed else None
    print(f"{exp.path}: {exp.about}\n" + format_plan(work, parts, timings), flush=True)
    return work


def run_parts(args, parts: list, work: list[dict], out: Path, jobs: int | None, gpus: tuple) -> dict:
    """Run the plan with the chosen launcher; its report."""
    configs = [c for _, cfgs in parts for c in cfgs]
    if args.launcher == "inline":  # one run after another, in the plan's order
        progress = launch.GridProgress(work, args.quiet)
        report = launch.run_grid(configs, args.quiet, out / "report_inline.json", progress)
        progress.close()
        return report
    extra = dict(item.split("=", 1) if "=" in item else (item, True) for item in args.slurm_extra or ())
    lc = launch.LaunchConfig(args.launcher, jobs=jobs, retries=1 if args.retries is None else args.retries, gpus=gpus,
                             timeout_min=args.timeout_min, partition=args.partition,
                             gpus_per_job=1 if args.gpus_per_job is None else args.gpus_per_job, mem_gb=args.mem_gb,
                             slurm_extra=extra, wait=args.wait, job_name=f"ictta-{out.name}",
                             quiet=args.quiet, budget_min=args.budget_min)
    return launch.launch(configs, lc, out / "jobs", out / f"report_{args.launcher}.json")


LIST_OPTIONS = ("models", "scenarios", "methods", "seeds")  # the plan's axes


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in LIST_OPTIONS:
        if getattr(args, name):
            setattr(args, name, unique(getattr(args, name)))
    _check_launcher_flags(parser, args)
    if args.experiment and args.profile:
        parser.error(f"give an experiment file or --profile, not both ({args.experiment}, --profile {args.profile})")
    if args.launcher != "inline" or args.status:  # jobs may run elsewhere: absolute paths
        args.out = str(Path(args.out).resolve())
        args.data_root = args.data_root and str(Path(args.data_root).resolve())
    gpus = launch.visible_gpus(args.device) if args.launcher == "local" else ()
    jobs = args.jobs or (max(1, len(gpus)) if args.launcher == "local" else None)
    if args.threads is None and args.launcher == "local":
        args.threads = max(1, launch.cpu_count() // jobs)  # the jobs share the cores fairly
    try:
        exp = load_experiment(experiment_path(args.experiment or args.profile or str(DEFAULT_EXPERIMENT)))
        filters = Filters(args.models, args.scenarios, args.methods, args.seeds, common_settings(args), args.runs)
        parts = plan_experiment(exp, args.out, filters)
        out = Path(args.out) / folder_label(exp.folder, filters.settings.get("dataset", DEFAULT_DATASET))
        why_not = unwritable_folder(out)
        if why_not and (not args.status or nearest_existing(out).is_file()):  # --status only reads
            parser.error(f"--out {args.out}: {why_not}; give a folder you can write to")
        if unknown := sorted(set(args.runs or ()) - run_names(exp)):
            parser.error(f"--runs {' '.join(unknown)}: {exp.path} has no run of that name; its runs are "
                         f"{', '.join(sorted(run_names(exp)))}")
        if not any(cfgs for _, cfgs in parts):
            parser.error(f"{exp.path}: no run is left after --models, --scenarios, --methods and --runs")
        if args.status:
            print(launch.format_status(launch.grid_status([c for _, cfgs in parts for c in cfgs], out / "jobs")))
            return 0
        work = show_plan(exp, parts, args)
        if args.dry_run:
            return 0
        report = run_parts(args, parts, work, out, jobs, gpus)
    except ValueError as e:
        parser.error(str(e))
    print(launch.format_report(report))
    if args.launcher == "slurm" and not args.wait:
        print(f"follow them with: python run_all_models.py {shlex.join(sys.argv[1:] if argv is None else argv)} --status")
        return 0
    print(f"results in {out}; next: python summary_tuning.py --results {out} && python plots.py --results {out}")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    one_line_warnings()
    sys.exit(main())
