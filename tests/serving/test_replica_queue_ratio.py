"""The replica's slowness scale reads the tail of measured / table first token, as the router does."""

from serving.estimators import TAIL_QUANTILE
from serving.replica.replica_queue import ReplicaQueue


def test_first_token_ratio_is_a_high_quantile_not_the_median() -> None:
    q = ReplicaQueue("r")
    assert q.first_token_ratio() is None
    # 8 of 10 calls run under their table latency; the slowest two (one input shape the profile
    # saw too little of) run 6% over it: the median would say "faster than the table".
    for ms in [90.0] * 8 + [106.0] * 2:
        q.first_token(ms, 100.0)
    assert q.first_token_ratio() == 1.06
    assert q.first_token_ratio(0.5) == 0.9
    assert q.first_token_ratio(TAIL_QUANTILE) == q.first_token_ratio()  # the default is the router's quantile


def test_bad_measurements_are_not_counted() -> None:
    q = ReplicaQueue("r")
    for ms, expected in ((float("nan"), 100.0), (-1.0, 100.0), (50.0, 0.0), (50.0, None), (float("inf"), 10.0)):
        q.first_token(ms, expected)
    assert q.first_token_ratio() is None


def test_upper_quantile_errs_high_and_handles_empty() -> None:
    from serving.estimators import upper_quantile

    assert upper_quantile([], 0.9) is None
    assert upper_quantile([3.0], 0.99) == 3.0
    assert upper_quantile(range(1, 11), 0.9) == 10  # rank 9 of 0..9: the top value, not 9.1
    assert upper_quantile([5.0, 1.0, 3.0], 0.5) == 3.0
