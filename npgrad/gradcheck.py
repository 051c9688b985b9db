"""Finite-difference checks of the hand-written derivatives, and whole Jacobians.

A derivative is checked against central differences

    df/dx_j  ~  (f(x + h e_j) - f(x - h e_j)) / (x_j+ - x_j-)          error O(h^2 f''')

where ``x_j+ = x_j + h`` and ``x_j- = x_j - h`` *as stored in the input's dtype* (so in float32 the
step that really happened is used, not the one asked for), and every difference is formed in float64.

Two ways to compare (``mode``):

* ``"full"``: the whole Jacobian. Analytic rows are vector-Jacobian products with basis vectors
  (one backward per output element), numeric columns are central differences (two forward passes
  per input element). Exact element-by-element comparison; for small inputs.
* ``"fast"``: random directions, as HIPS autograd's ``check_grads`` does. For a random output
  direction v and a random input direction u, compare ``<J^T v, u>`` (one backward) with
  ``<v, (f(x + h u) - f(x - h u))> / 2h`` (two forward passes). Cost independent of the size.
  On a failure the offending element is then located with per-element differences of ``<v, f>``.
* ``"auto"``: ``"full"`` when inputs and outputs are small, else ``"fast"``.

Which arguments are checked: float Tensors with ``requires_grad=True`` and float ndarrays.
Float Tensors without ``requires_grad`` are constants; integer and boolean arrays, Python numbers
and anything else pass through to ``fn`` unchanged. The user's tensors are never modified: the
check works on copies and reads gradients with :func:`npgrad.grad`, so no ``.grad`` is touched.
"""

from __future__ import annotations

import numpy as np

from ._checks import check_int, check_number
from .tensor import Tensor, enable_grad, no_grad
from .tensor import grad as _grad

DEFAULT_EPS = 1e-6  # float64 step: truncation h^2 ~ 1e-12, round-off 1e-16/h ~ 1e-10
DEFAULT_EPS_LOW_PRECISION = 1e-3  # float32/16 step: round-off 1e-7/h ~ 1e-4 (only with explicit tolerances)
DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-3
# gradgradcheck (float64): a second derivative 0.1% off must fail. Central differences of a float64 gradient
# with h = 1e-6 are good to ~eps64 |terms| / h + h^2 |4th derivative| (at most 6e-10 relative on the suite's
# primitives: 100x inside these).
SECOND_ORDER_ATOL = 1e-7
SECOND_ORDER_RTOL = 1e-5
# The create_graph gradient and the plain backward are the same derivative computed twice in the input's
# dtype: they agree to round-off (< 2 eps64 relative on every primitive), so allow 1000 eps of the largest entry.
CONSISTENCY_ULPS = 1000
AUTO_FULL_MAX_INPUT = 500  # "auto" uses the full Jacobian up to this many checked input elements...
AUTO_FULL_MAX_OUTPUT = 2000  # ...and this many output elements (one backward per output element)
LOCALISE_MAX = 20000  # fast mode locates the failing element when the input has at most this many


def _check_settings(where, eps=None, atol=None, rtol=None, n_directions=1, seed=0, consistency_rtol=None, mode="auto"):
    """The settings, checked before ``fn`` runs (None: the default): eps finite > 0 (a step of 0 or NaN would
    blame the derivative for a bad step), atol/rtol/consistency_rtol finite >= 0, n_directions an integer >= 1,
    seed an integer >= 0 or None, mode one of "auto", "full", "fast"."""
    if not isinstance(mode, str) or mode not in ("auto", "full", "fast"):
        raise ValueError(f"{where}: mode must be 'auto', 'full' or 'fast', got {mode!r}")
    if eps is not None:
        check_number(eps, "eps", where, 0.0, low_open=True)
    for name, value in (("atol", atol), ("rtol", rtol), ("consistency_rtol", consistency_rtol)):
        if value is not None:
            check_number(value, name, where)
    check_int(n_directions, "n_directions", where, low=1)
    if seed is not None:
        check_int(seed, "seed", where, low=0)


