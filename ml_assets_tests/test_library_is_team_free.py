"""The library knows no team: no module outside the team folders, the platform's data and the
test helpers names a shipped team, its models, its datasets or its feature code.

The forbidden words are derived from what ships (each team folder and its team.yaml, and the
platform's raw sources), so a new team or source extends the check without editing it. Every
line of a library module is searched, code, strings, docstrings and comments alike, ignoring
case; a word matches when no letter or digit touches it on either side (``raw_digits`` and
``is_fraud`` hit, ``revision`` does not hit ``vision``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import NamedTuple

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ml_assets"
TEAMS = PACKAGE / "teams"
PLATFORM = PACKAGE / "platform_data"
EXCLUDED = (PLATFORM, PACKAGE / "testing")
# Datasets the shipped teams use or that a team could be expected to ship next.
DATASET_WORDS = ("breast_cancer", "card_transactions", "digits", "wine", "diabetes")
# "digits" is also plain English for numerals. Beside another kind of character ("letters,
# digits and '-'", "digits, spaces") or in "hex digits" it describes the characters a name may
# hold, not the dataset, and is not a hit; nothing else is excused.
_CHARACTERS = r"(letters|lower case|upper case|spaces|hyphens|underscores)"
ENGLISH_DIGITS = re.compile(
    rf"{_CHARACTERS},? (and |or )?digits|digits,? (and |or )?{_CHARACTERS}|hex digits",
    re.IGNORECASE,
)
# Standard column names the library itself defines; a team YAML may repeat them.
LIBRARY_COLUMNS = {"label", "row_id", "split"}


def team_folders() -> list[Path]:
    """Every folder under ml_assets/teams/, a team's (with or without its team.yaml yet)."""
    return sorted(p for p in TEAMS.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def _reference_words(reference: str) -> set[str]:
    """``pkg.mod:function`` gives the module and the function: the dotted module, its last
    part when it is the team's own name for it, and the function."""
    module, _, function = reference.partition(":")
    return {module, function} if function else set()


def platform_words() -> set[str]:
    """The platform's raw assets (``raw_<source>``) and the functions that build them."""
    tree = ast.parse((PLATFORM / "sources.py").read_text())
    words: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            words.add(node.name)
            source = re.sub(r"^(load|write)_", "", node.name)
            if source != node.name:
                words.update({source, f"raw_{source}"})
    return words


def team_words(folder: Path) -> set[str]:
    """A team's name, its model names, its dataset assets, the functions and modules it names,
    its label and id columns, and the names of the modules in its folder."""
    words = {folder.name}
    if not (folder / "team.yaml").exists():
        return words
    spec = yaml.safe_load((folder / "team.yaml").read_text())
    words.add(str(spec["team"]))
    for model_name, model in spec["models"].items():
        words.add(model_name)
        dataset = model.get("dataset", {})
        if "asset" in dataset:
            words.update({dataset["asset"], dataset["asset"].rsplit("/", 1)[-1]})
        if "function" in dataset:
            words.update(_reference_words(dataset["function"]))
        features = model.get("features", {})
        if "function" in features:
            words.update(_reference_words(features["function"]))
        for column in (features.get("label"), features.get("id_column")):
            if column and column not in LIBRARY_COLUMNS:
                words.add(column)
        trainer = model.get("trainer", {}).get("function", "")
        if ":" in trainer:
            words.add(trainer.partition(":")[0])
        for reference in [model.get("predict"), *model.get("evaluation", {}).get("metrics", [])]:
            if reference:
                words.update(_reference_words(reference))
    return words


def forbidden_words() -> list[str]:
    words = set(DATASET_WORDS) | platform_words()
    for folder in team_folders():
        words |= team_words(folder)
    return sorted(words, key=lambda w: (-len(w), w))


def library_modules() -> list[Path]:
    skipped = (*EXCLUDED, *team_folders())
    return sorted(
        path
        for path in PACKAGE.rglob("*.py")
        if not any(folder in path.parents for folder in skipped)
    )


class Hit(NamedTuple):
    path: Path
    line: int
    words: tuple[str, ...]
    text: str

    def __str__(self) -> str:
        where = self.path.relative_to(ROOT) if ROOT in self.path.parents else self.path
        return f"{where}:{self.line}: {', '.join(self.words)}: {self.text}"


def find_hits(paths: list[Path], words: list[str]) -> list[Hit]:
    """Every line of ``paths`` holding one of ``words``, with the words it holds."""
    pattern = re.compile(
        r"(?<![A-Za-z0-9])(" + "|".join(re.escape(w) for w in words) + r")(?![A-Za-z0-9])",
        re.IGNORECASE,
    )
    hits = []
    for path in paths:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            words_only = ENGLISH_DIGITS.sub(lambda m: "_" * len(m.group(0)), line)
            found = tuple(sorted({m.group(1).lower() for m in pattern.finditer(words_only)}))
            if found:
                hits.append(Hit(path, number, found, line.strip()))
    return hits


def test_the_forbidden_words_cover_every_shipped_team_and_source() -> None:
    words = set(forbidden_words())
    assert {folder.name for folder in team_folders()} >= {"clinical", "fraud", "vision", "wine"}
    expected = {
        "clinical",
        "fraud",
        "vision",
        "wine",
        "tumor_classifier",
        "fraud_detector",
        "digit_classifier",
        "cultivar_classifier",
        "raw_breast_cancer",
        "raw_card_transactions",
        "raw_digits",
        "platform/raw_card_transactions",
        "measurements",
        "transaction_risk",
        "digit_pixels",
        "chemistry",
        "load_wines",
        "ml_assets.teams.fraud.features",
        "ml_assets.teams.wine.train",
        "is_fraud",
        "transaction_id",
        "cultivar",
        "breast_cancer",
        "card_transactions",
        "digits",
        "diabetes",
    }
    assert expected <= words, sorted(expected - words)


def test_the_scan_sees_the_library_and_skips_team_platform_and_testing_code() -> None:
    modules = {p.relative_to(PACKAGE).as_posix() for p in library_modules()}
    assert {"assets/data.py", "teams/spec.py", "training/torch_mlp.py", "features.py"} <= modules
    assert not any(m.startswith(("platform_data/", "testing/")) for m in modules)
    assert not any(m.startswith(f"teams/{f.name}/") for f in team_folders() for m in modules)


def test_the_word_match_ignores_case_and_longer_words(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "x = 'Raw_Digits'\n# the revision\ny = is_fraud  # FRAUD\n"
        "# letters, digits and '-'; 8 hex digits; digits, spaces\n# the digits dataset\n"
    )
    hits = find_hits([sample], ["is_fraud", "digits", "vision", "fraud"])
    assert [(h.line, h.words) for h in hits] == [
        (1, ("digits",)),
        (3, ("fraud", "is_fraud")),
        (5, ("digits",)),
    ]
    assert str(hits[0]) == f"{sample}:1: digits: x = 'Raw_Digits'"


def test_no_library_module_names_a_shipped_team_or_its_data() -> None:
    hits = [str(hit) for hit in find_hits(library_modules(), forbidden_words())]
    print("\n".join(hits))
    assert hits == [], "library modules name shipped teams or their data:\n" + "\n".join(hits)
