"""npgrad.optim: update rules against hand-written references (and torch.optim where installed),
state-dict resume, gradient clipping, LR schedules, and the errors for bad hyper-parameters."""

import json
import math

import numpy as np
import pytest

from npgrad import nn, optim


# ---------------------------------------------------------------------------------- helpers
def make_params(seed=0, dtype=np.float64, shapes=((3, 4), (4,), (2, 2, 3))):
    rng = np.random.default_rng(seed)
    return [nn.Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]


def grad_sequence(params, steps, seed=1):
    """A fixed sequence of random gradients for each step, one per parameter."""
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(p.shape).astype(p.dtype) for p in params] for _ in range(steps)]


def run(opt, params, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.copy()
        opt.step()


def reference_adam(p, grads, lr, beta1, beta2, eps, weight_decay=0.0, decoupled=False):
    """The textbook Adam of Kingma & Ba (Algorithm 1), with L2 or decoupled weight decay."""
    p = p.copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def reference_sgd(p, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    p = p.copy()
    buf = None
    for g in grads:
        g = g + weight_decay * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


# ---------------------------------------------------------------------------------- update rules
def test_adam_first_steps_move_each_weight_by_lr_under_a_constant_gradient():
    # With a constant gradient g, m_hat = g and v_hat = g^2 at every step, so each update is
    # lr * g / (|g| + eps): a step of lr against the sign of g, whatever |g| is.
    p = nn.Parameter(np.array([1.0, -2.0, 0.5]))
    opt = optim.Adam([p], lr=0.1)
    for _ in range(3):
        p.grad = np.array([2.0, -0.001, 300.0])
        opt.step()
    step = 0.1 * np.abs(p.grad) / (np.abs(p.grad) + 1e-8)
    np.testing.assert_allclose(p.data, np.array([1.0, -2.0, 0.5]) - 3 * np.sign(p.grad) * step, rtol=1e-12)
    assert np.all(np.abs(3 * step - 0.3) < 1e-5)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_matches_the_textbook_algorithm(weight_decay):
    params = make_params()
    start = [p.data.copy() for p in params]
    grads = grad_sequence(params, 6)
    opt = optim.Adam(params, lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay)
    run(opt, params, grads)
    for i, p in enumerate(params):
        expected = reference_adam(start[i], [g[i] for g in grads], 0.01, 0.8, 0.95, 1e-6, weight_decay)
        np.testing.assert_allclose(p.data, expected, rtol=1e-12, atol=1e-14)


def test_adamw_decouples_weight_decay():
    params = make_params()
    start = [p.data.copy() for p in params]
    grads = grad_sequence(params, 6)
    opt = optim.AdamW(params, lr=0.01, weight_decay=0.3)
    run(opt, params, grads)
    for i, p in enumerate(params):
        expected = reference_adam(start[i], [g[i] for g in grads], 0.01, 0.9, 0.999, 1e-8, 0.3, decoupled=True)
        np.testing.assert_allclose(p.data, expected, rtol=1e-12, atol=1e-14)
        coupled = reference_adam(start[i], [g[i] for g in grads], 0.01, 0.9, 0.999, 1e-8, 0.3, decoupled=False)
        assert not np.allclose(p.data, coupled, rtol=1e-6, atol=0)  # the two rules really differ


def test_adamw_with_zero_gradient_only_shrinks_the_weights():
    p = nn.Parameter(np.array([2.0, -4.0]))
    opt = optim.AdamW([p], lr=0.1, weight_decay=0.5)
    p.grad = np.zeros(2)
    opt.step()
    np.testing.assert_allclose(p.data, np.array([2.0, -4.0]) * (1 - 0.1 * 0.5), rtol=1e-15)


@pytest.mark.parametrize("kind", ["AdamW", "Adam"])
def test_no_decay_parameters_follow_the_rule_without_weight_decay(kind):
    """nanoGPT's rule (decay 2-D weights, not biases/norms) as a no_decay name list: each parameter
    follows the reference with its own weight decay, and the list survives a state-dict round trip."""
    shapes = ((3, 4), (4,), (2, 3))
    names = ["w", "b", "v"]
    params = make_params(shapes=shapes)
    start = [p.data.copy() for p in params]
    grads = grad_sequence(params, 5)
    opt = getattr(optim, kind)(list(zip(names, params)), lr=0.01, weight_decay=0.3, no_decay=["b"])
    run(opt, params, grads)
    for i, p in enumerate(params):
        wd = 0.0 if names[i] == "b" else 0.3
        expected = reference_adam(
            start[i], [g[i] for g in grads], 0.01, 0.9, 0.999, 1e-8, wd, decoupled=kind == "AdamW"
        )
        np.testing.assert_allclose(p.data, expected, rtol=1e-12, atol=1e-14)
    state = json.loads(json.dumps({k: v for k, v in opt.state_dict().items() if k != "arrays"}))
    fresh = getattr(optim, kind)(list(zip(names, make_params(shapes=shapes))), lr=0.01, weight_decay=0.3)
    fresh.load_state_dict({**state, "arrays": opt.state_dict()["arrays"]})
    assert fresh.no_decay == ["b"] and fresh._decays == [True, False, True]


def test_no_decay_refuses_unknown_names_and_a_bare_string():
    params = list(zip(["w", "b"], make_params(shapes=((2, 2), (2,)))))
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['bias'\]"):
        optim.AdamW(params, no_decay=["bias"])
    with pytest.raises(TypeError, match="not one string"):
        optim.AdamW(params, no_decay="b")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(momentum=0.9),
        dict(momentum=0.9, dampening=0.3),
        dict(momentum=0.8, nesterov=True),
        dict(momentum=0.5, weight_decay=0.1, nesterov=True),
        dict(weight_decay=0.2),
    ],
)
def test_sgd_matches_its_formula(kwargs):
    params = make_params()
    start = [p.data.copy() for p in params]
    grads = grad_sequence(params, 5)
    opt = optim.SGD(params, lr=0.05, **kwargs)
    run(opt, params, grads)
    for i, p in enumerate(params):
        expected = reference_sgd(start[i], [g[i] for g in grads], 0.05, **kwargs)
        np.testing.assert_allclose(p.data, expected, rtol=1e-13, atol=1e-15)