class GradcheckError(AssertionError):
    """Analytic and numerical derivatives disagree.

    Attributes name what disagreed: ``input_index``, ``input_name``, ``element_index`` (a tuple into
    the input, or None when not located), ``output_index`` (``(output number, element tuple)``
    or None for a random-direction check), ``analytic`` and ``numeric`` values, and ``order``
    (1 for gradcheck, 2 for gradgradcheck).
    """

    def __init__(
        self,
        message,
        *,
        input_index=None,
        input_name=None,
        element_index=None,
        output_index=None,
        analytic=None,
        numeric=None,
        order=1,
    ):
        super().__init__(message)
        self.input_index = input_index
        self.input_name = input_name
        self.element_index = element_index
        self.output_index = output_index
        self.analytic = analytic
        self.numeric = numeric
        self.order = order


# ------------------------------------------------------------------------------ inputs and outputs


class _Arguments:
    """The user's arguments split into checked float inputs and pass-through values."""

    def __init__(self, inputs, where):
        if isinstance(inputs, (Tensor, np.ndarray)):
            inputs = (inputs,)
        elif not isinstance(inputs, (tuple, list)):
            raise TypeError(
                f"{where}: inputs must be a Tensor, an ndarray or a tuple/list of them, got {type(inputs).__name__}"
            )
        self.originals = list(inputs)
        self.checked = []  # argument positions that are checked
        self.arrays = {}  # position -> private copy of the array (the base point)
        self.names = {}
        for i, x in enumerate(inputs):
            if isinstance(x, Tensor):
                if x.requires_grad and x.dtype.kind == "f":
                    self.checked.append(i)
                    self.arrays[i] = np.array(x.data, copy=True)
                    self.names[i] = x.name
            elif isinstance(x, np.ndarray) and x.dtype.kind == "f":
                self.checked.append(i)
                self.arrays[i] = np.array(x, copy=True)
                self.names[i] = None
        if not self.checked:
            raise ValueError(
                f"{where}: no input to check. Pass float Tensors with requires_grad=True (or float "
                "ndarrays); integer, boolean and requires_grad=False inputs are treated as constants."
            )

    def label(self, i):
        name = self.names.get(i)
        return f"input {i}" + (f" ('{name}')" if name else "")

    def describe(self, i):
        a = self.arrays[i]
        return f"{self.label(i)}, shape {a.shape}, {a.dtype}"

    def call_args(self, replaced=None, requires_grad=False):
        """Arguments for ``fn``: checked inputs as fresh Tensors (``replaced`` overrides some arrays)."""
        args, leaves = [], []
        for i, x in enumerate(self.originals):
            if i in self.arrays:
                arr = self.arrays[i] if replaced is None or i not in replaced else replaced[i]
                t = Tensor(arr, requires_grad=requires_grad, name=self.names[i])
                args.append(t)
                leaves.append(t)
            else:
                args.append(x)
        return args, leaves


def _as_outputs(result, where):
    """``fn``'s result as a list of Tensors."""
    if isinstance(result, Tensor):
        return [result]
    if isinstance(result, (tuple, list)) and result and all(isinstance(r, Tensor) for r in result):
        return list(result)
    raise TypeError(
        f"{where}: fn must return a Tensor or a non-empty tuple of Tensors, got "
        f"{type(result).__name__}"
        + (f" of {[type(r).__name__ for r in result]}" if isinstance(result, (tuple, list)) else "")
    )


def _float_outputs(outputs):
    """Positions of the differentiable (floating-point) outputs."""
    return [k for k, o in enumerate(outputs) if o.dtype.kind == "f"]


def _flat64(outputs, positions):
    if not positions:
        return np.zeros(0)
    return np.concatenate([np.asarray(outputs[k].data, dtype=np.float64).ravel() for k in positions])


def _vjp(outputs, positions, leaves, vectors):
    """Gradients of ``sum_k <v_k, out_k>`` w.r.t. every leaf, as float64 arrays (zeros if unused)."""
    roots, grad_outputs = [], []
    for k, v in zip(positions, vectors):
        o = outputs[k]
        if o.requires_grad:
            roots.append(o)
            grad_outputs.append(np.asarray(v, dtype=o.dtype).reshape(o.shape))
    if not roots:
        return [np.zeros(t.shape) for t in leaves]
    grads = _grad(roots, leaves, grad_outputs=grad_outputs, retain_graph=True, allow_unused=True)
    return [np.zeros(t.shape) if g is None else np.asarray(g, dtype=np.float64) for t, g in zip(leaves, grads)]


