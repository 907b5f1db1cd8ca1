"""Fuzzed team files: over a thousand seeded mutants of the shipped ``team.yaml`` files, each
loaded in a child process with a memory and time limit.

Whatever the mutant, loading it either succeeds or raises ``TeamSpecError``: no other exception,
no hang, no runaway memory. Every rejection starts with the file's path, names the field where
the mutant has one, and is at most a few KB long. The counts per class (accepted / rejected) are
printed for the record; ``ML_ASSETS_FUZZ_SEED`` picks another seed.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

TEAMS = Path(__file__).parents[2] / "ml_assets" / "teams"
SHIPPED = sorted(TEAMS.glob("*/team.yaml"))
SEED = int(os.environ.get("ML_ASSETS_FUZZ_SEED", "20250611"))
PER_CLASS = 80
WORKERS = 2
MEMORY_LIMIT = 2 << 30  # bytes of address space per child
FILE_SECONDS = 10  # a load taking longer counts as a hang
MAX_MESSAGE = 8_192  # "a few KB"
PLACEHOLDER = "__FUZZ_VALUE__"

BACKEND_SETTINGS: dict[str, dict[str, Any]] = {
    "local": {},
    "kubernetes": {"image_uri": "ghcr.io/acme/ml:1", "storage_root": "s3://acme-ml/jobs"},
    "sagemaker": {
        "role_arn": "arn:aws:iam::123456789012:role/ml",
        "image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/ml:1",
        "storage_root": "s3://acme-ml/jobs",
    },
    "vertex": {
        "project": "acme-ml",
        "image_uri": "us-docker.pkg.dev/acme/ml/trainer:1",
        "storage_root": "gs://acme-ml/jobs",
    },
    "databricks": {"host": "https://acme.cloud.databricks.com"},
}


@dataclass
class Mutant:
    kind: str
    data: bytes
    must_reject: bool = False
    expect: tuple[str, ...] = ()  # each must be in the message of a rejection
    path: Path | None = None


# --- building mutants -----------------------------------------------------------------------


def _dump(document: Any) -> str:
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=10_000)


def _walk(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every (path, value) below ``value``, containers included, the root excluded."""
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        yield (*prefix, key), item
        if isinstance(item, (dict, list)) and item:
            yield from _walk(item, (*prefix, key))


def _get(document: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        document = document[part]
    return document


def _set(document: Any, path: tuple[Any, ...], value: Any) -> None:
    _get(document, path[:-1])[path[-1]] = value


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in path)


def _with_snippet(document: Any, path: tuple[Any, ...], snippet: str) -> bytes:
    """``document`` dumped with the raw YAML ``snippet`` (flow style) as the value at ``path``."""
    document = copy.deepcopy(document)
    _set(document, path, PLACEHOLDER)
    text = _dump(document)
    assert text.count(PLACEHOLDER) == 1
    return text.replace(PLACEHOLDER, snippet).encode()


