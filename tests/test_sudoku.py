"""Sudoku as data (``loopmdm.data.sudoku``): grids, solver, generator, splits, puzzle files in the field's formats,
symmetries, the tokenizer / encoding, and the ``sudoku`` data format; plus the metric's grid scoring."""

import csv
import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import two_solution_pair
from loopmdm.config import DataConfig, SudokuDataConfig
from loopmdm.data import TextTokenizer, prepare_data, train_bpe
from loopmdm.data.sudoku import augment as A
from loopmdm.data.sudoku import dataset as D
from loopmdm.data.sudoku import files as F
from loopmdm.data.sudoku import grid as S
from loopmdm.data.sudoku import splits as SP
from loopmdm.errors import ConfigError, DataError, LoopMDMError
from loopmdm.eval.sudoku import score_grids

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
ESCARGOT = S.SudokuPair(S.normalize_grid(HARD["ai_escargot"][0]), SOLVED)


@pytest.fixture(scope="module")
def puzzles():
    return S.generate_puzzles(40, (28, 36), seed=0)


def grid_of(ids) -> str:
    return D.decode_grid(ids)


def givens_puzzle(board_ids, frozen_row) -> str:
    """The puzzle made of a board's frozen cells (blanks elsewhere)."""
    return "".join(str(int(v)) if f else "0" for v, f in zip(board_ids, frozen_row))


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
    assert S.random_solution(3) != S.random_solution(4)


def test_solutions_are_diverse(puzzles):
    solutions = [p.solution for p in puzzles]
    assert len(set(solutions)) == len(solutions)
    assert len({s[:9] for s in solutions}) == len(solutions)  # not one pattern relabelled


# --- splits ----------------------------------------------------------------
def test_splits_are_disjoint_by_solution_and_deterministic():
    sp = SP.make_splits(30, 10, 15, (30, 36), seed=3)
    assert isinstance(sp, SP.Splits)
    assert (len(sp.train), len(sp.val), len(sp.test)) == (30, 10, 15)
    sols = {name: {p.solution for p in getattr(sp, name)} for name in ("train", "val", "test")}
    assert [len(s) for s in sols.values()] == [30, 10, 15]  # no repeat inside a split
    assert (
        not sols["train"] & sols["val"]
        and not sols["train"] & sols["test"]
        and not sols["val"] & sols["test"]
    )
    for p in sp.train + sp.val + sp.test:
        assert 30 <= p.n_givens <= 36 and S.count_solutions(p.puzzle) == 1
    assert SP.make_splits(30, 10, 15, (30, 36), seed=3) == sp
    assert SP.make_splits(30, 10, 15, (30, 36), seed=4).test != sp.test
    # drawn in the order test, train, val: the test split does not depend on n_train / n_val,
    # the training split not on n_val
    assert SP.make_splits(5, 2, 15, (30, 36), seed=3).test == sp.test
    assert SP.make_splits(30, 1, 15, (30, 36), seed=3).train == sp.train


def test_splits_skip_repeated_solution_grids(monkeypatch, puzzles):
    stream = iter(
        [
            puzzles[0],
            puzzles[1],
            puzzles[0],
            puzzles[2],
            puzzles[1],
            puzzles[3],
            puzzles[3],
            puzzles[4],
            puzzles[2],
            puzzles[5],
        ]
    )
    monkeypatch.setattr(SP, "generate_puzzle", lambda givens, rng: next(stream))
    sp = SP.make_splits(2, 2, 2, (28, 36), seed=0)
    assert sp.test == [puzzles[0], puzzles[1]]  # test first, then train, then validation
    assert sp.train == [puzzles[2], puzzles[3]] and sp.val == [puzzles[4], puzzles[5]]