def _check_precision(args, outputs, positions, atol, rtol, where):
    if atol is not None or rtol is not None:
        return
    for i in args.checked:
        if args.arrays[i].dtype != np.float64:
            what = f"{args.label(i)} is {args.arrays[i].dtype}"
            break
    else:
        low = [k for k in positions if outputs[k].dtype != np.float64]
        if not low:
            return
        what = f"output {low[0]} is {outputs[low[0]].dtype}"
    raise ValueError(
        f"{where}: {what}. Finite differences in single precision keep only about 3-4 digits "
        "(round-off ~1e-7/eps), so the float64 tolerances (atol=1e-5, rtol=1e-3) would report "
        "errors that are not there. Check in float64 (convert with .astype(np.float64)), or pass "
        "atol= and rtol= explicitly (e.g. atol=1e-2, rtol=1e-2) to check the float32 path knowingly."
    )


def _perturbed(base, delta):
    """(x + delta, x - delta) stored in the input's dtype, and the step that really happened (float64)."""
    plus = (base.astype(np.float64) + delta).astype(base.dtype)
    minus = (base.astype(np.float64) - delta).astype(base.dtype)
    return plus, minus, plus.astype(np.float64) - minus.astype(np.float64)


def _evaluate(fn, args, replaced, positions, where):
    """fn at a perturbed point, no graph, flattened float64 outputs."""
    call, _ = args.call_args(replaced)
    with no_grad():
        outs = _as_outputs(fn(*call), where)
    return _flat64(outs, positions)


def _index_str(index):
    return "[" + ", ".join(str(int(j)) for j in index) + "]"


def _tolerance_ratio(analytic, numeric, atol, rtol):
    """How far outside the tolerance each entry is (> 1 fails); NaN/inf disagreements count as inf."""
    diff = np.abs(analytic - numeric)
    allowed = atol + rtol * np.abs(numeric)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = diff / np.where(allowed > 0, allowed, np.finfo(np.float64).tiny)
    both_equal = analytic == numeric  # equal infinities agree
    ratio = np.where(both_equal, 0.0, ratio)
    return np.where(np.isnan(ratio), np.inf, ratio)


# ------------------------------------------------------------------------------ gradcheck


def gradcheck(
    fn, inputs, eps=None, atol=None, rtol=None, mode="auto", n_directions=3, seed=0, _order=1, _output_labels=None
):
    """Check ``fn``'s analytic derivatives against central differences. True, or raise GradcheckError.

    ``fn(*inputs)`` returns a Tensor (any shape) or a tuple of Tensors. ``eps`` defaults to 1e-6
    (1e-3 for float32 inputs); ``atol`` 1e-5, ``rtol`` 1e-3 (an entry passes when
    ``|analytic - numeric| <= atol + rtol |numeric|``). Float32 inputs or outputs are refused unless
    a tolerance is given explicitly. ``mode``: "full" (whole Jacobians), "fast" (``n_directions``
    random directions per input, drawn from ``seed``), or "auto".
    Before ``fn`` runs, ``eps`` must be finite and > 0, ``atol`` and ``rtol`` finite and >= 0,
    ``n_directions`` an integer >= 1 and ``seed`` an integer >= 0 (or None): ValueError/TypeError otherwise.
    """
    where = "gradcheck" if _order == 1 else "gradgradcheck"
    _check_settings(where, eps, atol, rtol, n_directions, seed, mode=mode)
    args = _Arguments(inputs, where)

    # One evaluation with the graph: the analytic side.
    call, leaves = args.call_args(requires_grad=True)
    with enable_grad():
        outputs = _as_outputs(fn(*call), where)
    positions = _float_outputs(outputs)
    _check_precision(args, outputs, positions, atol, rtol, where)
    atol = (DEFAULT_ATOL if _order == 1 else SECOND_ORDER_ATOL) if atol is None else float(atol)
    rtol = (DEFAULT_RTOL if _order == 1 else SECOND_ORDER_RTOL) if rtol is None else float(rtol)
    if eps is None:
        low = any(args.arrays[i].dtype.itemsize < 8 for i in args.checked)
        eps = DEFAULT_EPS_LOW_PRECISION if low else DEFAULT_EPS
    if not positions:
        raise ValueError(f"{where}: fn returned no floating-point output to differentiate")

    n_in = sum(args.arrays[i].size for i in args.checked)
    n_out = sum(outputs[k].size for k in positions)
    if mode == "auto":
        mode = "full" if n_in <= AUTO_FULL_MAX_INPUT and n_out <= AUTO_FULL_MAX_OUTPUT else "fast"
    ctx = _Check(fn, args, outputs, positions, leaves, eps, atol, rtol, where, _order, _output_labels)
    if mode == "full":
        ctx.full()
    else:
        ctx.fast(n_directions, np.random.default_rng(seed))
    return True


