"""Every shell command in README.md and docs/*.md is marked, and the offline ones run as written.

Each ```bash block is preceded by a marker line:

  <!-- docs-test: run -->           run in order, from a fresh temporary directory, in a plain environment
                                    (XLA_FLAGS removed: one CPU device); `/tmp/` in a command means that
                                    directory, so runs do not collide
  <!-- docs-test: skip REASON -->   not run (needs a pod, the network, ...). Its `ext5`/`t5x` commands
                                    (and `launch/tpu train|eval ... -- FLAGS`) are still parsed: their flags
                                    must exist and their gin files and bindings must parse; `make` targets
                                    must exist.

A file's run blocks go to one driver process (this file run as a script) that calls `ext5.cli.main` for
`ext5`/`t5x` lines, exactly what the console scripts call, and bash for anything else; one process per
file shares the imports between its commands. README's run-layout block is checked against the files its
usage example wrote.
"""
from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHELL_LANGS = ("bash", "sh", "shell", "console")
_MARK = re.compile(r"^<!-- docs-test: (run|skip|layout)\b\s*(.*?)\s*-->$")


def doc_files() -> list[str]:
    return ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


def blocks(rel: str) -> list[dict]:
    """Fenced blocks of a markdown file: {line, lang, mark, reason, text}."""
    lines = open(os.path.join(ROOT, rel), encoding="utf-8").read().split("\n")
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        mark = _MARK.match(lines[i - 1]) if i else None
        out.append({"line": i + 1, "lang": m.group(1), "mark": mark and mark.group(1),
                    "reason": mark and mark.group(2), "text": "\n".join(lines[i + 1:j])})
        i = j + 1
    return out


def commands(text: str) -> list[str]:
    """Shell lines of a block, `\\` continuations joined; blank and comment-only lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [c.strip() for c in joined.split("\n") if c.strip() and not c.strip().startswith("#")]


def shell_blocks(rel: str, mark: str | None = None) -> list[dict]:
    return [b for b in blocks(rel) if b["lang"] in SHELL_LANGS and (mark is None or b["mark"] == mark)]


def test_every_shell_block_is_marked():
    bad = [f"{rel}:{b['line']}" for rel in doc_files() for b in shell_blocks(rel)
           if b["mark"] not in ("run", "skip") or (b["mark"] == "skip" and not b["reason"])]
    assert not bad, ("put `<!-- docs-test: run -->` (offline, runs in minutes) or `<!-- docs-test: skip REASON -->` "
                     f"on the line before each of these ```bash blocks: {', '.join(bad)}")
    assert any(shell_blocks("README.md", "run")), "README.md has no runnable commands?"


def _dry_run(argv: list[str], complete: bool = True) -> None:
    """Parse an ext5 command's flags, and for a `complete` train/eval/infer command its gin files and
    bindings, without running it."""
    import importlib
    from ext5 import cli, config
    cmd, rest = argv[0], argv[1:]
    if cmd in cli.COMMANDS:
        args, bindings = cli.parse_args(argv)
        if complete:
            config.parse(args.gin_file, bindings, args.gin_search_paths)
    else:
        assert cmd in cli.SUBCOMMANDS, f"unknown command {cmd!r}"
        module = importlib.import_module(f"ext5.commands.{cli.SUBCOMMANDS[cmd]}")
        plain, _ = config.rewrite_gin_args(rest)
        _, unknown = module.build_parser().parse_known_args(plain)
        assert not unknown, f"unknown flags {unknown}"


def test_skipped_commands_still_parse():
    checked = 0
    makefile = open(os.path.join(ROOT, "Makefile"), encoding="utf-8").read()
    for rel in doc_files():
        for b in shell_blocks(rel, "skip"):
            for line in commands(b["text"]):
                # Leading VAR=value assignments and `...` ("the rest of your flags") are not flags; a command
                # with `...` may leave required macros to the reader, so only its flags are checked.
                words = shlex.split(line, comments=True)
                argv = [a for a in words if not re.match(r"^[A-Z_]+=", a) and a != "..."]
                complete = "..." not in words
                where = f"{rel}:{b['line']}: {line}"
                try:
                    if argv[:1] in (["ext5"], ["t5x"]):
                        _dry_run(argv[1:], complete)
                    elif argv[:1] == ["launch/tpu"] and argv[1:2] in (["train"], ["eval"]) and "--" in argv:
                        _dry_run([argv[1]] + argv[argv.index("--") + 1:], complete)
                    elif argv[:1] == ["make"]:
                        assert all(re.search(rf"^{t}:", makefile, re.M) for t in argv[1:]), "no such make target"
                    else:
                        continue
                except (Exception, SystemExit) as e:  # noqa: BLE001  (reported with the doc line)
                    raise AssertionError(f"{where}\n  -> {type(e).__name__}: {e}") from None
                checked += 1
    assert checked >= 8, checked


# --------------------------------------------------------------------------------------------- running
def _plain_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def run_doc(rel: str, tmp_path) -> list[dict]:
    """Run a doc file's `run` blocks in one driver process from tmp_path; returns the per-command records."""
    cmds = [c.replace("/tmp/", f"{tmp_path}/") for b in shell_blocks(rel, "run") for c in commands(b["text"])]
    assert cmds, f"{rel} has no runnable commands"
    spec, log = tmp_path / "commands.json", tmp_path / "results.jsonl"
    spec.write_text(json.dumps(cmds))
    p = subprocess.run([sys.executable, os.path.abspath(__file__), str(spec), str(log)], cwd=tmp_path,
                       env=_plain_env(), capture_output=True, text=True, timeout=1500)
    records = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    failed = [r for r in records if r["rc"] != 0]
    assert p.returncode == 0 and not failed and len(records) == len(cmds), (
        f"{rel}: {failed[0]['cmd'] if failed else 'driver'} failed:\n"
        + (failed[0]["out"] if failed else "") + p.stdout[-3000:] + p.stderr[-3000:])
    for r in records:
        print(f"{r['seconds']:6.1f}s  {r['cmd']}")
    return records