class Generator:
    def __init__(self, seed: int, marker: Path) -> None:
        self.rng = random.Random(seed)
        self.texts = {path.parent.name: path.read_bytes() for path in SHIPPED}
        self.documents = {name: yaml.safe_load(text) for name, text in self.texts.items()}
        self.marker = marker  # a file that exists only if a tag ran code

    # helpers

    def team(self) -> str:
        return self.rng.choice(sorted(self.texts))

    def document(self) -> dict[str, Any]:
        return copy.deepcopy(self.documents[self.team()])

    def value_path(self, document: Any) -> tuple[Any, ...]:
        return self.rng.choice([path for path, _value in _walk(document)])

    def mapping_path(self, document: Any) -> tuple[Any, ...]:
        paths = [(), *(path for path, value in _walk(document) if isinstance(value, dict))]
        return self.rng.choice(paths)

    def with_backend(self, document: dict[str, Any], name: str) -> None:
        """``document`` using backend ``name`` for its first model, with valid settings."""
        document["allowed_backends"] = sorted({"local", name})
        document.setdefault("backends", {})[name] = copy.deepcopy(BACKEND_SETTINGS[name])
        first = next(iter(document["models"].values()))
        first["backend"] = name

    def random_value(self) -> Any:
        values: list[Any] = [42, -1, 3.5, True, None, "text", "", "0", [1, 2], ["a"], [], {}]
        values += [{"k": "v"}, 10**30, {"nested": {"deeper": [1, {"x": None}]}}]
        return self.rng.choice(values)

    # the classes

    def byte_flip(self) -> Mutant:
        data = bytearray(self.texts[self.team()])
        for _ in range(self.rng.randint(1, 4)):
            at = self.rng.randrange(len(data))
            if self.rng.random() < 0.5:
                data[at] ^= 1 << self.rng.randrange(8)
            else:
                data[at] = self.rng.randrange(256)
        return Mutant("byte_flip", bytes(data))

    def non_utf8(self) -> Mutant:
        text = self.texts[self.team()]
        choice = self.rng.randrange(4)
        if choice == 0:
            return Mutant("non_utf8", text.decode().encode("utf-16"), True, ("UTF-8",))
        if choice == 1:
            latin = text.replace(b"description: ", "description: caf\u00e9 ".encode(), 1)
            latin = latin.decode().encode("latin-1", errors="replace")
            return Mutant("non_utf8", latin, True, ("UTF-8",))
        bad = self.rng.choice(
            [b"\xff", b"\xfe", b"\x80", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf"]
        )
        at = self.rng.randrange(len(text) + 1)
        return Mutant("non_utf8", text[:at] + bad + text[at:], True, ("UTF-8", "byte offset"))

    def truncation(self) -> Mutant:
        text = self.texts[self.team()]
        return Mutant("truncation", text[: self.rng.randrange(len(text))])

    def deep_nesting(self) -> Mutant:
        depth = self.rng.choice([60, 200, 1_000, 5_000, 50_000])
        style = self.rng.randrange(3)
        if style == 2:  # block mappings, indented, at the top level
            depth = min(depth, 300)
            lines = [f"{'  ' * level}k{level}:" for level in range(depth)]
            text = self.texts[self.team()] + ("\n".join(lines) + " 1\n").encode()
            return Mutant("deep_nesting", text, True, ("levels deep",))
        snippet = (
            "[" * depth + "1" + "]" * depth if style == 0 else "{a: " * depth + "1" + "}" * depth
        )
        document = self.document()
        if self.rng.random() < 0.3:
            self.with_backend(document, self.rng.choice(sorted(BACKEND_SETTINGS)))
        path = self.value_path(document)
        return Mutant("deep_nesting", _with_snippet(document, path, snippet), True, ("deep",))

    def _bomb(self, levels: int, fanout: int, merge: bool) -> str:
        if merge:
            parts = ["a0: &a0 {x: 1, y: [1, 2, 3]}"]
            parts += [
                f"a{i}: &a{i} {{<<: [{', '.join([f'*a{i - 1}'] * fanout)}], z{i}: 1}}"
                for i in range(1, levels)
            ]
        else:
            parts = [f"a0: &a0 [{', '.join(['x'] * fanout)}]"]
            parts += [
                f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fanout)}]" for i in range(1, levels)
            ]
        return "{" + ", ".join(parts) + "}"

    def alias_bomb(self) -> Mutant:
        levels, fanout = self.rng.randint(3, 12), self.rng.randint(2, 10)
        merge = self.rng.random() < 0.2
        document = self.document()
        where = self.rng.randrange(3)
        if where == 0:  # under backends.*, where settings are walked for {env: NAME}
            backend = self.rng.choice(sorted(BACKEND_SETTINGS))
            self.with_backend(document, backend)
            key = self.rng.choice(["pass_env", "gpu_node_selectors", "bomb", "node_types"])
            document["backends"][backend][key] = PLACEHOLDER
            path: tuple[Any, ...] = ("backends", backend, key)
        elif where == 1:
            first = next(iter(document["models"]))
            document["models"][first]["trainer"]["hyperparameters"]["bomb"] = PLACEHOLDER
            path = ("models", first, "trainer", "hyperparameters", "bomb")
        else:
            path = self.value_path(document)
        huge = fanout ** (levels - 1) > 200_000  # far over the loader's limit whatever the shape
        return Mutant(
            "alias_bomb",
            _with_snippet(document, path, self._bomb(levels, fanout, merge)),
            must_reject=huge,
            expect=("aliases", ", line ") if huge else (),
        )

    def recursive_alias(self) -> Mutant:
        snippet = self.rng.choice(
            ["&r [*r]", "&r {a: *r}", "&r [1, [2, {b: *r}]]", "&r {a: [*r, *r]}", "&r {<<: *r}"]
        )
        document = self.document()
        if self.rng.random() < 0.3:
            self.with_backend(document, self.rng.choice(sorted(BACKEND_SETTINGS)))
        path = self.value_path(document)
        return Mutant(
            "recursive_alias",
            _with_snippet(document, path, snippet),
            True,
            ("recursive", _dotted(path)),
        )

    def duplicate_keys(self) -> Mutant:
        if self.rng.random() < 0.3:  # in a flow mapping
            document = self.document()
            path = self.value_path(document)
            key = self.rng.choice(["a", "max_iter", "namespace", "'k'"])
            snippet = f"{{{key}: 1, b: 2, {key.strip(chr(39))}: 3}}"
            return Mutant(
                "duplicate_keys",
                _with_snippet(document, path, snippet),
                True,
                ("duplicate key", _dotted(path)),
            )
        lines = self.texts[self.team()].decode().splitlines(keepends=True)
        keyed = [i for i, line in enumerate(lines) if _key_of(line) is not None]
        at = self.rng.choice(keyed)
        found = _key_of(lines[at])
        assert found is not None
        indent, key = found
        value = self.rng.choice(["1", "x", "[a, b]", "{k: v}", "null"])
        lines.insert(at, f"{indent}{key}: {value}\n")
        return Mutant("duplicate_keys", "".join(lines).encode(), True, ("duplicate key", key))

    def wrong_types(self) -> Mutant:
        document = self.document()
        path = self.value_path(document)
        _set(document, path, self.random_value())
        # A rejection names the value's own field or one above it (e.g. the model, for a
        # value that breaks a rule between fields): at least the top-level field.
        return Mutant("wrong_types", _dump(document).encode(), expect=(str(path[0]),))

    def bad_tags(self) -> Mutant:
        tagged = [
            ("!!float 'abc'", "cannot be read"),
            ("!!float ''", "cannot be read"),
            ("!!int twelve", "cannot be read"),
            ("!!int ''", "cannot be read"),
            ("!!int 0x", "cannot be read"),
            ("!!int " + "9" * 5000, "cannot be read"),
            ("!!bool maybe", "cannot be read"),
            ("!!timestamp yesterday", "cannot be read"),
            ("!!str [1]", "!!str needs a single value"),
            ("!!map x", "!!map needs a mapping"),
            ("!!seq {a: 1}", "!!seq needs a list"),
            ("{<<: 1}", "<< merges"),
            ("{? [a, b] : 1}", "a key must be a single value"),
            ("2024-13-45", "cannot be read"),
            ("!!binary aGVsbG8=", "not allowed"),
            ("!!set {a, b}", "not allowed"),
            ("!!omap [{a: 1}]", "not allowed"),
            ("!!pairs [[a, 1]]", "not allowed"),
            (f"!!python/object/apply:os.system ['touch {self.marker}']", "not allowed"),
            (f"!!python/object/apply:pathlib.Path.touch [{self.marker}]", "not allowed"),
            ("!!python/name:os.system ''", "not allowed"),
            ("!!python/tuple [1, 2]", "not allowed"),
            ("!custom x", "not allowed"),
            ("!<tag:example.com,2000:thing> y", "not allowed"),
            ("!!null x", ""),
            ("!!str 123", ""),
        ]
        snippet, problem = self.rng.choice(tagged)
        document = self.document()
        path = self.value_path(document)
        return Mutant(
            "bad_tags",
            _with_snippet(document, path, snippet),
            must_reject=bool(problem),
            expect=(problem, ", line ", _dotted(path)) if problem else (),
        )

    def huge_values(self) -> Mutant:
        size = self.rng.choice([100_000, 1_000_000, 1_000_000, 1_100_000])
        char = self.rng.choice(["x", "é", "x y", "日本"])
        value = (char * size)[:size]
        document = self.document()
        choice = self.rng.randrange(4)
        quoted = json.dumps(value, ensure_ascii=False)  # a YAML double-quoted scalar
        if choice == 0:  # as a key, written explicitly (a plain key may not exceed 1024 chars)
            parent = self.mapping_path(document)
            snippet = f"? {quoted}\n: 1\n"
            if parent == ():
                return Mutant("huge_values", (_dump(document) + snippet).encode())
            _get(document, parent)[PLACEHOLDER] = 1
            text = _dump(document)
            line = next(row for row in text.splitlines() if PLACEHOLDER in row)
            indent = line[: len(line) - len(line.lstrip())]
            text = text.replace(line, textwrap.indent(snippet.rstrip("\n"), indent))
            return Mutant("huge_values", text.encode())
        path = self.value_path(document)
        if choice == 1:  # more digits than Python reads as an int
            data = _with_snippet(document, path, "7" * 5_000)
            return Mutant("huge_values", data, True, ("cannot be read", ", line "))
        return Mutant("huge_values", _with_snippet(document, path, quoted))

    def unknown_keys(self) -> Mutant:
        document = self.document()
        key = self.rng.choice(["colour", "namepsace", "hyperparams", "max_iters", "tresholds"])
        value = self.rng.choice(["prod", 7, None, ["a", "b"], {"k": "v"}, [], {}])
        if self.rng.random() < 0.4:  # backend settings, every backend
            backend = self.rng.choice(sorted(BACKEND_SETTINGS))
            self.with_backend(document, backend)
            document["backends"][backend][key] = value
            return Mutant(
                "unknown_keys",
                _dump(document).encode(),
                True,
                (f"backends.{backend}.{key}: unknown setting", "it takes: ", ", line "),
            )
        parent = self.mapping_path(document)
        _get(document, parent)[key] = value
        free = any(part in ("hyperparameters", "params", "thresholds") for part in parent)
        return Mutant(
            "unknown_keys",
            _dump(document).encode(),
            must_reject=not free,
            # a free-form mapping's own rules name it (or the key); others name the key
            expect=(_dotted(parent),) if free else (_dotted((*parent, key)), ", line "),
        )

    def removed_keys(self) -> Mutant:
        document = self.document()
        path = self.value_path(document)
        parent = _get(document, path[:-1])
        del parent[path[-1]]
        return Mutant(
            "removed_keys",
            _dump(document).encode(),
            expect=(_dotted(path[:-1]),) if len(path) > 1 else (),
        )

    def bad_references(self) -> Mutant:
        document = self.document()
        model = next(iter(document["models"].values()))
        bad = self.rng.choice(
            [
                "nosuch_pkg_fuzz.mod:fit",
                "ml_assets.teams.fraud.features:nosuch",
                "ml_assets:nosuch",
                "no colon here",
                "pkg.mod:",
                ":fit",
                "pkg mod:fit",
                "1pkg:fit",
                "../evil:fit",
                "ml_assets.teams.fraud.features:transaction_risk:extra",
                "x" * 5_000 + ":fit",
            ]
        )
        where = self.rng.choice(["features", "dataset", "trainer", "predict", "metrics"])
        if where == "features":
            model["features"]["function"] = bad
            field = "features.function"
        elif where == "dataset":
            model["dataset"] = {"function": bad}
            field = "dataset.function"
        elif where == "trainer":
            model["trainer"]["function"] = bad
            model["trainer"].pop("command", None)
            model["trainer"].pop("image", None)
            field = "trainer.function"
        elif where == "predict":
            model["predict"] = bad
            field = "predict"
        else:
            model.setdefault("evaluation", {})["metrics"] = [bad]
            field = "evaluation.metrics.0"
        name = next(iter(document["models"]))
        return Mutant(
            "bad_references",
            _dump(document).encode(),
            True,
            (f"models.{name}.{field}: ", ", line "),
        )

    def owners(self) -> Mutant:
        document = self.document()
        refused = ["", "team:", "bob", "bob@", "@example.com", "bob@example", "team"]
        refused += ["Bob <bob@example.com>", "mailto:bob@example.com", " bob@example.com"]
        bad = self.rng.choice([*refused, "x" * 100_000])
        good = self.rng.choice(["ml@example.com", "team:risk", "first.last+ml@example.co.uk"])
        at = self.rng.randrange(2)
        document["owners"] = [good, bad] if at else [bad, good]
        return Mutant("owners", _dump(document).encode(), True, (f"owners.{at}: ", ", line "))

    def document_shape(self) -> Mutant:
        text = self.texts[self.team()]
        shapes = [b"", b"# only a comment\n", b"- a\n- b\n", b"just a string\n", b"~\n", b"[]\n"]
        shapes += [text + b"---\n" + text, b"---\n...\n", b"team: x\n...\nmore: 1\n", b"\t- a\n"]
        shapes += [text.replace(b"\n", b"\r\n"), b"\xef\xbb\xbf" + text, text + b"\x00\n"]
        choice = self.rng.choice(shapes)
        accepted = choice in (text.replace(b"\n", b"\r\n"), b"\xef\xbb\xbf" + text)
        return Mutant("document_shape", choice, must_reject=not accepted)