def test_sgd_momentum_by_hand():
    p = nn.Parameter(np.array([0.0]))
    opt = optim.SGD([p], lr=0.1, momentum=0.5)
    for g in (1.0, 1.0, -2.0):
        p.grad = np.array([g])
        opt.step()
    # buffers: 1, 0.5*1 + 1 = 1.5, 0.5*1.5 - 2 = -1.25; p = -0.1*(1 + 1.5 - 1.25) = -0.125
    np.testing.assert_allclose(p.data, [-0.125], rtol=1e-15)


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=0.1),
        lambda ps: optim.AdamW(ps, lr=1e-2),
        lambda ps: optim.SGD(ps, lr=1e-2, momentum=0.9, nesterov=True, weight_decay=0.1),
    ],
)
def test_updates_are_in_place_and_keep_float32(make):
    params = make_params(dtype=np.float32)
    arrays = [p.data for p in params]
    opt = make(params)
    run(opt, params, grad_sequence(params, 3))
    for p, arr in zip(params, arrays):
        assert p.data is arr  # updated in place, not replaced
        assert p.data.dtype == np.float32
    for st in opt.state:
        for arr in st.values():
            assert arr.dtype == np.float32  # moments in the parameter dtype, no silent upcast


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: optim.Adam(ps, lr=1e-3, weight_decay=0.1),
        lambda ps: optim.AdamW(ps, lr=1e-3),
        lambda ps: optim.SGD(ps, lr=1e-3, momentum=0.9, nesterov=True, weight_decay=0.1),
    ],
)
def test_a_step_allocates_no_arrays_after_the_first(make):
    import tracemalloc

    params = make_params(dtype=np.float32, shapes=((300, 200), (200,), (100, 100)))
    for p in params:
        p.grad = np.ones(p.shape, dtype=np.float32)
    opt = make(params)
    opt.step()  # the first step creates moments and scratch
    tracemalloc.start()
    try:
        opt.step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.01 * sum(p.data.nbytes for p in params)  # bytes of bookkeeping, no temporaries


