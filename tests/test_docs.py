"""The documentation cannot go stale: every command it shows parses, every link resolves.

Checked in README.md and every docs/*.md (the CLI's parser: ``typer.main.get_command`` of the app in
``loopmdm.cli.app``; note that ``loopmdm.cli.app`` as an attribute is the Typer object itself, which the
package re-exports, so the module is imported by name):

* **Commands.** Every command that starts with ``loopmdm``, ``.venv/bin/loopmdm``, ``python -m loopmdm...`` or
  ``torchrun ... -m loopmdm.cli`` (also ``torchrun ... $(which loopmdm)``), in fenced and indented code blocks
  and in inline code spans (``\\`` continuations joined, ``&&`` / ``;`` / ``&`` / ``|`` chains split,
  ``# comments`` dropped), must name an existing subcommand of the CLI's own parser (the click command typer builds from
  ``loopmdm.cli``'s app, with every subcommand registered) and use only options of that subcommand.
  ``a / b`` alternatives (``loopmdm export / import``) are each checked, ``[...]`` marks optional parts,
  ``--a/--b`` names two options. ``--set section.key=value`` must name a field of ``RunConfig`` and ``--preset``
  a preset. In a Markdown table row whose first cell is a command, the row's other ``--flag`` spans are
  checked against that command too. ``python -m loopmdm.X`` of a module other than the CLI must name a runnable
  module; ``torchrun`` must run ``-m loopmdm.cli`` (the CLI; ``loopmdm.train`` is not an entry point).
  ``python benchmarks/X.py --flag`` must name an existing script whose source names each flag. The commands
  of docs/bad_inputs.md carry wrong values and options on purpose: there only subcommands are checked.
  Not checked: ``loopmdm-lm-eval`` (its options belong to lm-eval-harness's own parser, not ours).
* **Links.** Every relative Markdown link and image (``[x](path)``, ``![x](path)``, reference definitions)
  resolves to a file or folder inside the repository; an anchor (``#...``) on a Markdown target must name one
  of its headings (GitHub's slugs). No doc points outside the repository (``../shared``).
* **The README** keeps its Quickstart section, stays within 10 KiB, links every doc, its map of
  ``src/loopmdm`` names every package folder and nothing that is not there, and its "method in code" snippet
  runs and computes exactly the library's training loss.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README] + sorted((ROOT / "docs").glob("*.md"))
README_MAX_BYTES = 10 * 1024
# docs whose commands carry wrong values or options on purpose (an unknown preset, a misspelt --set key, an
# unknown option): their subcommands are checked, their options and values are not
BAD_VALUES_ON_PURPOSE = {"docs/bad_inputs.md"}

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ----------------------------------------------------------------------------------------------- Markdown


def fenced_blocks(text: str):
    """(language, first line number, lines) of every fenced code block."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start, body = m.group(2), m.group(3).lower(), i + 2, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        yield lang, start, body
        i += 1


def blank_fences(text: str) -> str:
    """``text`` with every fenced block's lines (fences included) blanked, line numbers kept."""
    lines = text.split("\n")
    out, fence = [], None
    for line in lines:
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(2)
            out.append("")
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
            out.append("")
        else:
            out.append(line)
    return "\n".join(out)


INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)


def inline_spans(prose: str):
    """(line number, content) of every inline code span of fence-free text (a span may wrap a line)."""
    for m in INLINE_CODE.finditer(prose):
        yield prose.count("\n", 0, m.start()) + 1, " ".join(m.group(2).split())


def blank_inline_code(prose: str) -> str:
    return INLINE_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), prose)


def table_cells(line: str) -> list[str]:
    """The cells of a Markdown table row (``\\|`` inside a cell is not a separator)."""
    body = line.strip().strip("|")
    return [c.strip() for c in re.split(r"(?<!\\)\|", body)]


# ----------------------------------------------------------------------------------------- command lines


def logical_lines(body: list[str], start: int):
    """(line number, line) of a shell block: ``\\`` continuations joined, prompts (``$ ``) dropped."""
    buf, first = "", None
    for k, line in enumerate(body):
        if first is None:
            first = start + k
            line = re.sub(r"^\s*\$ ", "", line)
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        yield first, buf + line
        buf, first = "", None
    if buf:
        yield first, buf


