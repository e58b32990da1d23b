"""The README and docs/ stay true: short README, live links, runnable code, real modules.

Conventions the pages follow (docs/*.md):
- every ```python block compiles;
- a ```python block whose first line is `# runs as written` is executed, in an
  empty temporary directory with a fresh namespace, and must not raise: keep
  such blocks to a second or so (a config, a thousand synthetic rows);
- every `python -m MODULE` names a module that exists, so renaming one without
  updating the pages fails here.
"""

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]
RUNS_MARK = "# runs as written"
MAX_README_LINES = 250

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"(?<!!)\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
MODULE = re.compile(r"\bpython3? -m ([A-Za-z_][\w.]*)")


def _rel(path: Path) -> str:
  return str(path.relative_to(REPO))


def _blocks(path: Path, lang: str) -> list[tuple[int, str]]:
  """(line number of the opening fence, code) of every ```lang block."""
  text = path.read_text()
  return [
    (text.count("\n", 0, m.start()) + 1, m.group(2))
    for m in FENCE.finditer(text)
    if m.group(1) == lang
  ]


def _prose(text: str) -> str:
  """The text without its fenced blocks (links and headings live outside them)."""
  return FENCE.sub("", text)


def _slug(heading: str) -> str:
  """GitHub's anchor for a heading: link text kept, markup and punctuation dropped."""
  text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
  text = text.replace("`", "").strip().lower()
  text = re.sub(r"[^\w\- ]", "", text)
  return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
  slugs, seen = set(), {}
  for m in HEADING.finditer(_prose(path.read_text())):
    slug = _slug(m.group(1))
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    slugs.add(slug if n == 0 else f"{slug}-{n}")
  return slugs


def _links() -> list[tuple[Path, str]]:
  out = []
  for page in PAGES:
    for m in LINK.finditer(_prose(page.read_text())):
      target = m.group(1)
      if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
        continue
      out.append((page, target))
  return out


def _modules() -> list[str]:
  names = set()
  for page in PAGES:
    names.update(m.group(1).rstrip(".") for m in MODULE.finditer(page.read_text()))
  return sorted(names)


def _python_blocks() -> list[tuple[Path, int, str]]:
  return [(page, line, code) for page in PAGES for line, code in _blocks(page, "python")]


def _runnable_blocks() -> list[tuple[Path, int, str]]:
  return [
    (page, line, code)
    for page, line, code in _python_blocks()
    if page != README and code.startswith(RUNS_MARK + "\n")
  ]


def test_readme_is_short():
  lines = README.read_text().count("\n")
  assert lines <= MAX_README_LINES, (
    f"README.md has {lines} lines (at most {MAX_README_LINES}): move detail to docs/"
  )


def test_docs_pages_exist():
  names = {p.name for p in DOCS}
  for name in ("training", "data", "quality", "baselines", "scale", "reliability"):
    assert f"{name}.md" in names


def test_readme_first_python_block_is_the_scoring_snippet():
  """tests/test_score.py executes the README's first ```python block as written."""
  first = README.read_text().split("```python\n", 1)[1].split("```", 1)[0]
  assert "Scorer.from_checkpoint" in first and "predict_file" in first


@pytest.mark.parametrize(
  "page,target", _links(), ids=lambda x: _rel(x) if isinstance(x, Path) else x
)
def test_relative_links_point_at_files_that_exist(page, target):
  path, _, anchor = target.partition("#")
  dest = (page.parent / path).resolve() if path else page
  assert dest.exists(), f"{_rel(page)}: link to {target!r}: {dest} does not exist"
  if anchor and dest.suffix == ".md":
    assert anchor in _anchors(dest), (
      f"{_rel(page)}: link to {target!r}: no heading #{anchor} in {_rel(dest)}"
    )


def test_pages_have_links_to_check():
  assert len(_links()) > 10


@pytest.mark.parametrize(
  "page,line,code",
  _python_blocks(),
  ids=[f"{_rel(p)}:{n}" for p, n, _ in _python_blocks()],
)
def test_python_blocks_compile(page, line, code):
  compile(code, f"{_rel(page)}:{line}", "exec")


def test_some_docs_blocks_run():
  assert _runnable_blocks(), f"no docs/*.md ```python block starts with {RUNS_MARK!r}"