def test_float32_adam_follows_float64_adam_to_float32_round_off():
    p32, p64 = make_params(dtype=np.float32), make_params(dtype=np.float64)
    grads = grad_sequence(p64, 5)
    run(optim.Adam(p32, lr=1e-2), p32, [[g.astype(np.float32) for g in s] for s in grads])
    run(optim.Adam(p64, lr=1e-2), p64, grads)
    for a, b in zip(p32, p64):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-5, atol=1e-5)


def test_parameters_without_gradient_are_skipped():
    a, b = make_params(shapes=((2,), (3,)))
    b_before = b.data.copy()
    opt = optim.Adam([a, b], lr=0.1)
    a.grad = np.ones(2)
    opt.step()
    assert np.array_equal(b.data, b_before)
    assert opt.param_steps == [1, 0]
    assert not np.array_equal(a.data, make_params(shapes=((2,), (3,)))[0].data)


def test_zero_grad_and_duplicates():
    a, b = make_params(shapes=((2,), (3,)))
    opt = optim.SGD([a, b, a], lr=0.1)  # a listed twice is one parameter
    assert len(opt.params) == 2
    a.grad, b.grad = np.ones(2), np.ones(3)
    opt.zero_grad()
    assert a.grad is None and b.grad is None


# ---------------------------------------------------------------------------------- checkpoints
def json_round_trip(state):
    """What a checkpoint does: numbers through JSON, arrays through a byte copy."""
    arrays = {k: np.frombuffer(v.tobytes(), dtype=v.dtype).reshape(v.shape) for k, v in state["arrays"].items()}
    rest = json.loads(json.dumps({k: v for k, v in state.items() if k != "arrays"}))
    return {**rest, "arrays": arrays}


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: optim.Adam(ps, lr=1e-2, betas=(0.8, 0.9), weight_decay=0.01),
        lambda ps: optim.AdamW(ps, lr=1e-2),
        lambda ps: optim.SGD(ps, lr=1e-2, momentum=0.9),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_resume_from_state_dict_equals_uninterrupted_training(make, dtype):
    grads = grad_sequence(make_params(dtype=dtype), 10)

    straight = make_params(dtype=dtype)
    opt = make(straight)
    sched = optim.WarmupCosineSchedule(opt, peak_lr=1e-2, warmup_steps=3, total_steps=10, min_lr=1e-3)
    for step_grads in grads:
        run(opt, straight, [step_grads])
        sched.step()

    first = make_params(dtype=dtype)
    opt1 = make(first)
    sched1 = optim.WarmupCosineSchedule(opt1, peak_lr=1e-2, warmup_steps=3, total_steps=10, min_lr=1e-3)
    for step_grads in grads[:4]:
        run(opt1, first, [step_grads])
        sched1.step()
    weights = [p.data.copy() for p in first]
    opt_state, sched_state = json_round_trip(opt1.state_dict()), json.loads(json.dumps(sched1.state_dict()))

    resumed = make_params(seed=99, dtype=dtype)  # different weights, overwritten below
    for p, w in zip(resumed, weights):
        p.data[...] = w
    opt2 = make(resumed)
    opt2.lr = 123.0  # overwritten by the schedule state
    sched2 = optim.WarmupCosineSchedule(opt2, peak_lr=1e-2, warmup_steps=3, total_steps=10, min_lr=1e-3)
    opt2.load_state_dict(opt_state)
    sched2.load_state_dict(sched_state)
    assert opt2.lr == opt1.lr
    for step_grads in grads[4:]:
        run(opt2, resumed, [step_grads])
        sched2.step()

    for a, b in zip(straight, resumed):
        assert np.array_equal(a.data, b.data)  # bit-identical


def test_state_dict_is_plain_data_and_a_copy():
    params = make_params()
    opt = optim.Adam(params, lr=1e-3)
    run(opt, params, grad_sequence(params, 2))
    sd = opt.state_dict()
    json.dumps({k: v for k, v in sd.items() if k != "arrays"})  # numbers only
    assert all(isinstance(v, np.ndarray) for v in sd["arrays"].values())
    assert set(sd["arrays"]) == {f"{i}.{k}" for i in range(3) for k in ("exp_avg", "exp_avg_sq")}
    before = sd["arrays"]["0.exp_avg"].copy()
    run(opt, params, grad_sequence(params, 1, seed=5))
    assert np.array_equal(sd["arrays"]["0.exp_avg"], before)