def tokenize(line: str) -> list[str]:
    line = line.replace("$(which loopmdm)", "loopmdm").replace("\\|", "/")
    lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    try:
        return list(lex)
    except ValueError:  # an unbalanced quote in prose: split on blanks
        return line.split()


def segments(tokens: list[str]):
    """The simple commands of a token list split at ``&&``, ``||``, ``;``, ``&``, ``|``."""
    seg: list[str] = []
    for tok in tokens:
        if tok and set(tok) <= set(";&|"):
            if seg:
                yield seg
            seg = []
        else:
            seg.append(tok)
    if seg:
        yield seg


WRAPPERS = {"nohup", "time", "env", "exec", "sudo"}
PYTHON = re.compile(r"^(.*/)?python(3(\.\d+)?)?$")


def strip_prefix(seg: list[str]) -> list[str]:
    """Drop environment assignments (``OMP_NUM_THREADS=1``) and wrappers (``nohup``, ``time``)."""
    i = 0
    while i < len(seg) and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", seg[i]) or seg[i] in WRAPPERS):
        i += 1
    return seg[i:]


def classify(seg: list[str]):
    """("cli", args) for the loopmdm CLI, ("module", name) for ``python -m loopmdm.X`` (X not cli),
    ("torchrun", problem) for a torchrun that runs no loopmdm CLI, ("bench", [script, *args]), or None."""
    seg = strip_prefix(seg)
    if not seg:
        return None
    head = seg[0]
    if head == "loopmdm" or head.endswith("/bin/loopmdm"):
        return "cli", seg[1:]
    if PYTHON.match(head) and len(seg) > 2 and seg[1] == "-m" and seg[2].split(".")[0] == "loopmdm":
        return ("cli", seg[3:]) if seg[2] == "loopmdm.cli" else ("module", seg[2])
    if PYTHON.match(head) and len(seg) > 1 and seg[1].startswith("benchmarks/"):
        return "bench", seg[1:]
    if head == "torchrun":
        for k, tok in enumerate(seg[1:], 1):
            if tok == "loopmdm" or tok.endswith("/bin/loopmdm"):
                return "cli", seg[k + 1 :]
            if tok == "-m" and k + 1 < len(seg):
                if seg[k + 1] == "loopmdm.cli":
                    return "cli", seg[k + 2 :]
                return (
                    "torchrun",
                    f"torchrun runs -m {seg[k + 1]}, which is not the CLI; use -m loopmdm.cli",
                )
        return None  # torchrun with an unnamed script: not ours to check
    return None


def doc_commands(path: Path):
    """(line number, text, kind, payload, extra flags) of every command in a doc. ``extra flags``: the bare
    ``--flag`` spans of a table row whose first cell is the command."""
    text = path.read_text(encoding="utf-8")
    for lang, start, body in fenced_blocks(text):
        if lang not in SHELL_LANGS:
            continue
        for n, line in logical_lines(body, start):
            for seg in segments(tokenize(line)):
                found = classify(seg)
                if found:
                    yield n, line.strip(), found[0], found[1], []
    prose = blank_fences(text)
    lines = prose.split("\n")
    indented = [
        (n, line) for n, line in enumerate(lines, 1) if line.startswith("    ") and line.strip()
    ]
    for n, line in logical_lines([ln for _, ln in indented], 0):
        n = indented[n][0]
        for seg in segments(tokenize(line.strip())):
            found = classify(seg)
            if found:
                yield n, line.strip(), found[0], found[1], []
    row_cmd: dict[int, tuple] = {}  # line number -> the command in the first cell of that table row
    for n, line in enumerate(lines, 1):
        if not line.lstrip().startswith("|"):
            continue
        cells = table_cells(line)
        spans = [s for _, s in inline_spans(cells[0])] if cells else []
        if len(spans) == 1:
            segs = list(segments(tokenize(spans[0])))
            found = classify(segs[0]) if segs else None
            if found and found[0] == "cli":
                flags = [
                    t
                    for c in cells[1:]
                    for _, s in inline_spans(c)
                    if s.startswith("--")
                    for t in s.split()
                ]
                row_cmd[n] = (spans[0], flags)
    for n, span in inline_spans(prose):
        extra = row_cmd.get(n, (None, []))
        for seg in segments(tokenize(span)):
            found = classify(seg)
            if found:
                flags = extra[1] if extra[0] == span else []
                yield n, span, found[0], found[1], flags