class _Check:
    def __init__(self, fn, args, outputs, positions, leaves, eps, atol, rtol, where, order, output_labels=None):
        self.fn, self.args, self.outputs, self.positions, self.leaves = fn, args, outputs, positions, leaves
        self.output_labels = output_labels
        self.eps, self.atol, self.rtol, self.where, self.order = eps, atol, rtol, where, order
        self.sizes = [outputs[k].size for k in positions]

    def _output_element(self, row):
        """Flat row of the concatenated outputs -> (output number, element index tuple)."""
        for k, size in zip(self.positions, self.sizes):
            if row < size:
                return k, tuple(int(j) for j in np.unravel_index(row, self.outputs[k].shape))
            row -= size
        raise IndexError(row)

    def _split(self, flat):
        parts, start = [], 0
        for size in self.sizes:
            parts.append(flat[start : start + size])
            start += size
        return parts

    def _numeric_columns(self, i, weights=None):
        """Central differences of the outputs (or of <weights, outputs>) w.r.t. each element of input i."""
        base = self.args.arrays[i]
        flat = base.reshape(-1)
        cols = []
        for j in range(base.size):
            delta = np.zeros(base.size)
            delta[j] = self.eps
            plus, minus, step = _perturbed(flat, delta)
            f_plus = _evaluate(self.fn, self.args, {i: plus.reshape(base.shape)}, self.positions, self.where)
            f_minus = _evaluate(self.fn, self.args, {i: minus.reshape(base.shape)}, self.positions, self.where)
            d = (f_plus - f_minus) / step[j]
            cols.append(d if weights is None else float(weights @ d))
        return np.array(cols).T if weights is None else np.array(cols)

    def full(self):
        n_out = sum(self.sizes)
        leaves = self.leaves
        analytic = [np.empty((n_out, leaf.size)) for leaf in leaves]
        basis = np.zeros(n_out)
        for row in range(n_out):
            basis[row] = 1.0
            grads = _vjp(self.outputs, self.positions, leaves, self._split(basis))
            basis[row] = 0.0
            for a, g in zip(analytic, grads):
                a[row] = g.ravel()
        worst = None
        for slot, i in enumerate(self.args.checked):
            numeric = self._numeric_columns(i)
            ratio = _tolerance_ratio(analytic[slot], numeric, self.atol, self.rtol)
            if ratio.size == 0:
                continue
            r, c = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
            if ratio[r, c] > 1 and (worst is None or ratio[r, c] > worst[0]):
                worst = (ratio[r, c], i, r, c, analytic[slot][r, c], numeric[r, c], int(np.sum(ratio > 1)), ratio.size)
        if worst is not None:
            _, i, r, c, a, n, bad, total = worst
            k, out_index = self._output_element(r)
            element = tuple(int(j) for j in np.unravel_index(c, self.args.arrays[i].shape))
            self._fail(
                i,
                element,
                (k, out_index),
                a,
                n,
                f"d {self._output_ref(k)}{_index_str(out_index)} / d {self._input_ref(i)}{_index_str(element)}",
                f"{bad} of {total} Jacobian entries of this input are out of tolerance",
            )

    def fast(self, n_directions, rng):
        for _ in range(n_directions):
            v = [
                rng.standard_normal(self.outputs[k].shape).astype(self.outputs[k].dtype).astype(np.float64)
                for k in self.positions
            ]
            v_flat = np.concatenate([x.ravel() for x in v])
            grads = _vjp(self.outputs, self.positions, self.leaves, v)  # J^T v for every input
            for slot, i in enumerate(self.args.checked):
                base = self.args.arrays[i]
                u = rng.standard_normal(base.shape)
                plus, minus, step = _perturbed(base, self.eps * u)
                f_plus = _evaluate(self.fn, self.args, {i: plus}, self.positions, self.where)
                f_minus = _evaluate(self.fn, self.args, {i: minus}, self.positions, self.where)
                numeric = float(v_flat @ (f_plus - f_minus)) / (2 * self.eps)
                analytic = float(np.sum(grads[slot] * step)) / (2 * self.eps)
                if _tolerance_ratio(np.array(analytic), np.array(numeric), self.atol, self.rtol) > 1:
                    self._localise(i, grads[slot], v_flat, analytic, numeric)

    def _localise(self, i, analytic_vjp, v_flat, analytic_dir, numeric_dir):
        """A random direction disagreed: find the element of input i whose derivative is wrong."""
        base = self.args.arrays[i]
        detail = (
            f"along a random direction u, <J^T v, u> = {analytic_dir:.6g} (analytic) but "
            f"<v, J u> = {numeric_dir:.6g} (numeric) for a random output direction v"
        )
        if base.size <= LOCALISE_MAX:
            numeric = self._numeric_columns(i, weights=v_flat)
            analytic = analytic_vjp.ravel()
            ratio = _tolerance_ratio(analytic, numeric, self.atol, self.rtol)
            j = int(np.argmax(ratio))
            if ratio[j] > 1:
                element = tuple(int(x) for x in np.unravel_index(j, base.shape))
                self._fail(
                    i,
                    element,
                    None,
                    analytic[j],
                    numeric[j],
                    f"d<v, outputs> / d {self._input_ref(i)}{_index_str(element)} (v a random output direction)",
                    f"{int(np.sum(ratio > 1))} of {ratio.size} elements out of tolerance; {detail}",
                )
        self._fail(
            i,
            None,
            None,
            analytic_dir,
            numeric_dir,
            "the directional derivative",
            detail + " (no single element is out of tolerance: the error is spread over many)",
        )

    def _output_ref(self, k):
        return self.output_labels[k] if self.output_labels else f"output{k}"

    def _input_ref(self, i):
        name = self.args.names.get(i)
        return name if name else f"input{i}"

    def _fail(self, i, element, output_index, analytic, numeric, what, extra):
        kind = "gradient" if self.order == 1 else "second derivative (gradient of the gradient)"
        message = (
            f"{self.where} failed: the {kind} of {self.args.describe(i)} is wrong.\n"
            f"  worst entry: {what}\n"
            f"  analytic {analytic:.10g}  numeric {numeric:.10g}  |diff| {abs(analytic - numeric):.3g}"
            f" > atol {self.atol:g} + rtol {self.rtol:g} * |numeric|\n"
            f"  {extra} (eps={self.eps:g})"
        )
        raise GradcheckError(
            message,
            input_index=i,
            input_name=self.args.names.get(i),
            element_index=element,
            output_index=output_index,
            analytic=float(analytic),
            numeric=float(numeric),
            order=self.order,
        )