def _key_of(line: str) -> tuple[str, str] | None:
    stripped = line.lstrip(" ")
    if stripped.startswith(("#", "-")) or ":" not in stripped:
        return None
    key = stripped.split(":", 1)[0]
    if not key.replace("_", "").isalnum():
        return None
    return line[: len(line) - len(stripped)], key


CLASSES: tuple[str, ...] = (
    "byte_flip",
    "non_utf8",
    "truncation",
    "deep_nesting",
    "alias_bomb",
    "recursive_alias",
    "duplicate_keys",
    "wrong_types",
    "bad_tags",
    "huge_values",
    "unknown_keys",
    "removed_keys",
    "bad_references",
    "owners",
    "document_shape",
)


def mutants(seed: int, folder: Path, marker: Path) -> list[Mutant]:
    generator = Generator(seed, marker)
    made: list[Mutant] = []
    for kind in CLASSES:
        make: Callable[[], Mutant] = getattr(generator, kind)
        for _ in range(PER_CLASS):
            mutant = make()
            mutant.path = folder / f"{len(made):04d}-{kind}" / "team.yaml"
            mutant.path.parent.mkdir(parents=True)
            mutant.path.write_bytes(mutant.data)
            made.append(mutant)
    return made


# --- loading them in children with limits ----------------------------------------------------

