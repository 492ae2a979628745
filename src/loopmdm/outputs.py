"""Output folders: the one rule of every command that writes a folder (``--out`` of ``train``, ``import``,
``export``, ``loopify`` and ``experiment *``).

A command never deletes or overwrites anything it did not create. Before any work starts, ``--out`` must be

* a path that does not exist yet, under a folder that is writable (nothing is created here), or
* an empty folder, or
* a folder of the command's own kind, holding only what such a command writes there:

  - ``run`` (``train``): ``config.json`` (a run config), ``metrics.jsonl``, ``checkpoints/`` and the records
    experiments keep beside a run (``experiment_run.json``, ``loopify.json``, ``*scores.json``). A folder that holds checkpoints is accepted only when the run is
    resumed from one of them (``train --resume OUT`` or a checkpoint under ``OUT/checkpoints``): a new run, or
    another run resumed into it, would prune its checkpoints and replace its config;
  - ``experiment``: ``seed_*`` / ``budget_*`` folders, the result files (``results*.json``, ``summary.md``,
    ``ablation.*``, ``attention.json``, ``interim_*`` of ``--interim``) and ``*.png`` plots, so that running the
    same command again reuses or resumes what is there; a folder another experiment wrote (the ``experiment``
    field of its results, or ``budget_*`` folders) is refused;
  - ``new`` (``import``, ``export``, ``loopify``): nothing; they always write a new folder.

Anything else (a corpus, a data folder, a transformers folder, another run) is refused with a one-line
``ConfigError`` (``CheckpointError`` for a folder of checkpoints) naming the folder and the fix.
"""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path
from typing import Optional, Sequence

from .errors import CheckpointError, ConfigError, LoopMDMError

KINDS = ("run", "experiment", "new")
# the last four: written into run folders by experiments
RUN_ENTRIES = (
    "config.json",
    "metrics.jsonl",
    "checkpoints",
    "experiment_run.json",
    "loopify.json",
    "sudoku_scores.json",
    "scores.json",
)
RUN_CONFIG_SECTIONS = frozenset({"model", "diffusion", "data", "train"})
EXPERIMENT_DIRS = ("seed_*", "budget_*")
EXPERIMENT_FILES = (
    "results.json",
    "results_*.json",
    "summary.md",
    "ablation.json",
    "ablation.md",
    "attention.json",
    "interim_results.json",
    "interim_summary.md",
    "*.png",
)
WHAT = {"run": "a run folder", "experiment": "an experiment folder", "new": "a new folder"}


def check_output(
    out: str | Path,
    kind: str,
    flag: str = "--out",
    resume: Optional[str | Path] = None,
    dirs: Sequence[str] = (),
    experiment: Optional[str] = None,
) -> Path:
    """Apply the rule (module docstring) to ``out`` for a command of ``kind`` (``run``, ``experiment``, ``new``);
    ``resume``: the run or checkpoint a ``train`` continues from; ``dirs``: more folder names an experiment
    writes (the reasoning study's task folders); ``experiment``: the experiment's name, so that a folder of
    another experiment is refused. Returns ``out`` as a Path; creates nothing."""
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    out = Path(out).expanduser()
    shown = f"{flag} {str(out)!r}"
    if not out.exists() and not out.is_symlink():
        _check_creatable(out, shown)
        return out
    if not out.is_dir():
        raise ConfigError(
            f"{shown} is an existing file, not a folder; choose a new folder for {flag}"
        )
    try:
        entries = sorted(out.iterdir())
    except OSError as e:
        raise ConfigError(
            f"{shown} cannot be read ({e.strerror or e}); choose a folder you can write"
        ) from None
    if not entries:
        _check_writable(out, shown)
        return out
    if kind == "run":
        _check_run_folder(out, entries, shown, resume)
    elif kind == "experiment":
        foreign = [p for p in entries if not _is_experiment_entry(p, dirs)]
        if foreign:
            raise ConfigError(
                f"{shown} is not empty and not an experiment folder (it holds {_names(foreign)}); "
                f"an experiment writes only into a new or empty folder or its own earlier output: "
                f"choose another {flag}"
            )
        other = _experiment_of(entries)
        if experiment is not None and other not in (None, experiment):
            raise ConfigError(
                f"{shown} holds the output of 'loopmdm experiment {other}'; 'experiment {experiment}' "
                f"would overwrite its results and summary: choose another {flag}"
            )
    else:
        raise ConfigError(
            f"{shown} exists and is not empty (it holds {_names(entries)}); this command writes a "
            f"new folder and never overwrites one: choose a new or empty folder for {flag}"
        )
    _check_writable(out, shown)
    return out


def check_new_folder(out: str | Path, flag: str = "--out") -> Path:
    """``check_output(out, "new")``: ``import``, ``export`` and ``loopify`` write only a new or empty folder."""
    return check_output(out, "new", flag)


def check_run_folder(
    out: str | Path, resume: Optional[str | Path] = None, flag: str = "--out"
) -> Path:
    """``check_output(out, "run")``: what ``train`` may write into (see the module docstring)."""
    return check_output(out, "run", flag, resume=resume)