# --- bad configuration ----------------------------------------------------
@pytest.mark.parametrize(
    "bad", [16, 0, 81, -3, (20, 17), (10, 30), (30, 90), (30,), "30", 30.5, True, None]
)
def test_bad_givens_raise_config_error(bad, tmp_path):
    for call in (
        lambda: S.check_givens(bad),
        lambda: S.generate_puzzles(1, bad, seed=0),
        lambda: S.generate_puzzle(bad, 0),
        lambda: SP.make_splits(1, 1, 1, bad, seed=0),
        lambda: SP.load_or_generate(tmp_path / "cache", 1, 1, 1, bad, seed=0),
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


@pytest.mark.parametrize(
    "call",
    [
        lambda: SP.make_splits(-1, 1, 1, 30, seed=0),
        lambda: SP.make_splits(1, -1, 1, 30, seed=0),
        lambda: SP.make_splits(1, 1, -1, 30, seed=0),
        lambda: SP.make_splits(1, 1, 1, 30, seed=-1),
        lambda: S.generate_puzzles(1.5, 30, seed=0),
        lambda: S.generate_puzzle(30, "seed"),
        lambda: S.generate_puzzle(30, 0, max_tries=0),
        lambda: S.count_solutions(SOLVED, limit=0),
    ],
)
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


def test_is_valid_solution_and_matches_puzzle():
    assert S.is_valid_solution(SOLVED)
    swapped = SOLVED[1] + SOLVED[0] + SOLVED[2:]
    assert not S.is_valid_solution(swapped)
    assert not S.is_valid_solution("0" + SOLVED[1:])
    assert not S.is_valid_solution("123456789" * 9)  # rows fine, columns not
    assert S.matches_puzzle(HARD["ai_escargot"][0], SOLVED)  # '.' blanks accepted
    assert not S.matches_puzzle("2" + "0" * 80, SOLVED)


def test_normalize_grid():
    assert S.normalize_grid(HARD["ai_escargot"][0]) == HARD["ai_escargot"][0].replace(".", "0")
    assert S.normalize_grid(SOLVED) == SOLVED


@pytest.mark.parametrize("bad", ["1" * 80, "1" * 82, "x" * 81, 123])
def test_malformed_grid_raises_data_error(bad):
    for call in (S.count_solutions, S.solve, S.is_valid_solution, S.normalize_grid):
        with pytest.raises(DataError) as info:
            call(bad)
        assert "\n" not in str(info.value)


# --- tokenizer and encoding ----------------------------------------------
grid_strings = st.text(alphabet="0123456789.", min_size=81, max_size=81)
token_lists = st.lists(st.sampled_from([*range(1, 10), D.MASK_ID]), min_size=81, max_size=81)
TOKENIZER = D.sudoku_tokenizer()


@settings(max_examples=200, deadline=None)
@given(grid_strings)
def test_encode_decode_round_trip(grid):
    ids = D.encode_grids([grid])[0]
    assert ids.shape == (81,) and ids.dtype == np.int32
    assert all(0 <= t < TOKENIZER.vocab_size and t != TOKENIZER.pad_id for t in ids.tolist())
    assert D.decode_grid(ids) == grid.replace(".", "0")
    # the checkpoint's tokenizer agrees with the fast path
    assert TOKENIZER.encode(grid) == ids.tolist()


@settings(max_examples=200, deadline=None)
@given(token_lists)
def test_decode_encode_round_trip(ids):
    assert D.encode_grids([D.decode_grid(ids)])[0].tolist() == ids


def test_tokenizer_ids(tmp_path):
    tok = D.sudoku_tokenizer()
    assert tok.vocab_size == 11 and tok.mask_id == D.MASK_ID == 10 and tok.pad_id == 0
    vocab = tok.tok.get_vocab()
    assert [vocab[str(d)] for d in range(1, 10)] == list(range(1, 10))
    assert len({tok.pad_id, tok.mask_id, *range(1, 10)}) == 11
    ids = D.encode_grids(["5" + "0" * 80])[0]
    assert ids[0] == 5 and set(ids[1:].tolist()) == {tok.mask_id}
    assert D.is_sudoku_tokenizer(tok)
    tok.save(tmp_path / "tokenizer.json")  # saved with every checkpoint
    again = TextTokenizer.load(tmp_path)
    assert D.is_sudoku_tokenizer(again) and again.encode(SOLVED) == tok.encode(SOLVED)
    assert again.decode(again.encode(SOLVED)) == SOLVED


def test_text_tokenizer_is_not_a_sudoku_tokenizer():
    text = train_bpe(["def f(x):\n    return x + 1\n" * 20, "import os\n" * 10], 300)
    assert not D.is_sudoku_tokenizer(text)


def test_decode_maps_non_digit_ids_to_blanks():
    ids = D.encode_grids([SOLVED])[0].tolist()
    assert D.decode_grid(ids) == SOLVED
    assert D.decode_grid([TOKENIZER.pad_id] + ids[1:]) == "0" + SOLVED[1:]
    assert D.decode_grid([99] + ids[1:]) == "0" + SOLVED[1:]
    assert D.decode_grid([D.MASK_ID] + ids[1:]) == "0" + SOLVED[1:]


@pytest.mark.parametrize("bad", ["1" * 80, "1" * 82, "x" * 81, 123])
def test_encode_rejects_malformed_grids(bad):
    with pytest.raises(DataError):
        D.encode_grids([SOLVED, bad])


def test_encode_batch_and_arrays_match_encode(puzzles):
    batch = D.encode_grids([p.puzzle for p in puzzles[:3]])
    assert batch.shape == (3, 81)
    assert batch.tolist() == [D.encode_grids([p.puzzle])[0].tolist() for p in puzzles[:3]]
    assert D.encode_grids([]).shape == (0, 81)
    solutions, frozen = D.pairs_to_arrays(puzzles[:3])
    assert solutions.shape == frozen.shape == (3, 81) and frozen.dtype == bool
    for i, p in enumerate(puzzles[:3]):
        assert D.decode_grid(solutions[i]) == p.solution
        assert frozen[i].tolist() == [c != "0" for c in p.puzzle]
        assert givens_puzzle(solutions[i], frozen[i]) == p.puzzle
    assert (solutions[frozen] == batch[frozen]).all() and (batch[~frozen] == D.MASK_ID).all()


# --- scoring ---------------------------------------------------------------
def test_score_grids_board_and_cell_accuracy():
    pair = ESCARGOT
    blank = pair.puzzle.index("0")
    wrong_digit = "1" if SOLVED[blank] != "1" else "2"
    wrong = SOLVED[:blank] + wrong_digit + SOLVED[blank + 1 :]
    n_blank = pair.puzzle.count("0")
    sc = score_grids([SOLVED, wrong], [pair, pair])
    assert sc["solved"] == 1 and sc["valid"] == 1  # the wrong digit repeats in its row
    assert sc["cell_accuracy"] == pytest.approx((2 * n_blank - 1) / (2 * n_blank))
    copy_input = score_grids([pair.puzzle], [pair])  # givens copied, nothing filled in
    assert copy_input == {"solved": 0, "cell_accuracy": 0.0, "valid": 0}
    # no blank at all
    assert score_grids([SOLVED], [S.SudokuPair(SOLVED, SOLVED)])["cell_accuracy"] == 1.0


def test_score_grids_counts_any_solution_that_keeps_the_givens():
    """A puzzle with two solutions: the model's completion differs from the stored solution in every blank but
    obeys the rules and keeps the givens, so the board is solved (cell accuracy stays against the stored one);
    a valid grid that changes a given is not."""
    puzzle, other = two_solution_pair(SOLVED)
    assert (
        S.count_solutions(puzzle, limit=3) == 2 and other != SOLVED and S.is_valid_solution(other)
    )
    pair = S.SudokuPair(puzzle, SOLVED)
    assert score_grids([other], [pair]) == {"solved": 1, "cell_accuracy": 0.0, "valid": 1}
    # valid, but a 1 or a 2 given is changed
    relabelled = SOLVED.translate(str.maketrans("12", "21"))
    assert S.is_valid_solution(relabelled) and not S.matches_puzzle(ESCARGOT.puzzle, relabelled)
    assert score_grids([relabelled, SOLVED], [ESCARGOT, ESCARGOT])["solved"] == 1


def test_score_grids_rejects_mismatched_or_empty_lists():
    with pytest.raises(ConfigError):
        score_grids([SOLVED], [])
    with pytest.raises(ConfigError):
        score_grids([], [])
    with pytest.raises(ConfigError):
        score_grids([SOLVED, SOLVED], [ESCARGOT])


# --- files -----------------------------------------------------------------
def test_jsonl_round_trip(tmp_path, puzzles):
    path = tmp_path / "sub" / "p.jsonl"
    F.write_jsonl(puzzles, path)
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {"puzzle": puzzles[0].puzzle, "solution": puzzles[0].solution}
    report = F.read_puzzles(str(path))
    assert report.pairs == puzzles and not report.bad and report.summary() == ""
    assert F.read_puzzles(str(path), max_rows=5).pairs == puzzles[:5]


BAD_JSONL = {
    "not json": "wrong length",
    '{"puzzle": "123"}': "wrong length",
    '["a list"]': "wrong length",
    json.dumps({"puzzle": "x" * 81, "solution": SOLVED}): "characters other than digits and blanks",
    json.dumps({"puzzle": "0" * 81, "solution": "1" * 81}): "solution breaks a rule",
    json.dumps({"puzzle": "0" * 81, "solution": "0" + SOLVED[1:]}): "solution breaks a rule",
    json.dumps({"puzzle": "2" + "0" * 80, "solution": SOLVED}): "solution contradicts a given",
}


@pytest.mark.parametrize("line", sorted(BAD_JSONL))
def test_jsonl_bad_lines_are_skipped_and_counted(tmp_path, line):
    good = json.dumps({"puzzle": ESCARGOT.puzzle, "solution": SOLVED})
    path = tmp_path / "mixed.jsonl"
    path.write_text(f"{good}\n{line}\n\n{good}\n")
    report = F.read_puzzles(str(path))
    assert report.pairs == [ESCARGOT, ESCARGOT]
    assert report.bad == Counter({BAD_JSONL[line]: 1})
    assert report.summary() == f"1 bad row skipped (1 {BAD_JSONL[line]})"
    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text(line + "\n")
    with pytest.raises(DataError) as info:
        F.read_puzzles(str(only_bad))
    message = str(info.value)
    assert "\n" not in message and "no valid Sudoku row" in message and "bad.jsonl" in message
    assert BAD_JSONL[line] in message


def test_missing_puzzle_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        F.read_puzzles(str(tmp_path / "nope.jsonl"))


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def test_kaggle_csv_with_zero_blanks_and_bad_rows(tmp_path, puzzles):
    rows = [(p.puzzle, p.solution) for p in puzzles[:5]]
    bad = [
        (puzzles[5].puzzle[:80], puzzles[5].solution),  # wrong length
        (puzzles[6].puzzle, puzzles[6].solution + "1"),  # wrong length
        (puzzles[7].puzzle.replace("0", "x", 1), puzzles[7].solution),  # bad character
        (puzzles[8].puzzle, "1" * 81),  # breaks a rule
        (puzzles[9].puzzle, puzzles[10].solution),  # contradicts a given (almost surely)
        (puzzles[11].puzzle,),  # missing column
    ]
    assert not S.matches_puzzle(puzzles[9].puzzle, puzzles[10].solution)
    path = write_csv(tmp_path / "sudoku.csv", ["quizzes", "solutions"], rows[:3] + bad + rows[3:])
    report = F.read_puzzles(path)
    assert report.pairs == puzzles[:5]
    assert report.bad == Counter(
        {
            "wrong length": 3,
            "characters other than digits and blanks": 1,
            "solution breaks a rule": 1,
            "solution contradicts a given": 1,
        }
    )
    summary = report.summary()
    assert (
        summary.startswith("6 bad rows skipped (3 wrong length, ")
        and "1 solution contradicts a given" in summary
    )
    assert F.read_puzzles(path, max_rows=4).pairs == puzzles[:4]


def test_puzzle_solution_csv_with_dot_blanks(tmp_path, puzzles):
    rows = [(p.puzzle.replace("0", "."), " " + p.solution + " ") for p in puzzles[:4]]
    path = write_csv(tmp_path / "p.csv", [" Puzzle ", "Solution"], rows)
    report = F.read_puzzles(path)
    assert report.pairs == puzzles[:4] and not report.bad


def test_sudoku_extreme_csv_with_dots_and_extra_columns(tmp_path):
    rows = [
        ("puzzles0_kaggle", HARD[n][0].replace("0", "."), HARD[n][1], i + 3)
        for i, n in enumerate(sorted(HARD))
    ]
    # contradicts a given
    rows.append(("broken", HARD["ai_escargot"][0], HARD["inkala_2012"][1], 1))
    path = write_csv(tmp_path / "train.csv", ["source", "question", "answer", "rating"], rows)
    report = F.read_puzzles(path)
    assert report.pairs == [
        S.SudokuPair(S.normalize_grid(HARD[n][0]), HARD[n][1]) for n in sorted(HARD)
    ]
    assert all("." not in p.puzzle for p in report.pairs)
    assert report.bad == Counter({"solution contradicts a given": 1})


def test_csv_without_known_columns_or_valid_rows(tmp_path, puzzles):
    path = write_csv(
        tmp_path / "odd.csv", ["board", "answer_grid"], [(puzzles[0].puzzle, puzzles[0].solution)]
    )
    with pytest.raises(DataError, match="without a known pair of columns") as info:
        F.read_puzzles(path)
    assert "\n" not in str(info.value)
    empty = write_csv(tmp_path / "empty.csv", ["quizzes", "solutions"], [])
    with pytest.raises(DataError, match="no valid Sudoku row"):
        F.read_puzzles(empty)
    all_bad = write_csv(
        tmp_path / "bad.csv", ["quizzes", "solutions"], [("1" * 81, "1" * 81), ("12", "34")]
    )
    with pytest.raises(DataError) as info:
        F.read_puzzles(all_bad)
    message = str(info.value)
    assert "\n" not in message and "2 bad rows skipped" in message
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"quizzes,solutions\n\xff\xfe\x00\x81" * 10)
    with pytest.raises(DataError, match="UTF-8"):
        F.read_puzzles(str(binary))


