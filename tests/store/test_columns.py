"""One column registry: every column name is spelled once, in ``store.columns``; code elsewhere uses the constants."""

from __future__ import annotations

import ast
import pathlib

from store import columns as C

ROOT = pathlib.Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "store" / "columns.py"
PRODUCTION = ("models", "pipelines", "store", "training", "serving", "jobs", "benchmarks")
# Values, not column names: a task value, the prefix of the source-image score columns, and the keys of a decoded
# batch ("latents" also names the tensors of other messages, such as a rollout's result).
NOT_NAMES = {C.T2I, C.SOURCE_IMAGE_PREFIX, C.LATENTS, C.TEXT_MASK, C.SOURCE_LATENTS, *C.EDIT_TASKS}
# The evaluation table's names are common words ("prompt", "size", "seed" are also fields of the images API): they
# are checked where that table is written and read.
EVALUATION = "training/evaluation/"
# Literals equal to a column name that mean something else, each with what it is.
ELSEWHERE: dict[str, set[str]] = {
    # The column names a foreign dataset may use, tried in order when a source does not name its columns.
    "pipelines/sources.py": {C.CAPTION, C.IMAGE_BYTES, C.KEY, C.URL},
    # The WebDataset JSON metadata the sample corpus writes, as img2dataset does.
    "pipelines/synth/sample_corpus.py": {C.CAPTION, C.KEY},
    # The captioner's JSON answer has a "caption" field.
    "pipelines/annotation.py": {C.CAPTION},
    # The name and drop reason of the check on a source's delivery.
    "pipelines/curation.py": {C.SOURCE, C.SOURCE_ERROR},
    # The funnel report's JSON: a check's stage number.
    "pipelines/funnel.py": {C.STAGE},
    # A fine-tuning folder's source settings: its task.
    "training/finetune.py": {C.TASK},
    # A manifest entry's bucket.
    "store/writer.py": {C.BUCKET},
    # The caption checks' reason for a caption that is only a URL.
    "pipelines/operators/caption.py": {C.URL},
    # The evaluation's results JSON (per-set "psnr" / "ssim", "text" accuracies, "clip_score", the "model" spec) and
    # the comparison table's "model" header and a grid label.
    "training/evaluation/report.py": {
        C.EVAL_PSNR,
        C.EVAL_SSIM,
        C.EVAL_TEXT,
        C.EVAL_CLIP_SCORE,
        C.EVAL_RECONSTRUCTION,
        C.EVAL_MODEL,
    },
    # The text-accuracy section of the evaluation config; the judge's "text" attribute; a stage's seed argument.
    "training/evaluation/config.py": {C.EVAL_TEXT},
    "training/evaluation/judge.py": {C.EVAL_TEXT},
    "training/evaluation/run.py": {C.EVAL_SEED},
}


def _names(prefix: str) -> dict[str, str]:
    """Registered names (value -> constant) whose constants start with ``prefix`` ("" for all)."""
    return {
        value: name
        for name, value in vars(C).items()
        if name.isupper() and name.startswith(prefix) and isinstance(value, str) and value not in NOT_NAMES
    }


def _literals(path: pathlib.Path) -> list[tuple[int, str]]:
    """String constants of a module that are not docstrings, with their lines."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def _production_modules() -> list[pathlib.Path]:
    return sorted(p for folder in PRODUCTION for p in (ROOT / folder).rglob("*.py") if p != REGISTRY)


def test_column_names_live_in_one_registry():
    evaluation = _names("EVAL_")
    table_columns = {value: name for value, name in _names("").items() if value not in evaluation}
    # Not every evaluation name is also a table column ("task" is both).
    table_columns.update({C.TASK: "TASK"})
    found = []
    for path in _production_modules():
        relative = path.relative_to(ROOT).as_posix()
        checked = {**table_columns, **(evaluation if relative.startswith(EVALUATION) else {})}
        allowed = ELSEWHERE.get(relative, set())
        found += [
            f"{relative}:{line}: {value!r} (use store.columns.{checked[value]})"
            for line, value in _literals(path)
            if value in checked and value not in allowed
        ]
    assert not found, "column names spelled outside store/columns.py:\n" + "\n".join(found)


def test_no_module_defines_a_column_name_of_its_own():
    """A constant elsewhere whose value is a registered name is a second registry (imports of the registry's
    constants are fine: they are not assignments)."""
    names = {**_names(""), C.TASK: "TASK"}
    found = []
    for path in _production_modules():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node.value.value in names:
                targets = ", ".join(ast.unparse(target) for target in node.targets)
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {targets} = {node.value.value!r}")
    assert not found, "\n".join(found)


def test_the_check_sees_a_literal(tmp_path):
    """The scan finds a column name written as a string, and ignores docstrings."""
    module = tmp_path / "module.py"
    module.write_text(
        '"""Reads sample_id."""\n\ndef f(batch):\n    """The sample_id."""\n    return batch["sample_id"]\n'
    )
    assert _literals(module) == [(5, C.SAMPLE_ID)]