# --------------------------------------------------------------------------- the kinds


def _check_run_folder(
    out: Path, entries: list[Path], shown: str, resume: Optional[str | Path]
) -> None:
    from .checkpoint import (  # the checkpoint package imports torch
        list_checkpoints,
        resolve_checkpoint,
    )

    latest = out / "checkpoints" / "latest"
    if latest.is_dir():  # every save would fail on it, after the steps it trained
        raise CheckpointError(
            f"{latest} is a folder, not the file naming the newest checkpoint; move it away (the "
            "step_N folders stay as they are) and run again"
        )
    kept = list_checkpoints(out / "checkpoints")
    if kept:
        if resume is None:
            raise CheckpointError(
                f"run folder {str(out)!r} already holds checkpoints (newest {kept[-1].name}); "
                f"continue it with --resume {out}, or choose a new --out folder"
            )
        source = resolve_checkpoint(resume)
        if _same(source.parent, out / "checkpoints"):
            newer = _newer_good_checkpoints(out / "checkpoints", kept, source)
            if (
                newer
            ):  # its steps would replace theirs: metrics cut, a newer checkpoint left beside them
                raise CheckpointError(
                    f"resuming {out} from {source.name} would discard its newer checkpoints "
                    f"({', '.join(newer)}) and their metrics; resume from the newest (--resume {out}), "
                    f"or branch from {source.name} into a new folder (--out NEW_FOLDER)"
                )
            return  # the run continues in its own folder (any entries there are its own)
        raise CheckpointError(
            f"{shown} holds checkpoints of another run (newest {kept[-1].name}) than --resume "
            f"{str(resume)!r}; resuming into it would prune them: resume into the run's own "
            f"folder (--out {source.parent.parent}) or choose a new --out folder"
        )
    foreign = [p for p in entries if not _is_run_entry(p)]
    if foreign:
        raise ConfigError(
            f"{shown} is not empty and not a run folder (it holds {_names(foreign)}); training "
            "writes only into a new or empty folder or its own run folder: choose another --out "
            "(a data folder is passed with --data)"
        )


def _newer_good_checkpoints(root: Path, kept: list[Path], source: Path) -> list[str]:
    """Checkpoints after ``source`` up to the one ``latest`` names that pass verification. A complete folder
    newer than ``latest`` (a kill between its rename and the move of ``latest``) and a damaged newer one are
    not the run's history: resuming past them is the documented way on."""
    from .checkpoint import (  # the checkpoint package imports torch
        read_latest,
        step_of,
        verify_checkpoint,
    )

    latest = read_latest(root)
    if latest is None or step_of(source) is None:
        return []
    names = []
    for p in kept:
        if step_of(source) < step_of(p) <= step_of(Path(latest)):
            try:
                verify_checkpoint(p)
            except LoopMDMError:
                continue
            names.append(p.name)
    return names


def _is_run_entry(p: Path) -> bool:
    if p.name not in RUN_ENTRIES:
        return False
    if p.name == "checkpoints":
        return p.is_dir()
    if not p.is_file():
        return False
    # a run's config, not any config.json (a transformers folder has one too)
    if p.name == "config.json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            return False
        return isinstance(data, dict) and bool(data) and set(data) <= RUN_CONFIG_SECTIONS
    return True


def _is_experiment_entry(p: Path, dirs: Sequence[str] = ()) -> bool:
    if p.is_dir():
        return any(fnmatch.fnmatchcase(p.name, pat) for pat in (*EXPERIMENT_DIRS, *dirs))
    return p.is_file() and any(fnmatch.fnmatchcase(p.name, pat) for pat in EXPERIMENT_FILES)


def _experiment_of(entries: list[Path]) -> Optional[str]:
    """The experiment that wrote a folder: the ``experiment`` field of its JSON results, else ``loop-scaling``
    for ``budget_*`` folders (the only experiment that writes them), else unknown."""
    for p in entries:
        if p.is_file() and p.suffix == ".json":
            try:
                name = json.loads(p.read_text(encoding="utf-8")).get("experiment")
            except (OSError, ValueError, UnicodeDecodeError, RecursionError, AttributeError):
                continue
            if isinstance(name, str):
                return name
    if any(p.is_dir() and p.name.startswith("budget_") for p in entries):
        return "loop-scaling"
    return None


# --------------------------------------------------------------------------- paths


def _check_creatable(out: Path, shown: str) -> None:
    """A path that does not exist: its nearest existing ancestor must be a writable folder."""
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(
            f"{shown} cannot be created: {str(parent)!r} is not a folder; choose a writable folder"
        )
    _check_writable(parent, shown)


def _check_writable(folder: Path, shown: str) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{shown} cannot be written: no permission to write in {str(folder)!r}; choose a "
            "writable folder"
        )


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _names(paths: list[Path], limit: int = 3) -> str:
    names = [p.name + ("/" if p.is_dir() else "") for p in paths[:limit]]
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(names) + more