def test_hf_source_offline_is_a_clear_data_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing may land in the user's cache
    with pytest.raises(DataError) as info:
        F.read_puzzles("hf:nobody-here/no-such-sudoku-set")
    message = str(info.value)
    assert "\n" not in message and "hf:nobody-here/no-such-sudoku-set" in message
    assert "HF_HUB_OFFLINE" in message or "datasets" in message


def test_hf_source_reads_a_known_column_pair(monkeypatch, puzzles):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    class FakeDataset(list):
        column_names = ["source", "question", "answer", "rating"]

    rows = FakeDataset(
        {"source": "x", "question": p.puzzle.replace("0", "."), "answer": p.solution, "rating": 0}
        for p in puzzles[:3]
    )
    rows.append({"source": "x", "question": "1" * 81, "answer": "1" * 81, "rating": 0})
    seen = []
    monkeypatch.setattr(
        datasets, "load_dataset", lambda name, split: seen.append((name, split)) or rows
    )
    report = F.read_puzzles("hf:someone/sudoku-extreme")
    assert seen == [("someone/sudoku-extreme", "train")]
    assert report.pairs == puzzles[:3] and report.bad == Counter({"solution breaks a rule": 1})


# --- symmetries ------------------------------------------------------------
def test_augmentation_keeps_boards_valid_and_givens_consistent(puzzles):
    pairs = puzzles[:12]
    x, frozen = D.pairs_to_arrays(pairs)
    ax, af = A.augment_boards(x, frozen, np.random.default_rng(0))
    assert ax.shape == x.shape and af.shape == frozen.shape and af.dtype == bool
    changed = 0
    for i, pair in enumerate(pairs):
        board = D.decode_grid(ax[i])
        assert S.is_valid_solution(board)
        puzzle = givens_puzzle(ax[i], af[i])
        assert puzzle.count("0") == pair.puzzle.count("0")  # as many givens as before
        # still unique: the augmented board
        assert S.count_solutions(puzzle) == 1 and S.solve(puzzle) == board
        changed += board != pair.solution
        assert sorted(Counter(board).values()) == [9] * 9
    assert changed == len(pairs)  # 9! * 2 * 6^8 symmetries: every board moves
    assert len({D.decode_grid(r) for r in ax}) == len(pairs)
    # the original is untouched and the same seed gives the same transform
    assert D.decode_grid(x[0]) == pairs[0].solution
    bx, bf = A.augment_boards(x, frozen, np.random.default_rng(0))
    assert (bx == ax).all() and (bf == af).all()
    cx, _ = A.augment_boards(x, frozen, np.random.default_rng(1))
    assert not (cx == ax).all()


