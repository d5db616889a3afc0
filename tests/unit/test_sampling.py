"""Sample sizes against the numbers published for ResNet-20 (FORMATS.md section 6)."""

import pytest

from diehardlab.sampling import achieved_error, sample_size, t_value


def test_published_resnet20_numbers():
    assert t_value(0.99) == 2.58 and t_value(0.95) == 1.96
    # network-wise: all 268,346 weights x 32 bits x 2 stuck-at values
    assert 268_346 * 32 * 2 == 17_174_144
    assert sample_size(17_174_144, error=0.01, t=2.58) == 16_625
    # layer 0 (432 weights): layer-wise over 432 x 32 x 2, data-unaware per bit over 432 x 2, times 32 bits
    assert sample_size(432 * 32 * 2, 0.01, 2.58) == 10_389
    assert 32 * sample_size(432 * 2, 0.01, 2.58) == 26_272


def test_limits():
    assert sample_size(0) == 0
    assert sample_size(10, error=0.5) <= 10
    assert sample_size(10**12, error=0.01, t=1.96) == pytest.approx(9604, abs=1)  # the infinite-population size
    assert sample_size(1000, p=0.1) < sample_size(1000, p=0.5)


def test_achieved_error_inverts_the_formula():
    n = sample_size(17_174_144, 0.01, 2.58)
    assert achieved_error(17_174_144, n, 2.58) == pytest.approx(0.01, rel=1e-3)
    assert achieved_error(100, 100) == 0.0


@pytest.mark.parametrize("bad", [dict(error=0), dict(error=1.5), dict(p=2)])
def test_bad_arguments(bad):
    with pytest.raises(ValueError):
        sample_size(100, **bad)