WORKER = """
import json, resource, signal, sys, time
resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
from ml_assets.teams.spec import TeamSpecError, load_team_spec

class Hang(BaseException):
    pass

def alarm(signum, frame):
    raise Hang()

signal.signal(signal.SIGALRM, alarm)
with open(sys.argv[2], "a") as out:
    for path in json.load(open(sys.argv[1])):
        started = time.monotonic()
        signal.alarm({seconds})
        try:
            load_team_spec(path)
            outcome, message = "ok", ""
        except TeamSpecError as exc:
            outcome, message = "TeamSpecError", str(exc)
        except Hang:
            outcome, message = "timeout", ""
        except BaseException as exc:
            outcome, message = type(exc).__name__, str(exc)
        finally:
            signal.alarm(0)
        size = len(message)
        out.write(json.dumps({{"path": path, "outcome": outcome, "size": size,
            "message": message[:20000], "seconds": time.monotonic() - started}}) + "\\n")
        out.flush()
"""


def _run_batch(paths: list[str], work: Path) -> dict[str, dict[str, Any]]:
    """Load ``paths`` in as few children as possible; a child that dies or stops answering
    costs the file it was on (recorded as such), and the rest go to a new child."""
    results: dict[str, dict[str, Any]] = {}
    pending = list(paths)
    code = WORKER.format(memory=MEMORY_LIMIT, seconds=FILE_SECONDS)
    round_ = 0
    while pending:
        round_ += 1
        listing, output = work / f"{round_}.json", work / f"{round_}.out"
        listing.write_text(json.dumps(pending))
        output.touch()
        try:
            child = subprocess.run(
                [sys.executable, "-c", code, str(listing), str(output)],
                capture_output=True,
                text=True,
                timeout=30 + FILE_SECONDS * 3 + len(pending),
            )
            died = f"exit {child.returncode}: {child.stderr[-1000:]}"
        except subprocess.TimeoutExpired:
            died = "the child stopped answering"
        for line in output.read_text().splitlines():
            record = json.loads(line)
            results[record["path"]] = record
        pending = [path for path in pending if path not in results]
        if pending:
            results[pending[0]] = {
                "path": pending[0],
                "outcome": "died",
                "size": len(died),
                "message": died,
                "seconds": 0.0,
            }
            pending = pending[1:]
    return results


