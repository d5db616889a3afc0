"""diehard stats: the published sample sizes and interval values, printed at the beam line."""

from __future__ import annotations

import pytest
from diehardlab.analysis.stats import main


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["sample-size", "17174144"], "sample size n = 16,625"),
        (["sample-size", "--weights", "268346"], "sample size n = 16,625"),
        (["sample-size", "27648", "--error", "0.01", "--confidence", "0.99"], "sample size n = 10,389"),
        (["sample-size", "864", "--subpopulations", "32"], "= 26,272"),
        (["poisson", "0"], "[0, 3.68888]"),
        (["poisson", "10"], "[4.79539, 18.3904]"),
        (["poisson", "10", "--fluence", "1e10"], "FIT: 13  [6.23401, 23.9075]"),
        (["poisson", "0", "--one-sided"], "[0, 2.99573]"),
        (["binomial", "17", "250", "--method", "wilson"], "[0.0428859, 0.106189]"),
    ],
)
def test_stats_outputs(capsys, argv, expected):
    assert main(argv) == 0
    assert expected in capsys.readouterr().out


def test_stats_errors_are_clear():
    from diehardlab.errors import ConfigError

    with pytest.raises(ConfigError, match="K <= N"):
        main(["binomial", "5", "3"])
    with pytest.raises(ConfigError, match="--weights"):
        main(["sample-size"])
    with pytest.raises(ConfigError, match="confidence"):
        main(["poisson", "3", "--confidence", "95"])