# ------------------------------------------------------------------------------------------ CLI parser


@pytest.fixture(scope="module")
def cli():
    import typer.main

    import loopmdm.cli  # noqa: F401  (registers every subcommand)
    from loopmdm.cli.app import app

    return typer.main.get_command(app)


def is_group(cmd) -> bool:
    return hasattr(cmd, "commands")


def options(cmd) -> set[str]:
    out = {"--help"}
    for p in cmd.params:
        if getattr(p, "param_type_name", "") == "option":
            out |= set(p.opts) | set(p.secondary_opts)
    return out


def flag_names(token: str) -> list[str]:
    """``[--config`` -> ``--config``; ``--temperature/--top-k`` -> both; ``--set=x`` -> ``--set``."""
    token = token.strip("[]()`,")
    if not re.match(r"^--?[A-Za-z]", token):
        return []
    return [f.split("=", 1)[0] for f in token.split("/") if re.match(r"^--?[A-Za-z]", f)]


def config_key_problem(item: str) -> str | None:
    """None when ``--set`` ``item`` (``section.key=value``) names a field of RunConfig, else the problem."""
    from loopmdm.config import RunConfig

    key = item.split("=", 1)[0]
    node = RunConfig()
    for part in key.split("."):
        if not dataclasses.is_dataclass(node):
            return None  # a mapping field (source_config): any key
        names = {f.name for f in dataclasses.fields(node)}
        if part not in names:
            return f"--set {key}: {type(node).__name__} has no field {part!r}"
        node = getattr(node, part)
    return None


def check_cli(cli, args: list[str], extra_flags: list[str], check_values: bool = True) -> list[str]:
    """Problems of ``loopmdm ARGS``: unknown subcommand, option not of that subcommand, bad --set / --preset."""
    from loopmdm.config.presets import PRESETS

    cmds, path, i = [cli], ["loopmdm"], 0
    while is_group(cmds[0]) and i < len(args):
        tok = args[i].strip("[]`")
        if tok == "--help":
            return []
        if tok.startswith("-"):
            return [f"{' '.join(path)} takes a subcommand before {tok}"]
        names = [tok]
        while i + 2 < len(args) and args[i + 1] == "/":  # `export / import`: alternatives
            names.append(args[i + 2].strip("[]`"))
            i += 2
        missing = [nm for nm in names if nm not in cmds[0].commands]
        if missing:
            return [
                f"{' '.join(path)} has no subcommand {nm!r} (it has {', '.join(sorted(cmds[0].commands))})"
                for nm in missing
            ]
        cmds, path, i = [cmds[0].commands[nm] for nm in names], path + ["/".join(names)], i + 1
    if is_group(cmds[0]):
        return []  # `loopmdm experiment` alone: a group named in prose
    problems = []
    rest = args[i:]
    for k, tok in enumerate(rest + extra_flags):
        tok = tok.strip("[]")
        for flag in flag_names(tok):
            # on the command itself every alternative must take the flag; in the row's prose, one of them
            have = [flag in options(c) for c in cmds]
            if not (all(have) if k < len(rest) else any(have)) and check_values:
                known = sorted(set().union(*(options(c) for c in cmds)))
                problems.append(
                    f"{' '.join(path)} has no option {flag} (options: {', '.join(known)})"
                )
        value = rest[k + 1].strip("[]") if k + 1 < len(rest) else None
        if not check_values:
            continue
        if tok == "--set" and value and "." in value.split("=", 1)[0]:  # `key=value`: a placeholder
            problem = config_key_problem(value)
            if problem:
                problems.append(problem)
        if (
            tok == "--preset"
            and value
            and re.match(r"^[a-z][\w-]*$", value)
            and value not in PRESETS.names()
        ):
            problems.append(f"--preset {value}: no such preset ({', '.join(PRESETS.names())})")
    return problems