def test_named_parameters_give_named_state_keys():
    lin = nn.Linear(3, 2, rng=0, dtype=np.float64)
    opt = optim.Adam(lin.named_parameters(), lr=1e-3)
    lin.weight.grad, lin.bias.grad = np.ones((3, 2)), np.ones(2)
    opt.step()
    sd = opt.state_dict()
    assert set(sd["param_steps"]) == {"weight", "bias"}
    assert "weight.exp_avg_sq" in sd["arrays"]


def test_load_state_dict_refuses_a_mismatch():
    params = make_params()
    opt = optim.Adam(params, lr=1e-3)
    run(opt, params, grad_sequence(params, 1))
    sd = opt.state_dict()

    with pytest.raises(ValueError, match="from a Adam optimizer"):
        optim.SGD(make_params(), lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="parameters differ"):
        optim.Adam(make_params()[:2], lr=1e-3).load_state_dict(sd)
    bad = dict(sd, arrays=dict(sd["arrays"], **{"1.exp_avg": np.zeros(5)}))
    fresh = optim.Adam(make_params(), lr=0.5)
    with pytest.raises(ValueError, match=r"'1.exp_avg': shape \(5,\), but the parameter has shape \(4,\)"):
        fresh.load_state_dict(bad)
    assert fresh.lr == 0.5 and fresh.param_steps == [0, 0, 0]  # nothing loaded
    missing = dict(sd, arrays={k: v for k, v in sd["arrays"].items() if k != "2.exp_avg"})
    with pytest.raises(ValueError, match="parameter '2' has taken 1 steps"):
        fresh.load_state_dict(missing)


# ---------------------------------------------------------------------------------- clipping
def test_clip_grad_norm_scales_to_max_norm_and_returns_the_total():
    params = make_params()
    rng = np.random.default_rng(3)
    for p in params:
        p.grad = rng.standard_normal(p.shape) * 10
    grads_before = [p.grad.copy() for p in params]
    total = math.sqrt(sum(float((g**2).sum()) for g in grads_before))
    returned = optim.clip_grad_norm_(params, max_norm=1.0)
    assert returned == pytest.approx(total, rel=1e-12)
    new_total = math.sqrt(sum(float((p.grad**2).sum()) for p in params))
    assert new_total == pytest.approx(1.0, rel=1e-5)
    for p, g in zip(params, grads_before):  # one common factor: directions kept
        np.testing.assert_allclose(p.grad, g * (1.0 / (total + 1e-6)), rtol=1e-12)


def test_clip_grad_norm_leaves_small_gradients_alone_and_skips_missing():
    a, b = make_params(shapes=((3,), (2,)))
    a.grad = np.array([0.1, -0.2, 0.2])
    before = a.grad.copy()
    assert optim.clip_grad_norm_([a, b], max_norm=5.0) == pytest.approx(0.3)
    assert np.array_equal(a.grad, before) and b.grad is None


def test_clip_grad_norm_inf_norm_and_nonfinite():
    a = make_params(shapes=((3,),))[0]
    a.grad = np.array([1.0, -4.0, 2.0])
    assert optim.clip_grad_norm_([a], 2.0, norm_type=math.inf) == 4.0
    np.testing.assert_allclose(a.grad, np.array([1.0, -4.0, 2.0]) * 2.0 / (4.0 + 1e-6))
    a.grad = np.array([1.0, np.inf, 2.0])
    with pytest.raises(RuntimeError, match="total norm"):
        optim.clip_grad_norm_([a], 1.0, error_if_nonfinite=True)


def test_clip_grad_norm_float32_stays_float32():
    a = make_params(dtype=np.float32, shapes=((100,),))[0]
    a.grad = np.full(100, 3.0, dtype=np.float32)
    optim.clip_grad_norm_([a], 1.0)
    assert a.grad.dtype == np.float32
    assert float(np.linalg.norm(a.grad.astype(np.float64))) == pytest.approx(1.0, rel=1e-5)