def layout_patterns() -> list[str]:
    (b,) = [b for b in blocks("README.md") if b["mark"] == "layout"]
    return [line.split()[0] for line in b["text"].split("\n") if line.startswith("MODEL_DIR/")]


def check_layout(model_dir: str) -> None:
    """Every documented path exists in a real run, and every file the run wrote is documented."""
    documented = []
    for pattern in layout_patterns():
        g = re.sub(r"<\w+>", "*", pattern.replace("MODEL_DIR", model_dir)).rstrip("/")
        hits = glob.glob(g)
        assert hits, f"README's run layout lists {pattern}, but the run wrote no {g}"
        documented += hits
    for path in glob.glob(os.path.join(model_dir, "*")) + glob.glob(os.path.join(model_dir, "*", "*")):
        assert any(path == d or path.startswith(d + os.sep) or d.startswith(path + os.sep) for d in documented), (
            f"the run wrote {os.path.relpath(path, model_dir)}, which README's run layout does not list")


def test_readme_commands_run_and_the_run_layout_is_as_documented(tmp_path):
    records = run_doc("README.md", tmp_path)
    by_cmd = {r["cmd"]: r["out"] for r in records}
    resumed = [out for cmd, out in by_cmd.items() if "TRAIN_STEPS=40" in cmd]
    assert resumed and f"resumed from {tmp_path}/m/checkpoint_20" in resumed[0]
    assert "mesh {'data': 1, 'model': 1}" in resumed[0]  # one CPU device: fit_partitions gave 1
    model_dir = str(tmp_path / "m")
    # `ext5 infer` and `ext5 convert` write beside the run (m_infer, m_hf): MODEL_DIR holds the run's own files.
    check_layout(model_dir)
    assert json.load(open(f"{model_dir}/eval/metrics_step40.json"))["local_nli_score_eval/accuracy"] >= 0
    assert len(glob.glob(f"{model_dir}/eval/events.out.tfevents.*")) >= 2  # training's and `ext5 eval`'s
    assert os.path.exists(tmp_path / "m_hf" / "config.json") and glob.glob(f"{tmp_path}/m_infer/*-40.jsonl")


def test_docs_commands_run(tmp_path):
    for rel in doc_files()[1:]:
        if shell_blocks(rel, "run"):
            (tmp_path / rel).mkdir(parents=True)
            run_doc(rel, tmp_path / rel)


# ------------------------------------------------------------------------------------- driver process
class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self):
        for st in self.streams:
            st.flush()


def _drive(spec: str, log: str) -> int:
    """Run each command in order (`ext5`/`t5x` in this process, others with bash); stop at the first failure."""
    from ext5 import cli
    with open(spec, encoding="utf-8") as f:
        cmds = json.load(f)
    with open(log, "w", encoding="utf-8") as out:
        for cmd in cmds:
            argv = shlex.split(cmd, comments=True)
            t0, buf = time.time(), io.StringIO()
            if argv[0] in ("ext5", "t5x"):
                with contextlib.redirect_stdout(_Tee(sys.stdout, buf)), contextlib.redirect_stderr(_Tee(sys.stderr, buf)):
                    try:
                        rc = cli.main(argv[1:])
                    except SystemExit as e:
                        rc = e.code if isinstance(e.code, int) else 1
                    except BaseException:  # noqa: BLE001  (reported, then the run stops)
                        import traceback
                        traceback.print_exc()
                        rc = 1
            else:
                p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
                rc = p.returncode
                buf.write(p.stdout + p.stderr)
            out.write(json.dumps({"cmd": cmd, "rc": rc, "seconds": time.time() - t0,
                                  "out": buf.getvalue()[-6000:]}) + "\n")
            out.flush()
            if rc:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(_drive(sys.argv[1], sys.argv[2]))