def test_geometry_moves_cells_and_digits_only_relabels(puzzles):
    x, frozen = D.pairs_to_arrays(puzzles[:8])
    dx, df = A.augment_boards(x, frozen, np.random.default_rng(2), geometry=False)
    assert df is frozen  # relabelling moves no cell
    for i in range(8):
        mapping = {}
        for a, b in zip(x[i].tolist(), dx[i].tolist()):
            assert mapping.setdefault(a, b) == b  # one permutation of the digits per board
        assert sorted(mapping) == sorted(mapping.values()) == list(range(1, 10))
        assert S.is_valid_solution(D.decode_grid(dx[i]))
    assert A.AUGMENTS["none"] is None and A.AUGMENTS["all"] is A.augment_boards
    ox, of = A.AUGMENTS["digits"](x, frozen, np.random.default_rng(2))
    assert (ox == dx).all() and of is frozen
    gx, gf = A.augment_boards(x, frozen, np.random.default_rng(2))
    assert not (gf == frozen).all()  # with geometry the givens move with their cells
    gx2, none = A.augment_boards(x, None, np.random.default_rng(2))
    assert none is None and (gx2 == gx).all()


def test_relabel_keeps_other_ids_and_cell_permutation_is_a_symmetry():
    rng = np.random.default_rng(0)
    x = D.encode_grids([ESCARGOT.puzzle] * 4)  # blanks are the mask id
    x[:, 0] = 0  # and one pad
    r = A.relabel_digits(x, rng)
    assert (r[x == D.MASK_ID] == D.MASK_ID).all() and (r[:, 0] == 0).all()
    assert ((r >= 1) & (r <= 9)).sum() == ((x >= 1) & (x <= 9)).sum()
    idx = A.cell_permutation(np.random.default_rng(3), 64)
    assert idx.shape == (64, 81)
    assert all(sorted(row) == list(range(81)) for row in idx.tolist())
    # target (0,0), (0,1) from one source row unless transposed
    same_row = idx[:, 0] // 9 == idx[:, 1] // 9
    assert same_row.any() and (~same_row).any()
    board = D.encode_grids([SOLVED])[0]
    for row in idx[:8]:
        assert S.is_valid_solution(D.decode_grid(board[row]))