# ------------------------------------------------------------------------------ Jacobians


def _single_or_tuple(x):
    return (x,) if isinstance(x, (Tensor, np.ndarray)) else tuple(x)


def jacobian(fn, x):
    """The analytic Jacobian of ``fn`` at ``x``, from one vector-Jacobian product per output element.

    ``fn`` takes Tensors and returns one Tensor. Returns an ndarray of shape ``out.shape + x.shape``
    in the gradient's dtype (the input's); for a tuple ``x``, ``fn(*x)`` and a tuple of Jacobians.
    """
    xs = _single_or_tuple(x)
    args = _Arguments(xs, "jacobian")
    call, leaves = args.call_args(requires_grad=True)
    with enable_grad():
        out = _as_outputs(fn(*call), "jacobian")
    if len(out) != 1:
        raise TypeError("jacobian: fn must return a single Tensor (use gradcheck for several outputs)")
    out = out[0]
    jacs = [np.zeros((out.size, leaf.size), dtype=leaf.dtype) for leaf in leaves]
    basis = np.zeros(out.size, dtype=out.dtype)
    if out.requires_grad:
        for row in range(out.size):
            basis[row] = 1
            grads = _grad(out, leaves, grad_outputs=basis.reshape(out.shape), retain_graph=True, allow_unused=True)
            basis[row] = 0
            for jac, g in zip(jacs, grads):
                if g is not None:
                    jac[row] = np.asarray(g).ravel()
    result = tuple(j.reshape(out.shape + leaf.shape) for j, leaf in zip(jacs, leaves))
    return result[0] if isinstance(x, (Tensor, np.ndarray)) else result