def check_module(name: str) -> list[str]:
    if name == "loopmdm.cli.__main__":
        return []
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        return [f"python -m {name}: no such module"]
    if spec.submodule_search_locations is not None:
        return (
            []
            if importlib.util.find_spec(name + ".__main__")
            else [f"python -m {name}: package has no __main__"]
        )
    source = Path(spec.origin).read_text(encoding="utf-8")
    return [] if "__main__" in source else [f"python -m {name}: module does nothing when run"]


def check_bench(args: list[str]) -> list[str]:
    script = ROOT / args[0]
    if not script.is_file():
        return [f"{args[0]}: no such script"]
    source = script.read_text(encoding="utf-8")
    problems = []
    for tok in args[1:]:
        for flag in flag_names(tok):
            name = flag.lstrip("-")
            if (
                f'"{flag}"' not in source
                and f"'{flag}'" not in source
                and not re.search(rf"\b{re.escape(name.replace('-', '_'))}\s*:", source)
            ):
                problems.append(f"{args[0]} has no option {flag}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_documented_commands_parse(doc, cli):
    problems = []
    for n, text, kind, payload, extra in doc_commands(doc):
        if kind == "cli":
            found = check_cli(
                cli, payload, extra, check_values=rel(doc) not in BAD_VALUES_ON_PURPOSE
            )
        elif kind == "module":
            found = check_module(payload)
        elif kind == "bench":
            found = check_bench(payload)
        else:
            found = [payload]
        problems += [f"{rel(doc)}:{n}: {p}\n    {text}" for p in found]
    assert not problems, "documented commands the CLI would refuse:\n" + "\n".join(problems)


def test_the_checker_finds_commands_everywhere(cli):
    """The extraction sees fenced, chained, continued, table and inline commands (else the test above could
    pass by finding nothing)."""
    found = {kind: [] for kind in ("cli", "module", "torchrun", "bench")}
    for doc in DOCS:
        for _, _text, kind, payload, extra in doc_commands(doc):
            found[kind].append((payload, extra))
    cli_args = [" ".join(a) for a, _ in found["cli"]]
    assert len(cli_args) > 50
    # quickstart, after &&
    assert any(a.startswith("sample --checkpoint runs/tiny") for a in cli_args)
    assert any(a.startswith("task make") for a in cli_args)
    assert any(extra for _, extra in found["cli"])  # flags of a README table row
    assert check_cli(cli, ["train", "--no-such-flag"], []) and check_cli(
        cli, ["no-such-command"], []
    )
    assert check_cli(cli, ["train", "--set", "model.no_such_field=1"], [])
    assert not check_cli(cli, ["experiment", "compute-matched", "/", "loopify", "--out", "D"], [])
    assert classify(tokenize("torchrun --standalone -m loopmdm.train --out D"))[0] == "torchrun"


# ---------------------------------------------------------------------------------------------- links

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HTML_SRC = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.I)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: rendered text, lower case, punctuation dropped, blanks -> ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[`*]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    out, seen = set(), {}
    for line in blank_fences(path.read_text(encoding="utf-8")).split("\n"):
        m = re.match(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            k = seen.get(base, 0)
            seen[base] = k + 1
            out.add(base if k == 0 else f"{base}-{k}")
    out |= set(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", path.read_text(encoding="utf-8")))
    return out


def doc_links(path: Path):
    prose = blank_inline_code(blank_fences(path.read_text(encoding="utf-8")))
    for rx in (LINK, REF_DEF, HTML_SRC):
        for m in rx.finditer(prose):
            yield prose.count("\n", 0, m.start()) + 1, m.group(1)


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_links_resolve_inside_the_repository(doc):
    problems = []
    for n, target in doc_links(doc):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        where, _, anchor = target.partition("#")
        dest = (doc.parent / where).resolve() if where else doc
        if where.startswith("/"):
            problems.append(f"{rel(doc)}:{n}: {target}: an absolute path; link relative to the doc")
            continue
        try:
            dest.relative_to(ROOT)
        except ValueError:
            problems.append(f"{rel(doc)}:{n}: {target} points outside the repository")
            continue
        if not dest.exists():
            problems.append(f"{rel(doc)}:{n}: {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(
                f"{rel(doc)}:{n}: {target}: {rel(dest)} has no heading with anchor #{anchor}"
            )
    assert not problems, "broken links:\n" + "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_no_doc_points_outside_the_repository(doc):
    text = doc.read_text(encoding="utf-8")
    bad = [
        f"{rel(doc)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
        for m in re.finditer(r"\.\./shared\S*|/work/\S+|shared/paper\.md", text)
    ]
    assert not bad, "references to files that are not in the repository:\n" + "\n".join(bad)


# --------------------------------------------------------------------------------------------- README


def section(text: str, heading_rx: str) -> str:
    """The body of the first section whose heading matches ``heading_rx``, up to the next heading of its level
    or above."""
    lines = blank_fences(text).split("\n")
    raw = text.split("\n")
    for i, line in enumerate(lines):
        m = re.match(r"^(#+)\s*(.*)$", line)
        if m and re.match(heading_rx, m.group(2), re.I):
            level, body = len(m.group(1)), []
            for j in range(i + 1, len(lines)):
                h = re.match(r"^(#+)\s", lines[j])
                if h and len(h.group(1)) <= level:
                    break
                body.append(raw[j])
            return "\n".join(body)
    raise AssertionError(f"README has no section matching {heading_rx!r}")


def test_readme_is_short_and_has_a_quickstart():
    text = README.read_text(encoding="utf-8")
    assert re.search(r"^#+ *quick ?start", text, re.I | re.M)
    size = len(text.encode("utf-8"))
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes (budget {README_MAX_BYTES}): measurements go "
        "to docs/benchmarks.md, history to docs/log.md"
    )


def test_readme_links_every_doc():
    linked = {(README.parent / t.partition("#")[0]).resolve() for _, t in doc_links(README)}
    missing = [rel(d) for d in DOCS[1:] if d.resolve() not in linked]
    assert not missing, f"README's documentation list misses {missing}"


def test_readme_map_matches_the_package():
    body = section(README.read_text(encoding="utf-8"), r"where things are")
    pkg = ROOT / "src" / "loopmdm"
    named = set()
    for line in body.split("\n"):
        if line.lstrip().startswith("|"):
            named |= {s for _, s in inline_spans(table_cells(line)[0])}
    folders = {n.rstrip("/") for n in named if n.endswith("/")}
    files = {n for n in named if n.endswith(".py")}
    actual = {p.name for p in pkg.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == actual, (
        f"map names {sorted(folders - actual)} (not there); misses {sorted(actual - folders)}"
    )
    assert all((pkg / f).is_file() for f in files), [f for f in files if not (pkg / f).is_file()]
    top = {p.name for p in pkg.glob("*.py") if p.name != "__init__.py"}
    assert top <= files, f"map misses {sorted(top - files)}"


def test_readme_method_snippet_is_the_library_loss():
    """The ~15 lines of "The method in code" run and give the loss ``MaskedDiffusion`` computes."""
    import torch

    from loopmdm.diffusion import Batch, MaskedDiffusion

    body = section(README.read_text(encoding="utf-8"), r"the method in code")
    blocks = [lines for lang, _, lines in fenced_blocks(body) if lang == "python"]
    assert blocks, "no python block under 'The method in code'"
    ns: dict = {}
    exec(compile("\n".join(blocks[0]), "README.md (the method in code)", "exec"), ns)  # noqa: S102
    with torch.no_grad():
        ref = MaskedDiffusion(ns["schedule"], ns["mask_id"]).loss(
            ns["model"], Batch(ns["x0"]), ns["S"], ns["noise"]
        )
    assert torch.allclose(ns["loss"].detach(), ref.loss, rtol=1e-5, atol=1e-6)
    assert 1 <= ns["S"] <= 4
    assert any(p.grad is not None for p in ns["model"].parameters())