@pytest.mark.parametrize(
  "page,line,code",
  _runnable_blocks(),
  ids=[f"{_rel(p)}:{n}" for p, n, _ in _runnable_blocks()],
)
def test_runnable_blocks_run_as_written(page, line, code, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  namespace = {"__name__": "__docs__"}
  exec(compile(code, f"{_rel(page)}:{line}", "exec"), namespace)


@pytest.mark.parametrize("module", _modules())
def test_python_dash_m_modules_exist(module, monkeypatch):
  monkeypatch.syspath_prepend(str(REPO))
  assert importlib.util.find_spec(module) is not None, (
    f"`python -m {module}` is named in README.md or docs/ but is not an importable module"
  )


def test_pages_name_the_entry_points():
  modules = _modules()
  for name in ("train", "gin_jax.score", "benchmarks.quality", "benchmarks.paper"):
    assert name in modules


def _commands(text: str) -> list[str]:
  """Shell commands of a script or a README block: `&&` and lines split, `\\` joined."""
  text = text.replace("\\\n", " ")
  out = []
  for line in text.splitlines():
    line = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
    out += [" ".join(c.split()) for c in line.split("&&") if c.strip()]
  return out


def test_ci_runs_exactly_the_readmes_test_command():
  text = README.read_text()
  at = text.index("Install and run the tests")
  block = next(code for line, code in _blocks(README, "bash") if text.find(code) > at)
  ci = [c for c in _commands((REPO / ".ci" / "run").read_text())
        if not c.startswith(("set ", "cd "))]  # fmt: skip
  assert _commands(block) == ci


# ------------------------------------------------------------- docs/training.md's flag table

FLAG = re.compile(r"--[a-z][a-z-]*(?![\w.-])")  # not --section.field=value


def _flag_table() -> list[tuple[str, str]]:
  """(flag cell, what cell) of each row of docs/training.md's table under `## The flags`."""
  text = (REPO / "docs" / "training.md").read_text()
  section = text.split("\n## The flags\n", 1)[1].split("\n## ", 1)[0]
  rows = []
  for line in section.splitlines():
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
    if len(cells) == 2 and cells[0].startswith("`"):
      rows.append((cells[0].replace("\\|", "|"), cells[1].replace("\\|", "|")))
  return rows


def _train_parser():
  from gin_jax import cli

  return cli.full_parser()


def test_the_flag_table_and_the_parser_name_the_same_flags():
  """Every flag in docs/training.md's table is one `python -m train --help` lists, and back."""
  parser = _train_parser()
  documented = {f for cell, _ in _flag_table() for f in FLAG.findall(cell)}
  options = {s for a in parser._actions for s in a.option_strings if s.startswith("--")}
  help_text = parser.format_help()
  assert documented - {"--help"} <= options, f"not flags of python -m train: {documented - options}"
  assert options - {"--help"} <= documented, f"flags missing from the table: {options - documented}"
  for flag in documented:
    assert flag in help_text
  assert "--section.field=value" in " ".join(help_text.split())  # the table's last row


def test_the_flag_tables_choices_and_defaults_are_the_parsers():
  """`--flag a|b` lists the parser's choices (old aliases may go unlisted); `(default X)`
  is the parser's default, or what its help says the default is."""
  from gin_jax import config as config_lib

  parser = _train_parser()
  actions = {s: a for a in parser._actions for s in a.option_strings}
  checked = 0
  for cell, what in _flag_table():
    for flag, choices in re.findall(r"`(--[a-z-]+) ([a-z_]+(?:\|[a-z_]+)+)`", cell):
      listed, allowed = choices.split("|"), actions[flag].choices
      assert set(listed) <= set(allowed), f"{flag}: {listed} vs the parser's {allowed}"
      unlisted = set(allowed) - set(listed)
      assert unlisted <= set(config_lib.STAGE_PLAN_ALIASES), f"{flag} also takes {unlisted}"
      checked += 1
    flags = FLAG.findall(cell)
    default = re.search(r"\(default:? ([^;,)]+)", what)
    if default and len(flags) == 1:
      action, value = actions[flags[0]], default.group(1).replace("`", "").strip()
      if action.default is not None:
        assert float(value) == action.default, f"{flags[0]}: default {value} vs {action.default}"
      else:
        assert value in " ".join(action.help.split()), f"{flags[0]}: default {value!r}"
      checked += 1
    for name in re.findall(r"`([a-z_0-9]+)`", what) if flags == ["--preset"] else ():
      assert name in config_lib.PRESETS and name in actions["--preset"].help
  assert checked >= 5