def numerical_jacobian(fn, x, eps=None):
    """Central-difference Jacobian of ``fn`` at ``x`` in float64, shape ``out.shape + x.shape``.

    ``eps`` defaults to 1e-6 for float64 and 1e-3 for lower precision. For a tuple ``x``, ``fn(*x)``
    and a tuple of Jacobians.
    """
    _check_settings("numerical_jacobian", eps)
    xs = _single_or_tuple(x)
    args = _Arguments(xs, "numerical_jacobian")
    call, _ = args.call_args()
    with no_grad():
        out = _as_outputs(fn(*call), "numerical_jacobian")
    if len(out) != 1:
        raise TypeError("numerical_jacobian: fn must return a single Tensor")
    out_shape = out[0].shape
    if eps is None:
        low = any(args.arrays[i].dtype.itemsize < 8 for i in args.checked)
        eps = DEFAULT_EPS_LOW_PRECISION if low else DEFAULT_EPS
    check = _Check(fn, args, out, [0], None, eps, 0.0, 0.0, "numerical_jacobian", 1)
    result = tuple(check._numeric_columns(i).reshape(out_shape + args.arrays[i].shape) for i in args.checked)
    return result[0] if isinstance(x, (Tensor, np.ndarray)) else result


# ------------------------------------------------------------------------------ second order


def gradgradcheck(
    fn,
    inputs,
    grad_outputs=None,
    eps=None,
    atol=None,
    rtol=None,
    mode="auto",
    n_directions=3,
    seed=0,
    check_grad_outputs=True,
    consistency_rtol=None,
):
    """Check second derivatives: gradcheck applied to the gradient function.

    The gradient function is ``(inputs, v) -> ng.grad(fn(inputs), inputs, grad_outputs=v,
    create_graph=True)``: reverse over reverse, the path ``hvp``/``hessian`` take. Its analytic
    derivative runs each primitive's ``differentiable_backward`` and then the backward of the ops that
    one recorded; its numerical derivative is central differences of the gradient itself (HIPS
    autograd's ``check_grads(order=2)``). ``grad_outputs`` (v) defaults to random arrays drawn from
    ``seed``; with ``check_grad_outputs`` the derivative with respect to v is checked too (it
    catches a ``differentiable_backward`` that cuts the graph at the incoming gradient).

    Tolerances are tighter than gradcheck's, so that a second derivative 0.1% off fails: ``atol``
    1e-7 and ``rtol`` 1e-5 by default (float64; float32 needs explicit ones, as in gradcheck). Before
    that, the create_graph gradient must equal the plain backward's to round-off: within
    ``consistency_rtol`` (default 1000 eps of the inputs' dtype, 2.2e-13 in float64) times the largest
    gradient entry of any checked input.
    Raises :class:`GradcheckError` (``order=2``) naming the input, the element and both values; the
    numeric arguments are checked first, as in :func:`gradcheck` (``consistency_rtol`` finite and >= 0).
    """
    _check_settings("gradgradcheck", eps, atol, rtol, n_directions, seed, consistency_rtol, mode)
    args = _Arguments(inputs, "gradgradcheck")
    call, leaves = args.call_args(requires_grad=True)
    with enable_grad():
        outputs = _as_outputs(fn(*call), "gradgradcheck")
    positions = _float_outputs(outputs)
    if grad_outputs is None:
        rng = np.random.default_rng(None if seed is None else seed + 1)  # not the directions gradcheck draws
        grad_outputs = [rng.standard_normal(outputs[k].shape).astype(outputs[k].dtype) for k in positions]
    else:
        grad_outputs = [grad_outputs] if isinstance(grad_outputs, (Tensor, np.ndarray)) else list(grad_outputs)
        grad_outputs = [np.asarray(v.data if isinstance(v, Tensor) else v) for v in grad_outputs]
        if len(grad_outputs) != len(positions):
            raise ValueError(
                f"gradgradcheck: {len(grad_outputs)} grad_outputs for {len(positions)} floating-point outputs"
            )
        for v, k in zip(grad_outputs, positions):
            if v.shape != outputs[k].shape:
                raise ValueError(
                    f"gradgradcheck: grad_outputs for output {k} has shape {v.shape}, "
                    f"the output has shape {outputs[k].shape}"
                )
    n_args = len(args.originals)
    checked = list(args.checked)

    def gradient_of_fn(*all_args):
        given, vs = list(all_args[:n_args]), all_args[n_args:]
        # In the numeric evaluations the checked inputs arrive without requires_grad: make them leaves.
        for i in checked:
            if not given[i].requires_grad:
                given[i] = Tensor(given[i].data, requires_grad=True, name=given[i].name)
        with enable_grad():
            outs = _as_outputs(fn(*given), "gradgradcheck")
            roots, gos = [], []
            for k, v in zip(positions, vs):
                if outs[k].requires_grad:
                    roots.append(outs[k])
                    gos.append(v if isinstance(v, Tensor) else Tensor(v))
            targets = [given[i] for i in checked]
            if not roots:
                return tuple(Tensor(np.zeros_like(t.data)) for t in targets)
            grads = _grad(roots, targets, grad_outputs=gos, create_graph=True, allow_unused=True)
        return tuple(
            Tensor(np.zeros_like(t.data)) if g is None else (g if isinstance(g, Tensor) else Tensor(g))
            for t, g in zip(targets, grads)
        )

    v_args = [
        Tensor(v, requires_grad=check_grad_outputs and v.dtype.kind == "f", name=f"grad_outputs[{j}]")
        for j, v in enumerate(grad_outputs)
    ]
    _compare_with_plain_backward(fn, args, positions, grad_outputs, gradient_of_fn, v_args, consistency_rtol)
    extended = list(args.originals) + v_args
    try:
        return gradcheck(
            gradient_of_fn,
            extended,
            eps=eps,
            atol=atol,
            rtol=rtol,
            mode=mode,
            n_directions=n_directions,
            seed=seed,
            _order=2,
            _output_labels=[f"dL/d{args.names.get(i) or f'input{i}'}" for i in checked],
        )
    except GradcheckError:
        raise
    except ValueError as err:  # re-word precision refusals etc. in the user's terms
        raise ValueError(str(err).replace("gradcheck", "gradgradcheck")) from None