# ---------------------------------------------------------------------------------- schedules
def lrs(schedule, n):
    out = [schedule.optimizer.lr]
    for _ in range(n - 1):
        schedule.step()
        out.append(schedule.optimizer.lr)
    return out


def sgd():
    return optim.SGD(make_params(shapes=((2,),)), lr=1.0)


def test_inverse_sqrt_is_the_papers_formula_and_peaks_at_warmup():
    d, w = 512, 40
    values = lrs(optim.InverseSqrtSchedule(sgd(), d_model=d, warmup_steps=w), 200)
    for step, lr in enumerate(values, start=1):
        assert lr == pytest.approx(d**-0.5 * min(step**-0.5, step * w**-1.5), rel=1e-15)
    assert int(np.argmax(values)) + 1 == w
    assert max(values) == pytest.approx((d * w) ** -0.5)
    assert all(np.diff(values[:w]) > 0) and all(np.diff(values[w - 1 :]) < 0)


def test_inverse_sqrt_peak_lr_form_equals_the_d_model_form_rescaled():
    d, w = 256, 25
    paper = lrs(optim.InverseSqrtSchedule(sgd(), d_model=d, warmup_steps=w, factor=2.0), 100)
    peak = 2.0 * (d * w) ** -0.5
    by_peak = lrs(optim.InverseSqrtSchedule(sgd(), peak_lr=peak, warmup_steps=w), 100)
    np.testing.assert_allclose(by_peak, paper, rtol=1e-12)


def test_warmup_cosine_hits_its_landmarks():
    peak, lo, w, t = 6e-4, 6e-5, 10, 110
    sched = optim.WarmupCosineSchedule(sgd(), peak_lr=peak, warmup_steps=w, total_steps=t, min_lr=lo)
    values = lrs(sched, 130)
    assert values[0] == pytest.approx(peak / w)
    assert values[w - 1] == pytest.approx(peak)  # step w: the peak
    assert values[(w + t) // 2 - 1] == pytest.approx((peak + lo) / 2)  # half-way through the decay
    assert values[t - 1] == pytest.approx(lo)  # step t: min_lr
    assert all(v == lo for v in values[t:])  # and after
    assert all(np.diff(values[:w]) > 0) and all(np.diff(values[w - 1 : t]) < 0)
    assert sched.lr_at(w + 30) == pytest.approx(lo + 0.5 * (1 + math.cos(math.pi * 0.3)) * (peak - lo))


def test_constant_schedule_with_and_without_warmup():
    opt = optim.SGD(make_params(shapes=((2,),)), lr=0.3)
    assert lrs(optim.ConstantSchedule(opt), 5) == [0.3] * 5
    np.testing.assert_allclose(
        lrs(optim.ConstantSchedule(opt, lr=0.5, warmup_steps=4), 6), [0.125, 0.25, 0.375, 0.5, 0.5, 0.5]
    )


def test_schedule_state_dict_round_trip_and_type_check():
    a = optim.InverseSqrtSchedule(sgd(), d_model=64, warmup_steps=10)
    for _ in range(7):
        a.step()
    b = optim.InverseSqrtSchedule(sgd(), d_model=64, warmup_steps=10)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.step_num == 8 and b.optimizer.lr == a.optimizer.lr
    assert lrs(a, 5) == lrs(b, 5)
    with pytest.raises(ValueError, match="ConstantSchedule"):
        b.load_state_dict(optim.ConstantSchedule(sgd()).state_dict())


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "build, message",
    [
        (lambda ps: optim.Adam(ps, lr=-1e-3), r"lr must be in \[0.0"),
        (lambda ps: optim.Adam(ps, lr=float("nan")), "lr must be"),
        (lambda ps: optim.Adam(ps, betas=(1.0, 0.999)), r"beta1 must be in \[0.0, 1.0\)"),
        (lambda ps: optim.Adam(ps, betas=(0.9, -0.1)), "beta2 must be"),
        (lambda ps: optim.Adam(ps, betas=0.9), "betas must be a pair"),
        (lambda ps: optim.AdamW(ps, eps=-1e-8), "eps must be"),
        (lambda ps: optim.AdamW(ps, weight_decay=-0.01), "weight_decay must be"),
        (lambda ps: optim.SGD(ps, lr=0.1, momentum=-0.5), "momentum must be"),
        (lambda ps: optim.SGD(ps, lr=0.1, nesterov=True), "nesterov=True needs momentum > 0"),
        (lambda ps: optim.SGD([], lr=0.1), "empty parameter list"),
        (lambda ps: optim.SGD(ps[0], lr=0.1), "not a single Tensor"),
        (lambda ps: optim.InverseSqrtSchedule(optim.SGD(ps, lr=1.0), warmup_steps=10), "exactly one of"),
        (lambda ps: optim.InverseSqrtSchedule(optim.SGD(ps, lr=1.0), d_model=8, warmup_steps=-1), "warmup_steps"),
        (lambda ps: optim.WarmupCosineSchedule(optim.SGD(ps, lr=1.0), 1e-3, 100, 50), "total_steps"),
        (lambda ps: optim.WarmupCosineSchedule(optim.SGD(ps, lr=1.0), 1e-3, 1, 50, min_lr=1e-2), "min_lr"),
    ],
)
def test_bad_hyper_parameters_are_refused_clearly(build, message):
    with pytest.raises((ValueError, TypeError), match=message):
        build(make_params())