# A rejection's first line: "<file>[, line N]: <field>: <problem>", or one of the problems that
# concern the file as a whole or its YAML syntax, which have no field.
_FIELDLESS = re.compile(
    r"(, line \d+)?: (not valid YAML|not UTF-8 text|the file is larger|the team spec must be a "
    r"mapping|cannot read)"
)
_WITH_FIELD = re.compile(r"(, line \d+)?: [^\s:][^:]*: \S")


@pytest.mark.timeout(120)
def test_fuzzed_team_files_fail_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "code-ran"
    made = mutants(SEED, tmp_path / "mutants", marker)
    assert len(made) >= 1_000
    paths = [str(mutant.path) for mutant in made]
    halves = [paths[i::WORKERS] for i in range(WORKERS)]
    for i in range(WORKERS):
        (tmp_path / f"worker{i}").mkdir()
    with ThreadPoolExecutor(WORKERS) as pool:
        batches = pool.map(_run_batch, halves, [tmp_path / f"worker{i}" for i in range(WORKERS)])
        results = {path: record for batch in batches for path, record in batch.items()}

    counts: Counter[tuple[str, str]] = Counter()
    problems: list[str] = []
    for mutant in made:
        record = results[str(mutant.path)]
        outcome, message = record["outcome"], record["message"]
        where = f"{mutant.kind} {mutant.path}"
        counts[mutant.kind, "accepted" if outcome == "ok" else "rejected"] += 1
        if outcome not in ("ok", "TeamSpecError"):
            problems.append(f"{where}: {outcome}: {message[:300]}")
            continue
        if record["seconds"] > FILE_SECONDS / 2:
            problems.append(f"{where}: took {record['seconds']:.1f} s")
        if outcome == "ok":
            if mutant.must_reject:
                problems.append(f"{where}: accepted")
            continue
        if not message.startswith(str(mutant.path)):
            problems.append(f"{where}: the message does not start with the file: {message[:300]}")
        if record["size"] > MAX_MESSAGE:
            problems.append(f"{where}: a message of {record['size']} characters")
        rest = message.removeprefix(str(mutant.path))
        first = rest.splitlines()[0] if rest else ""
        if not _FIELDLESS.match(first) and not _WITH_FIELD.match(first):
            problems.append(f"{where}: names no field: {message[:300]}")
        for expected in mutant.expect:
            if expected not in rest:
                problems.append(f"{where}: {expected!r} not in: {message[:300]}")
    assert not marker.exists(), "a YAML tag ran code"

    table = ["class              accepted  rejected"]
    for kind in CLASSES:
        table.append(f"{kind:<18} {counts[kind, 'accepted']:>8}  {counts[kind, 'rejected']:>8}")
    table.append(
        f"{'total':<18} {sum(n for (_, o), n in counts.items() if o == 'accepted'):>8}  "
        f"{sum(n for (_, o), n in counts.items() if o == 'rejected'):>8}"
    )
    with capsys.disabled():
        print(f"\nfuzzed team files, seed {SEED}:\n" + "\n".join(table))
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])
