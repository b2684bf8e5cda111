"""The course kit's exercises: the handout is cut from the library by its markers, the
solutions pass every check, the blanks fail every exercise naming it, each catalogued mistake
is caught by its exercise with a message that points at it, and the grader speaks in one line
about a missing folder, a syntax error, an import error or a forbidden import."""
import json
import os
import shutil

import pytest

from course import handout
from course.__main__ import main
from course.catalogue import MISTAKES
from course.check import check_folder
from course.exercises import BY_NAME, EXERCISES, numbered

NUMBERS = {exercise.name: number for number, exercise in numbered()}


def path_of(folder, name):
    return os.path.join(folder, BY_NAME[name].file_name(NUMBERS[name]))


@pytest.fixture(scope="module")
def solutions(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("kit") / "solutions")
    handout.write_handout(folder, solutions=True)
    return folder


@pytest.fixture(scope="module")
def blanks(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("kit") / "handout")
    handout.write_handout(folder)
    return folder


def test_at_least_twelve_exercises_each_with_math_and_a_blank():
    assert len(EXERCISES) >= 12
    for exercise in EXERCISES:
        text = handout.exercise_text(exercise, NUMBERS[exercise.name])
        assert exercise.math.strip() in text
        for _, label in exercise.blanks:
            assert f'raise NotImplementedError("exercise {exercise.name}: {label}")' in text


def test_solutions_pass_every_exercise(solutions, tmp_path, capsys):
    report = tmp_path / "verdicts.json"
    assert main(["check", solutions, "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert f"score: {len(EXERCISES)}/{len(EXERCISES)} exercises pass" in out
    verdicts = json.loads(report.read_text())
    assert verdicts["score"] == verdicts["total"] == len(EXERCISES)


def test_the_blank_handout_fails_every_exercise_naming_it(blanks, capsys):
    assert main(["check", blanks]) == 1
    out = capsys.readouterr().out
    assert f"score: 0/{len(EXERCISES)}" in out
    for exercise in EXERCISES:
        assert f"FAIL  {exercise.name}" in out
        assert f"not written yet: exercise {exercise.name}: {exercise.blanks[0][1]}" in out


@pytest.mark.parametrize("mistake", MISTAKES, ids=[f"{m.exercise}: {m.what}" for m in MISTAKES])
def test_each_catalogued_mistake_is_caught_by_its_exercise(mistake, solutions, tmp_path):
    assert len(MISTAKES) >= 25
    path = tmp_path / os.path.basename(path_of(solutions, mistake.exercise))
    text = open(path_of(solutions, mistake.exercise)).read()
    for find, replace in mistake.edits:
        assert text.count(find) == 1, f"the edit's text is not once in the solution: {find!r}"
        text = text.replace(find, replace)
    path.write_text(text)
    (verdict,) = check_folder(str(tmp_path), [mistake.exercise])
    assert not verdict.passed
    said = " ".join((verdict.case, verdict.message, verdict.hint))
    for words in mistake.expect:
        assert words in said


def test_a_broken_marker_pair_or_a_vanished_region_stops_the_handout(monkeypatch):
    relu = BY_NAME["relu"]
    source = handout.top_level_source

    def without(text):
        return lambda *args, **kwargs: [line for line in source(*args, **kwargs)
                                        if text not in line]
    monkeypatch.setattr(handout, "top_level_source", without("# course: end relu-backward"))
    with pytest.raises(handout.HandoutError, match="relu-backward.*no '# course: end'"):
        handout.exercise_text(relu, 7)
    monkeypatch.setattr(handout, "top_level_source", without("# course: "))
    with pytest.raises(handout.HandoutError, match="no marked region 'relu-backward'"):
        handout.exercise_text(relu, 7)


def test_the_markers_are_comments_the_library_runs_unchanged():
    for number, exercise in numbered():
        solution = handout.exercise_text(exercise, number, solutions=True)
        assert "# course:" not in solution and "NotImplementedError(\"exercise" not in solution


def test_missing_folder_syntax_error_import_error_and_forbidden_use_are_one_line(
        solutions, tmp_path, capsys):
    assert main(["check", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    student = tmp_path / "student"
    shutil.copytree(solutions, student)
    relu = path_of(str(student), "relu")
    text = open(relu).read()
    line = text[:text.index("return grad * positive")].count("\n") + 1
    imports = text[:text.index("from autograd import")].count("\n") + 1
    for broken, expected in (
            (text.replace("return grad * positive", "return grad * positive)"),
             f"07_relu.py, line {line}: syntax error"),
            (text.replace("from autograd import", "import no_such_module\nfrom autograd import"),
             f"07_relu.py, line {imports}: importing it raised ModuleNotFoundError"),
            (text.replace("return grad * positive",
                          "import nn.functional as F\n        return F.relu(grad)"),
             f"07_relu.py, line {line + 1}: uses F.relu, the library's own version")):
        open(relu, "w").write(broken)
        assert main(["check", str(student), "relu"]) == 1
        out = capsys.readouterr().out
        assert expected in out and "Traceback" not in out
    os.remove(relu)
    assert main(["check", str(student), "relu"]) == 1
    assert "07_relu.py: no such file" in capsys.readouterr().out


def test_an_error_raised_by_the_students_code_names_its_line(solutions, tmp_path, capsys):
    shutil.copytree(solutions, tmp_path / "s")
    path = path_of(str(tmp_path / "s"), "linear")
    text = open(path).read().replace("grad_bias = rows.sum(axis=0)", "grad_bias = rows.sum(axs=0)")
    open(path, "w").write(text)
    assert main(["check", str(tmp_path / "s"), "linear"]) == 1
    out = capsys.readouterr().out
    assert "TypeError at" in out and "06_linear.py, line" in out and "Traceback" not in out


def test_handout_refuses_to_overwrite_and_check_refuses_an_unknown_exercise(blanks, capsys):
    assert main(["handout", blanks]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["check", blanks, "softmax"]) == 2
    assert "no exercise 'softmax'" in capsys.readouterr().err


def test_the_readme_lists_every_catalogued_mistake():
    readme = open(os.path.join(os.path.dirname(handout.__file__), "README.md")).read()
    assert f"`course/catalogue.py` lists {len(MISTAKES)}," in readme
    flat = " ".join(readme.split())
    for mistake in MISTAKES:
        assert mistake.what in flat
