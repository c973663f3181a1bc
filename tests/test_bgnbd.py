"""The BG/NBD baseline recovers the parameters of data simulated from its own process."""

import numpy as np

from cdp_ml.models import bgnbd


def test_fit_recovers_simulated_parameters():
    true = bgnbd.BgNbdParams(r=0.8, alpha=4.0, a=0.9, b=3.0)
    T = np.random.default_rng(1).uniform(20, 80, 20_000)
    x, t_x, T = bgnbd.simulate(true, 20_000, T, seed=2)
    est = bgnbd.fit(x, t_x, T)
    assert abs(est.r - true.r) / true.r < 0.1
    assert abs(est.alpha - true.alpha) / true.alpha < 0.15
    assert abs(est.a - true.a) / true.a < 0.25
    assert abs(est.b - true.b) / true.b < 0.3


def test_no_purchase_probability_is_a_survival_curve():
    params = bgnbd.BgNbdParams(r=0.5, alpha=3.0, a=0.7, b=2.5)
    x = np.array([[0.0], [3.0], [10.0]])
    t_x = np.array([[0.0], [20.0], [2.0]])
    T = np.array([[30.0], [30.0], [30.0]])
    s = bgnbd.prob_no_purchase(params, x, t_x, T, np.arange(0, 9)[None, :])
    assert np.allclose(s[:, 0], 1.0)
    assert np.all(np.diff(s, axis=1) <= 1e-12)
    # a frequent buyer seen recently is the likeliest to buy; a frequent buyer gone quiet is likely gone
    assert s[1, -1] < s[0, -1] and s[1, -1] < s[2, -1]
    alive = bgnbd.p_alive(params, x[:, 0], t_x[:, 0], T[:, 0])
    assert alive[0] == 1.0 and alive[2] < alive[1]


def test_closed_form_gradient_matches_finite_differences():
    from scipy.optimize import approx_fprime

    x, t_x, T = bgnbd.simulate(bgnbd.BgNbdParams(r=0.6, alpha=2.0, a=1.2, b=4.0), 3_000, 52.0, seed=4)
    weights = np.random.default_rng(5).integers(1, 4, len(x)).astype(float)
    for log_params in (np.array([0.1, 1.2, -0.2, 0.9]), np.array([-1.0, 0.0, 0.5, 2.0])):
        value, grad = bgnbd.neg_log_likelihood(log_params, x, t_x, T, weights)
        ll = bgnbd.log_likelihood(bgnbd.BgNbdParams(*np.exp(log_params)), x, t_x, T)
        assert np.isclose(value, -np.dot(weights, ll) / weights.sum())
        numeric = approx_fprime(log_params, lambda p: bgnbd.neg_log_likelihood(p, x, t_x, T, weights)[0], 1e-6)
        np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-6)