def _compare_with_plain_backward(fn, args, positions, grad_outputs, gradient_of_fn, v_args, consistency_rtol=None):
    """The create_graph gradient must equal the plain backward's: finite differences of the gradient
    alone would accept a differentiable_backward that is consistently wrong (say, twice too big), and at
    finite-difference tolerances one 0.1% off. Both are the same derivative computed in the same dtype, so
    the bound is round-off: ``consistency_rtol`` (default CONSISTENCY_ULPS eps of the dtype) times the
    largest entry of any checked input's gradient (an entry that cancels to ~0, like a bias gradient
    that softmax's shift invariance makes 0, keeps the round-off of the terms it cancelled from)."""
    call, leaves = args.call_args(requires_grad=True)
    with enable_grad():
        outputs = _as_outputs(fn(*call), "gradgradcheck")
    plain = _vjp(outputs, positions, leaves, grad_outputs)
    call, _ = args.call_args(requires_grad=True)
    created = [np.asarray(c.data, dtype=np.float64) for c in gradient_of_fn(*call, *[Tensor(v.data) for v in v_args])]
    if consistency_rtol is None:
        consistency_rtol = CONSISTENCY_ULPS * max(float(np.finfo(args.arrays[i].dtype).eps) for i in args.checked)
    scale = max((float(np.max(np.abs(p))) for p in plain if p.size), default=0.0)
    allowed = float(consistency_rtol) * scale
    for i, p, c in zip(args.checked, plain, created):
        ratio = _tolerance_ratio(c.ravel(), p.ravel(), allowed, 0.0)
        if ratio.size and ratio.max() > 1:
            j = int(np.argmax(ratio))
            element = tuple(int(e) for e in np.unravel_index(j, c.shape))
            ref = args.names.get(i) or f"input{i}"
            message = (
                f"gradgradcheck failed: the create_graph gradient of {args.describe(i)} differs from the "
                f"plain backward's, so some differentiable_backward disagrees with its backward.\n"
                f"  worst entry: d<v, outputs> / d {ref}{_index_str(element)}\n"
                f"  differentiable_backward {c.ravel()[j]:.17g}  backward {p.ravel()[j]:.17g}\n"
                f"  |diff| {abs(c.ravel()[j] - p.ravel()[j]):.3g} > consistency_rtol {consistency_rtol:g} * the largest "
                f"gradient entry {scale:.6g} (round-off: both compute the same derivative in {args.arrays[i].dtype})"
            )
            raise GradcheckError(
                message,
                input_index=i,
                input_name=args.names.get(i),
                element_index=element,
                output_index=None,
                analytic=float(c.ravel()[j]),
                numeric=float(p.ravel()[j]),
                order=2,
            )