# --- the sudoku data format ------------------------------------------------
def sudoku_data_cfg(tmp_path, source="generate", **sudoku) -> DataConfig:
    opts = dict(givens=(30, 36), n_train=24, n_val=6, n_test=6, seed=1)
    opts.update(sudoku)
    cfg = DataConfig(
        source=source,
        format="sudoku",
        cache_dir=str(tmp_path / "cache"),
        val_fraction=0.25,
        sudoku=SudokuDataConfig(**opts),
    )
    cfg.validate()
    return cfg


def test_prepare_data_generate_rows_frozen_equal_givens(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPMDM_CACHE", str(tmp_path / "never"))
    cfg = sudoku_data_cfg(tmp_path)
    logs = []
    data = prepare_data(cfg, 11, 81, log=logs.append)
    sp = D.generated_splits(cfg)
    assert data.conditional and D.is_sudoku_tokenizer(data.tokenizer)
    assert data.train.shape == data.train_frozen.shape == (24, 81)
    assert data.val.shape == data.val_frozen.shape == (6, 81)
    for rows, frozen, pairs in (
        (data.train, data.train_frozen, sp.train),
        (data.val, data.val_frozen, sp.val),
    ):
        for i, p in enumerate(pairs):
            assert D.decode_grid(rows[i]) == p.solution
            assert frozen[i].tolist() == [c != "0" for c in p.puzzle]  # frozen mask == the givens
            assert givens_puzzle(rows[i], frozen[i]) == p.puzzle
    sols = [
        {D.decode_grid(r) for r in data.train},
        {D.decode_grid(r) for r in data.val},
        {p.solution for p in sp.test},
    ]
    assert not sols[0] & sols[1] and not sols[0] & sols[2] and not sols[1] & sols[2]
    assert (
        data.stats["train_boards"] == 24
        and 30 <= data.stats["givens_min"] <= data.stats["givens_max"] <= 36
    )
    assert len(list((tmp_path / "cache" / "sudoku").glob("*.jsonl"))) == 3
    assert not (tmp_path / "never").exists()
    assert any("24 train / 6 validation" in s for s in logs)
    # training batches: augmented, still solved boards whose frozen cells are a unique puzzle of them
    batch = data.batch("train", np.arange(8), np.random.default_rng(0))
    assert batch.frozen is not None and batch.x0.dtype.is_floating_point is False
    assert not (batch.x0.numpy() == data.train[:8]).all()
    for row, f in zip(batch.x0.numpy(), batch.frozen.numpy()):
        board = D.decode_grid(row)
        assert S.is_valid_solution(board) and S.solve(givens_puzzle(row, f)) == board
    plain = data.batch("val", np.arange(6))
    assert (plain.x0.numpy() == data.val).all() and (plain.frozen.numpy() == data.val_frozen).all()
    cfg.sudoku.augment = "none"
    assert prepare_data(cfg, 11, 81).augment is None


def test_prepare_data_from_a_puzzle_file(tmp_path, puzzles):
    rows = [(p.puzzle.replace("0", "."), p.solution) for p in puzzles[:20]] + [("1" * 81, "1" * 81)]
    path = write_csv(tmp_path / "boards.csv", ["quizzes", "solutions"], rows)
    cfg = sudoku_data_cfg(tmp_path, source=path)
    logs = []
    data = prepare_data(cfg, 11, 81, log=logs.append)
    assert len(data.train) + len(data.val) == 20 and len(data.val) >= 1 and len(data.train) >= 1
    by_solution = {p.solution: p for p in puzzles[:20]}
    for rows_, frozen in ((data.train, data.train_frozen), (data.val, data.val_frozen)):
        for r, f in zip(rows_, frozen):
            assert givens_puzzle(r, f) == by_solution[D.decode_grid(r)].puzzle
    assert not {D.decode_grid(r) for r in data.train} & {D.decode_grid(r) for r in data.val}
    assert any("1 bad row skipped" in s for s in logs)
    cfg.sudoku.max_rows = 6
    assert len(prepare_data(cfg, 11, 81).train) + len(prepare_data(cfg, 11, 81).val) == 6


def test_prepare_data_needs_a_board_sized_window(tmp_path):
    with pytest.raises(DataError, match="max_seq_len=64"):
        prepare_data(sudoku_data_cfg(tmp_path), 11, 64)


def test_split_by_solution_is_disjoint_and_stable(puzzles):
    pairs = puzzles[:30] + puzzles[:10]  # repeated solutions must land in one split
    train, val = D.split_by_solution(pairs, 0.3)
    assert train and val and len(train) + len(val) == 40
    assert not {p.solution for p in train} & {p.solution for p in val}
    # by hash, not position
    assert D.split_by_solution(list(reversed(pairs)), 0.3)[1] == list(reversed(val))
    tiny_train, tiny_val = D.split_by_solution(puzzles[:2], 0.01)
    assert len(tiny_train) == len(tiny_val) == 1
    with pytest.raises(DataError, match="at least 2"):
        D.split_by_solution(puzzles[:1], 0.3)


# --- cache -----------------------------------------------------------------
def test_load_or_generate_caches(tmp_path, monkeypatch):
    sp = SP.load_or_generate(tmp_path, 6, 3, 4, (30, 36), seed=5)
    assert sp == SP.make_splits(6, 3, 4, (30, 36), seed=5)
    paths = SP.cache_paths(tmp_path, 6, 3, 4, (30, 36), 5)
    assert set(paths) == {"train", "val", "test"} and all(p.is_file() for p in paths.values())
    assert F.read_puzzles(str(paths["test"])).pairs == sp.test

    def no_generation(*args, **kwargs):
        raise AssertionError("cache was not used")

    monkeypatch.setattr(SP, "make_splits", no_generation)
    assert SP.load_or_generate(tmp_path, 6, 3, 4, (30, 36), seed=5) == sp
    monkeypatch.undo()
    lines = paths["train"].read_text().splitlines()
    paths["train"].write_text("\n".join(lines[:2]) + "\n")  # a truncated cache is regenerated
    assert SP.load_or_generate(tmp_path, 6, 3, 4, (30, 36), seed=5) == sp
    assert len(paths["train"].read_text().splitlines()) == 6


def test_load_or_generate_accepts_one_number_of_givens(tmp_path):
    logs = []
    sp = SP.load_or_generate(tmp_path, 3, 1, 2, 32, seed=0, log=logs.append)
    assert sp == SP.make_splits(3, 1, 2, 32, seed=0)
    assert all(p.n_givens == 32 for p in sp.train + sp.val + sp.test)
    assert len(logs) == 1 and "32-32 givens" in logs[0]
