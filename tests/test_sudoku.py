"""Tests for the built-in Sudoku task: generator, solver, encoding, scoring and cache."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopmdm.errors import ConfigError, DataError, LoopMDMError
from loopmdm.tasks import sudoku as S

# Known hard puzzles with their unique solutions.
HARD = {
    "ai_escargot": (
        "1....7.9..3..2...8..96..5....53..9...1..8...26....4...3......1..4......7..7...3..",
        "162857493534129678789643521475312986913586742628794135356478219241935867897261354",
    ),
    "inkala_2012": (
        "8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4..",
        "812753649943682175675491283154237896369845721287169534521974368438526917796318452",
    ),
    "seventeen_givens": (
        "000000010400000000020000000000050407008000300001090000300400200050100000000806000",
        "693784512487512936125963874932651487568247391741398625319475268856129743274836159",
    ),
}
SOLVED = HARD["ai_escargot"][1]


@pytest.fixture(scope="module")
def puzzles():
    return S.generate_puzzles(40, (28, 36), seed=0)


# --- generator -------------------------------------------------------------
def test_generated_puzzles_have_one_matching_valid_solution(puzzles):
    for pair in puzzles:
        assert S.count_solutions(pair.puzzle) == 1
        assert S.solve(pair.puzzle) == pair.solution
        assert S.is_valid_solution(pair.solution)
        assert S.matches_puzzle(pair.puzzle, pair.solution)
        assert 28 <= pair.n_givens <= 36


@pytest.mark.parametrize("n_givens", [24, 32, 50, 80])
def test_number_of_givens_matches_request(n_givens):
    for pair in S.generate_puzzles(5, n_givens, seed=n_givens):
        assert pair.n_givens == n_givens
        assert S.count_solutions(pair.puzzle) == 1


def test_givens_range_is_covered(puzzles):
    assert len({p.n_givens for p in puzzles}) > 3


def test_same_seed_same_puzzles_and_other_seed_differs():
    a = S.generate_puzzles(5, (30, 36), seed=7)
    assert a == S.generate_puzzles(5, (30, 36), seed=7)
    assert a != S.generate_puzzles(5, (30, 36), seed=8)
    assert S.random_solution(3) == S.random_solution(3)


def test_solutions_are_diverse(puzzles):
    solutions = [p.solution for p in puzzles]
    assert len(set(solutions)) == len(solutions)
    assert len({s[:9] for s in solutions}) == len(solutions)  # not one pattern relabelled


# --- splits ----------------------------------------------------------------
def test_splits_are_disjoint_by_solution_and_deterministic():
    train, test = S.make_splits(30, 15, (30, 36), seed=3)
    assert len(train) == 30 and len(test) == 15
    train_solutions = {p.solution for p in train}
    test_solutions = {p.solution for p in test}
    assert len(train_solutions) == 30 and len(test_solutions) == 15
    assert not train_solutions & test_solutions
    assert S.make_splits(30, 15, (30, 36), seed=3) == (train, test)
    _, same_test = S.make_splits(5, 15, (30, 36), seed=3)
    assert same_test == test  # test split does not depend on n_train


# --- bad configuration ----------------------------------------------------
@pytest.mark.parametrize("bad", [16, 0, 81, -3, (20, 17), (10, 30), (30, 90), (30,), "30", 30.5, True, None])
def test_bad_givens_raise_config_error(bad, tmp_path):
    for call in (
        lambda: S.check_givens(bad),
        lambda: S.generate_puzzles(1, bad, seed=0),
        lambda: S.make_splits(1, 1, bad, seed=0),
        lambda: S.load_or_generate(tmp_path / "cache", 1, 1, bad, seed=0),
    ):
        with pytest.raises(ConfigError) as info:
            call()
        message = str(info.value)
        assert "givens" in message and "\n" not in message
    assert not (tmp_path / "cache").exists()


def test_out_of_range_message_names_valid_range():
    with pytest.raises(LoopMDMError, match=r"givens=16 .*17\.\.80"):
        S.check_givens(16)


def test_check_givens_accepts_int_and_pair():
    assert S.check_givens(17) == (17, 17)
    assert S.check_givens((30, 36)) == (30, 36)
    assert S.check_givens([80, 80]) == (80, 80)


@pytest.mark.parametrize("call", [
    lambda: S.make_splits(-1, 1, 30, seed=0),
    lambda: S.generate_puzzles(1.5, 30, seed=0),
    lambda: S.generate_puzzle(30, "seed"),
    lambda: S.generate_puzzle(30, 0, max_tries=0),
    lambda: S.count_solutions(SOLVED, limit=0),
])
def test_other_bad_arguments_raise_config_error(call):
    with pytest.raises(ConfigError):
        call()


def test_unreachable_givens_fail_after_bounded_tries():
    with pytest.raises(ConfigError, match="givens=17"):
        S.generate_puzzle(17, 0, max_tries=2)


# --- solver ----------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(HARD))
def test_solver_solves_known_hard_puzzles(name):
    puzzle, solution = HARD[name]
    assert S.solve(puzzle) == solution
    assert S.count_solutions(puzzle) == 1


def test_count_solutions_respects_limit_and_detects_clashes():
    empty = "0" * 81
    assert S.count_solutions(empty) == 2
    assert S.count_solutions(empty, limit=5) == 5
    assert S.is_valid_solution(S.solve(empty))
    assert S.count_solutions(SOLVED) == 1
    clash = "11" + "0" * 79
    assert S.count_solutions(clash) == 0 and S.solve(clash) is None
    # no clash among givens, but cell 0 has no digit left: row holds 1-8, column holds 9
    dead = "012345678" + "900000000" + "0" * 63
    assert S.count_solutions(dead) == 0 and S.solve(dead) is None


def test_is_valid_solution():
    assert S.is_valid_solution(SOLVED)
    swapped = SOLVED[1] + SOLVED[0] + SOLVED[2:]
    assert not S.is_valid_solution(swapped)
    assert not S.is_valid_solution("0" + SOLVED[1:])
    assert not S.is_valid_solution("123456789" * 9)  # rows fine, columns not


@pytest.mark.parametrize("bad", ["1" * 80, "1" * 82, "x" * 81, 123])
def test_malformed_grid_raises_data_error(bad):
    with pytest.raises(DataError):
        S.count_solutions(bad)


# --- encoding ---------------------------------------------------------------
grid_strings = st.text(alphabet="0123456789.", min_size=81, max_size=81)
token_lists = st.lists(st.sampled_from([*S.VOCAB.digit_ids, S.VOCAB.mask_id]), min_size=81, max_size=81)


@settings(max_examples=200, deadline=None)
@given(grid_strings)
def test_encode_decode_round_trip(grid):
    ids = S.encode(grid)
    assert len(ids) == 81
    assert all(0 <= t < S.VOCAB.vocab_size and t != S.VOCAB.pad_id for t in ids)
    assert S.decode(ids) == grid.replace(".", "0")


@settings(max_examples=200, deadline=None)
@given(token_lists)
def test_decode_encode_round_trip(ids):
    assert S.encode(S.decode(ids)) == ids


def test_vocab_ids():
    v = S.VOCAB
    assert len(v.digit_ids) == 9
    assert len({v.pad_id, v.mask_id, *v.digit_ids}) == 11
    assert v.vocab_size == 11
    ids = S.encode("5" + "0" * 80)
    assert ids[0] == v.digit_ids[4] and set(ids[1:]) == {v.mask_id}


def test_custom_vocab_round_trip():
    v = S.SudokuVocab(pad_id=11, digit_ids=tuple(range(2, 11)), mask_id=0)
    assert v.vocab_size == 12
    assert S.decode(S.encode(SOLVED, v), v) == SOLVED
    with pytest.raises(ConfigError):
        S.SudokuVocab(mask_id=1)


def test_decode_rejects_pad_unknown_and_wrong_length():
    ids = S.encode(SOLVED)
    with pytest.raises(DataError):
        S.decode([S.VOCAB.pad_id] + ids[1:])
    with pytest.raises(DataError):
        S.decode([99] + ids[1:])
    with pytest.raises(DataError):
        S.decode(ids[:80])


def test_encode_batch_and_tensors_match_encode(puzzles):
    batch = S.encode_batch([p.puzzle for p in puzzles[:3]])
    assert batch.shape == (3, 81) and batch.dtype == np.int64
    assert batch.tolist() == [S.encode(p.puzzle) for p in puzzles[:3]]
    torch = pytest.importorskip("torch")
    inputs, targets = S.to_tensors(puzzles[:3])
    assert inputs.shape == targets.shape == (3, 81) and inputs.dtype == torch.long
    assert S.decode(targets[0]) == puzzles[0].solution
    blanks = inputs == S.VOCAB.mask_id
    assert (inputs[~blanks] == targets[~blanks]).all()


# --- scoring ---------------------------------------------------------------
def test_board_and_cell_accuracy():
    puzzle, solution = HARD["ai_escargot"]
    puzzle = puzzle.replace(".", "0")
    blank = puzzle.index("0")
    wrong_digit = "1" if solution[blank] != "1" else "2"
    wrong = solution[:blank] + wrong_digit + solution[blank + 1:]
    assert S.board_accuracy([solution, wrong], [solution, solution]) == 0.5
    acc = S.cell_accuracy([solution, wrong], [solution, solution], [puzzle, puzzle])
    n_blank = puzzle.count("0")
    assert acc.all_cells == pytest.approx(161 / 162)
    assert acc.blank_cells == pytest.approx((2 * n_blank - 1) / (2 * n_blank))
    copy_input = S.cell_accuracy([puzzle], [solution], [puzzle])
    assert copy_input.blank_cells == 0.0
    assert copy_input.all_cells == pytest.approx((81 - n_blank) / 81)


def test_accuracy_rejects_mismatched_or_empty_lists():
    with pytest.raises(DataError):
        S.board_accuracy([SOLVED], [])
    with pytest.raises(DataError):
        S.board_accuracy([], [])
    with pytest.raises(DataError):
        S.cell_accuracy([SOLVED], [SOLVED], [])


# --- files and cache -------------------------------------------------------
def test_jsonl_round_trip(tmp_path, puzzles):
    path = tmp_path / "sub" / "p.jsonl"
    S.save_jsonl(puzzles, path)
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {"puzzle": puzzles[0].puzzle, "solution": puzzles[0].solution}
    assert S.load_jsonl(path) == puzzles


@pytest.mark.parametrize("line", [
    "not json",
    '{"puzzle": "123"}',
    json.dumps({"puzzle": "0" * 81, "solution": "1" * 81}),
    json.dumps({"puzzle": "2" + "0" * 80, "solution": SOLVED}),
])
def test_load_jsonl_rejects_bad_lines(tmp_path, line):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(DataError, match="bad.jsonl:1"):
        S.load_jsonl(path)


def test_load_jsonl_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        S.load_jsonl(tmp_path / "nope.jsonl")


def test_load_or_generate_caches(tmp_path, monkeypatch):
    train, test = S.load_or_generate(tmp_path, 6, 4, (30, 36), seed=5)
    assert (train, test) == S.make_splits(6, 4, (30, 36), seed=5)
    train_path, test_path = S.cache_paths(tmp_path, 6, 4, (30, 36), 5)
    assert train_path.is_file() and test_path.is_file()

    def no_generation(*args, **kwargs):
        raise AssertionError("cache was not used")

    monkeypatch.setattr(S, "make_splits", no_generation)
    assert S.load_or_generate(tmp_path, 6, 4, (30, 36), seed=5) == (train, test)