def test_setting_a_negative_lr_later_is_refused():
    opt = optim.SGD(make_params(), lr=0.1)
    with pytest.raises(ValueError, match="lr must be"):
        opt.lr = -0.1


def test_non_float_or_frozen_parameters_are_refused():
    import npgrad as ng

    with pytest.raises(TypeError, match="dtype int64"):
        optim.SGD([ng.tensor(np.arange(3))], lr=0.1)
    with pytest.raises(ValueError, match="does not require grad"):
        optim.SGD([ng.tensor(np.zeros(3))], lr=0.1)


# ---------------------------------------------------------------------------------- torch.optim
def _torch_run(torch_cls, kwargs, start, grads):
    torch = pytest.importorskip("torch")
    tparams = [torch.nn.Parameter(torch.tensor(s.copy())) for s in start]
    opt = torch_cls(tparams, **kwargs)
    for step_grads in grads:
        for tp, g in zip(tparams, step_grads):
            tp.grad = torch.tensor(g.copy())
        opt.step()
    return [tp.detach().numpy() for tp in tparams]


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("Adam", dict(lr=1e-2, betas=(0.85, 0.98), eps=1e-9)),
        ("Adam", dict(lr=1e-2, weight_decay=0.05)),
        ("AdamW", dict(lr=1e-2, weight_decay=0.1)),
        ("SGD", dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=0.01)),
        ("SGD", dict(lr=1e-2, momentum=0.9, dampening=0.1)),
    ],
)
def test_matches_torch_optim_in_float64(name, kwargs):
    torch = pytest.importorskip("torch")
    params = make_params()
    start = [p.data.copy() for p in params]
    grads = grad_sequence(params, 20)
    run(getattr(optim, name)(params, **kwargs), params, grads)
    expected = _torch_run(getattr(torch.optim, name), kwargs, start, grads)
    for p, e in zip(params, expected):
        # Same formulas in the same order; torch fuses some multiply-adds (FMA), hence round-off.
        np.testing.assert_allclose(p.data, e, rtol=1e-13, atol=1e-15)


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    params = make_params()
    rng = np.random.default_rng(7)
    grads = [rng.standard_normal(p.shape) for p in params]
    tparams = [torch.nn.Parameter(torch.tensor(p.data.copy())) for p in params]
    for p, tp, g in zip(params, tparams, grads):
        p.grad, tp.grad = g.copy(), torch.tensor(g.copy())
    for norm_type in (2.0, 3.0, math.inf):
        ours = optim.clip_grad_norm_(params, 0.5, norm_type=norm_type)
        theirs = float(torch.nn.utils.clip_grad_norm_(tparams, 0.5, norm_type=norm_type))
        assert ours == pytest.approx(theirs, rel=1e-12)
        for p, tp in zip(params, tparams):
            np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-12)