def _scalar_output(fn, leaf, where):
    out = _as_outputs(fn(leaf), where)
    if len(out) != 1 or out[0].size != 1:
        shapes = [o.shape for o in out]
        raise ValueError(f"{where}: fn must return one single-element Tensor (a scalar loss), got shape(s) {shapes}")
    return out[0]


def _leaf_copy(x, where):
    data = x.data if isinstance(x, Tensor) else np.asarray(x)
    if data.dtype.kind != "f":
        raise TypeError(f"{where}: x must be a floating-point array, got dtype {data.dtype}")
    return Tensor(np.array(data, copy=True), requires_grad=True, name=getattr(x, "name", None))


def hessian(fn, x):
    """The Hessian of the scalar ``fn`` at ``x``, shape ``x.shape + x.shape``, by reverse over reverse.

    Row i is the vector-Jacobian product of the create-graph gradient with the basis vector e_i:
    ``H[i] = d(dfn/dx_i)/dx``. Needs ``differentiable_backward`` on every primitive fn uses.
    """

    def gradient(t):
        y = _scalar_output(fn, t, "hessian")
        g = _grad(y, t, create_graph=True, allow_unused=True) if y.requires_grad else None
        return Tensor(np.zeros_like(t.data)) if g is None else g

    x = x if isinstance(x, (Tensor, np.ndarray)) else np.asarray(x)
    if isinstance(x, Tensor) and not x.requires_grad:
        x = x.data
    return jacobian(gradient, x)


def hvp(fn, x, v):
    """The Hessian-vector product ``H v`` of the scalar ``fn`` at ``x`` (shape ``x.shape``).

    Reverse over reverse: g = dfn/dx recorded with ``create_graph=True``, then ``H v = d<g, v>/dx``,
    one more backward through g's graph; the Hessian itself is never formed.
    """
    leaf = _leaf_copy(x, "hvp")
    v = np.asarray(v.data if isinstance(v, Tensor) else v, dtype=leaf.dtype)
    if v.shape != leaf.shape:
        raise ValueError(f"hvp: v has shape {v.shape} but x has shape {leaf.shape}")
    with enable_grad():
        y = _scalar_output(fn, leaf, "hvp")
        if not y.requires_grad:
            return np.zeros_like(leaf.data)
        g = _grad(y, leaf, create_graph=True, allow_unused=True)
        if g is None or not isinstance(g, Tensor) or not g.requires_grad:
            return np.zeros_like(leaf.data)
        hv = _grad(g, leaf, grad_outputs=v, allow_unused=True)
    return np.zeros_like(leaf.data) if hv is None else hv


def numerical_hessian(fn, x, eps=None):
    """Central differences of the (first-order, plain backward) gradient of the scalar ``fn``.

    ``H[..., j] ~ (grad fn(x + h e_j) - grad fn(x - h e_j)) / 2h``, shape ``x.shape + x.shape``,
    float64. It uses only each primitive's ``backward``, never ``differentiable_backward``, so it is
    an independent reference for :func:`hessian`.
    """
    _check_settings("numerical_hessian", eps)
    base = _leaf_copy(x, "numerical_hessian").data
    if eps is None:
        eps = DEFAULT_EPS_LOW_PRECISION if base.dtype.itemsize < 8 else DEFAULT_EPS

    def plain_gradient(point):
        leaf = Tensor(point, requires_grad=True)
        with enable_grad():
            y = _scalar_output(fn, leaf, "numerical_hessian")
            if not y.requires_grad:
                return np.zeros(point.shape)
            g = _grad(y, leaf, allow_unused=True)
        return np.zeros(point.shape) if g is None else np.asarray(g, dtype=np.float64)

    flat = base.reshape(-1)
    columns = []
    for j in range(base.size):
        delta = np.zeros(base.size)
        delta[j] = eps
        plus, minus, step = _perturbed(flat, delta)
        columns.append(
            (plain_gradient(plus.reshape(base.shape)) - plain_gradient(minus.reshape(base.shape))).ravel() / step[j]
        )
    return np.array(columns).T.reshape(base.shape + base.shape)
