import numpy as np

from nasframe.pareto import (default_reference_point, hypervolume, hypervolume_history, pareto_mask,
                             pareto_ranks)


def test_mask_honours_directions():
    v = np.array([[1, 2], [2, 1], [3, 3], [1.5, 1.5]], dtype=float)
    assert pareto_mask(v, ["min", "min"]).tolist() == [True, True, False, True]
    # maximise the second column: (1, 2) beats (2, 1) and (1.5, 1.5); (3, 3) has the best y
    assert pareto_mask(v, ["min", "max"]).tolist() == [True, False, True, False]


def test_infeasible_and_nan_never_on_front():
    v = np.array([[0, 0], [1, 1], [np.nan, 0.5], [2, 0.5]], dtype=float)
    feasible = np.array([False, True, True, True])
    mask = pareto_mask(v, ["min", "min"], feasible)
    assert mask.tolist() == [False, True, False, True]
    ranks = pareto_ranks(v, ["min", "min"], feasible, violation=np.array([3.0, 0, 0, 0]))
    assert ranks[2] == -1 and ranks[0] > max(ranks[1], ranks[3])


def test_duplicates_are_all_on_front():
    v = np.array([[1, 1], [1, 1], [2, 2]], dtype=float)
    assert pareto_mask(v, ["min", "min"]).tolist() == [True, True, False]


def test_hypervolume_matches_hand_computation():
    v = np.array([[1, 3], [2, 2], [3, 1]], dtype=float)
    ref = np.array([4.0, 4.0])
    # staircase: 3*1 + 2*1 + 1*1 = 6
    assert hypervolume(v, ["min", "min"], ref) == 6.0
    # maximising column 2 is the same problem on negated values
    assert hypervolume(v * [1, -1], ["min", "max"], np.array([4.0, 4.0])) == 6.0
    hist = hypervolume_history(v, ["min", "min"], ref)
    assert hist.tolist() == [3.0, 5.0, 6.0]


def test_default_reference_point_is_beyond_the_worst():
    v = np.array([[1, 10], [3, 20]], dtype=float)
    ref = default_reference_point(v, ["min", "max"])
    assert ref[0] > 3 and ref[1] > -10  # minimisation form: -10 is the worst of the negated max
