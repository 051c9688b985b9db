"""npgrad.nn: registration, state dicts, modes, initialisation statistics and seeding, layers'
forward/backward against plain NumPy, and a tiny MLP that learns."""

import json

import numpy as np
import pytest

import npgrad as ng
from npgrad import functional as F
from npgrad import nn, optim


class Block(nn.Module):
    def __init__(self, dim, rng, dtype=np.float64):
        super().__init__()
        self.proj = nn.Linear(dim, dim, rng=rng, dtype=dtype)
        self.norm = nn.LayerNorm(dim, dtype=dtype)
        self.drop = nn.Dropout(0.5, rng=rng)

    def forward(self, x):
        return self.drop(self.norm(self.proj(x)))


class TiedModel(nn.Module):
    """Embedding -> blocks -> output projection tied to the embedding (as in the Transformer)."""

    def __init__(self, vocab=11, dim=6, seed=0, dtype=np.float64):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.embed = nn.Embedding(vocab, dim, padding_idx=0, rng=rng, dtype=dtype)
        self.blocks = nn.ModuleList([Block(dim, rng, dtype) for _ in range(2)])
        self.head = nn.Module()
        self.head.weight = self.embed.weight  # shared: one Parameter, two names
        table = np.arange(4 * dim, dtype=dtype).reshape(4, dim)
        self.register_buffer("positions", table)
        self.register_buffer("cache", np.zeros(3, dtype=dtype), persistent=False)

    def forward(self, ids):
        x = self.embed(ids) + self.positions[: ids.shape[-1]]
        for block in self.blocks:
            x = block(x)
        return x @ self.head.weight.T


# ---------------------------------------------------------------------------------- registration
def test_parameters_are_registered_in_order_with_dotted_names():
    model = TiedModel()
    names = [n for n, _ in model.named_parameters()]
    assert names == [
        "embed.weight",
        "blocks.0.proj.weight",
        "blocks.0.proj.bias",
        "blocks.0.norm.weight",
        "blocks.0.norm.bias",
        "blocks.1.proj.weight",
        "blocks.1.proj.bias",
        "blocks.1.norm.weight",
        "blocks.1.norm.bias",
    ]
    assert [n for n, _ in model.named_parameters(prefix="model")][0] == "model.embed.weight"
    assert [n for n, _ in model.named_children()] == ["embed", "blocks", "head"]
    assert [n for n, _ in model.named_modules()][:4] == ["", "embed", "blocks", "blocks.0"]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in model.parameters())


def test_shared_parameters_are_counted_once_but_saved_under_every_name():
    model = TiedModel(vocab=11, dim=6)
    params = list(model.parameters())
    assert len(params) == len({id(p) for p in params}) == 9
    assert model.num_parameters() == 11 * 6 + 2 * (6 * 6 + 6 + 6 + 6)
    sd = model.state_dict()
    assert "head.weight" in sd and "embed.weight" in sd  # both aliases saved
    assert np.array_equal(sd["head.weight"], sd["embed.weight"])
    assert len(optim.Adam(model.parameters()).params) == 9  # the optimizer sees it once


def test_reassigning_and_deleting_attributes():
    lin = nn.Linear(3, 2, rng=0)
    lin.bias = None  # keeps the slot, drops it
    assert [n for n, _ in lin.named_parameters()] == ["weight"]
    with pytest.raises(TypeError, match=r"Linear.weight is a parameter: assign an nn.Parameter or None"):
        lin.weight = ng.tensor(np.zeros((3, 2)))
    lin.extra = nn.Linear(2, 2, rng=0)
    del lin.extra
    assert [n for n, _ in lin.named_modules()] == [""]
    lin.note = "plain attribute"  # not registered
    assert "note" not in dict(lin.named_parameters())


def test_forgetting_super_init_is_explained():
    class Broken(nn.Module):
        def __init__(self):
            self.lin = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"):
        Broken()


def test_parameter_refuses_integer_data():
    with pytest.raises(TypeError, match="floating-point"):
        nn.Parameter(np.arange(3))
    assert nn.Parameter(np.zeros(2, dtype=np.float32)).dtype == np.float32


def test_repr_shows_the_tree():
    text = repr(TiedModel())
    assert "(embed): Embedding(11, 6, padding_idx=0)" in text
    assert "(proj): Linear(in_features=6, out_features=6, bias=True)" in text
    assert "(drop): Dropout(p=0.5)" in text
    assert text.startswith("TiedModel(\n") and text.endswith(")")


def test_apply_visits_every_module_children_first():
    model = TiedModel()
    seen = []
    model.apply(lambda m: seen.append(type(m).__name__))
    assert seen[-1] == "TiedModel"
    assert seen.count("Linear") == 2 and seen.count("Dropout") == 2


# ---------------------------------------------------------------------------------- modes, grads
def test_train_and_eval_propagate_to_every_module():
    model = TiedModel()
    assert all(m.training for m in model.modules())
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model.blocks.train()
    assert all(m.training for m in model.blocks.modules()) and not model.training and not model.embed.training
    with pytest.raises(TypeError):
        model.train("no")


def test_zero_grad_clears_every_gradient():
    model = TiedModel()
    model(np.array([[1, 2, 0]])).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------------------- state dicts
def test_state_dict_round_trip_is_bit_exact_and_holds_copies():
    a, b = TiedModel(seed=1), TiedModel(seed=2)
    sd = a.state_dict()
    assert list(sd) == [
        "positions",
        "embed.weight",
        "blocks.0.proj.weight",
        "blocks.0.proj.bias",
        "blocks.0.norm.weight",
        "blocks.0.norm.bias",
        "blocks.1.proj.weight",
        "blocks.1.proj.bias",
        "blocks.1.norm.weight",
        "blocks.1.norm.bias",
        "head.weight",
    ]
    assert "cache" not in sd  # non-persistent buffer
    assert not all(np.array_equal(x, y) for x, y in zip(sd.values(), b.state_dict().values()))
    result = b.load_state_dict(sd)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for (k, x), (k2, y) in zip(sd.items(), b.state_dict().items()):
        assert k == k2 and x.dtype == y.dtype and x.tobytes() == y.tobytes()
    a.blocks[0].proj.weight.data += 1.0  # later changes ...
    assert not np.array_equal(a.blocks[0].proj.weight.data, sd["blocks.0.proj.weight"])  # ... don't leak
    ids = np.array([[3, 4, 0, 5]])
    a.load_state_dict(sd)
    a.eval(), b.eval()
    assert np.array_equal(a(ids).data, b(ids).data)


def test_load_state_dict_names_missing_unexpected_and_mis_shaped_keys_at_once():
    model = TiedModel()
    before = model.state_dict()
    sd = model.state_dict()
    del sd["blocks.1.norm.bias"], sd["positions"]
    sd["blocks.2.proj.weight"] = np.zeros((6, 6))
    sd["blocks.0.proj.weight"] = np.zeros((6, 7))
    sd["blocks.1.proj.bias"] = np.ones(6)  # fits, but must not load
    with pytest.raises(nn.StateDictError) as info:
        model.load_state_dict(sd)
    message = str(info.value)
    assert "missing keys" in message and "'blocks.1.norm.bias'" in message and "'positions'" in message
    assert "unexpected keys" in message and "'blocks.2.proj.weight'" in message
    assert "'blocks.0.proj.weight': the model expects shape (6, 6), the state dict has (6, 7)" in message
    for k, v in model.state_dict().items():  # nothing was loaded
        assert np.array_equal(v, before[k])


def test_load_state_dict_non_strict_reports_what_it_skipped():
    model = TiedModel()
    sd = {"embed.weight": np.full((11, 6), 2.0), "extra": np.zeros(1)}
    result = model.load_state_dict(sd, strict=False)
    assert result.unexpected_keys == ["extra"] and "positions" in result.missing_keys
    assert np.all(model.embed.weight.data == 2.0) and model.head.weight is model.embed.weight
    with pytest.raises(nn.StateDictError, match="mis-shaped"):  # shapes are never optional
        model.load_state_dict({"embed.weight": np.zeros((6, 11))}, strict=False)


def test_load_state_dict_refuses_aliases_of_a_shared_parameter_that_disagree():
    model = TiedModel()
    sd = model.state_dict()
    sd["head.weight"] = sd["head.weight"] + 1.0
    with pytest.raises(nn.StateDictError, match="'embed.weight' and 'head.weight' name one shared parameter"):
        model.load_state_dict(sd)


def test_load_state_dict_into_read_only_arrays():
    model = TiedModel()
    frozen = model.blocks[0].proj.bias.data.copy()
    frozen.flags.writeable = False
    model.blocks[0].proj.bias.data = frozen
    model.load_state_dict(dict(model.state_dict(), **{"blocks.0.proj.bias": np.full(6, 3.0)}))
    assert np.all(model.blocks[0].proj.bias.data == 3.0) and model.blocks[0].proj.bias.data.flags.writeable


def test_load_state_dict_casts_to_the_parameter_dtype():
    model32 = TiedModel(dtype=np.float32, seed=3)
    model64 = TiedModel(dtype=np.float64, seed=4)
    model32.load_state_dict(model64.state_dict())
    for (name, p32), (_, p64) in zip(model32.state_dict().items(), model64.state_dict().items()):
        assert p32.dtype == np.float32, name
        assert np.array_equal(p32, p64.astype(np.float32)), name
    with pytest.raises(nn.StateDictError, match="'positions': dtype <U1"):
        model32.load_state_dict(dict(model32.state_dict(), positions=np.full((4, 6), "x")))


def test_buffers_follow_to_dtype_and_integer_buffers_stay():
    model = TiedModel(dtype=np.float64)
    model.register_buffer("ids", np.arange(3))
    arr = model.embed.weight.data.copy()
    assert model.to_dtype(np.float32) is model
    assert all(p.dtype == np.float32 for p in model.parameters())
    assert model.positions.dtype == np.float32 and model.cache.dtype == np.float32
    assert model.ids.dtype == np.int64
    assert np.array_equal(model.embed.weight.data, arr.astype(np.float32))
    assert model.head.weight is model.embed.weight  # sharing survives
    with pytest.raises(TypeError, match="float32 or np.float64"):
        model.to_dtype(np.int32)


def test_register_buffer_checks_its_input():
    m = nn.Module()
    with pytest.raises(TypeError, match="expected an np.ndarray"):
        m.register_buffer("table", [1, 2])
    with pytest.raises(KeyError, match="without '.'"):
        m.register_buffer("a.b", np.zeros(1))
    m.register_buffer("table", np.zeros(2))
    with pytest.raises(TypeError, match="is a buffer"):
        m.table = "text"
    m.table = np.ones(2)
    assert np.array_equal(m.state_dict()["table"], np.ones(2))


# ---------------------------------------------------------------------------------- initialisation
def test_linear_is_glorot_uniform_with_zero_bias():
    fan_in, fan_out = 300, 200
    lin = nn.Linear(fan_in, fan_out, rng=np.random.default_rng(0))
    w = lin.weight.data.astype(np.float64)
    bound = np.sqrt(6.0 / (fan_in + fan_out))
    assert lin.weight.shape == (fan_in, fan_out) and lin.weight.dtype == np.float32
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert abs(w.mean()) < 0.01 * bound
    assert w.var() == pytest.approx(2.0 / (fan_in + fan_out), rel=0.03)
    assert np.array_equal(lin.bias.data, np.zeros(fan_out, dtype=np.float32))


def test_embedding_is_scaled_normal_with_a_zero_padding_row():
    emb = nn.Embedding(400, 256, padding_idx=-1, rng=1)
    w = emb.weight.data.astype(np.float64)
    assert emb.padding_idx == 399 and np.all(w[399] == 0)
    assert w[:399].std() == pytest.approx(256**-0.5, rel=0.02)
    assert abs(w[:399].mean()) < 0.01 * 256**-0.5
    assert nn.Embedding(400, 64, init_std=0.02, rng=1).weight.data.std() == pytest.approx(0.02, rel=0.02)


def test_same_seed_same_weights_across_builds_and_dtypes():
    sd1 = TiedModel(seed=5).state_dict()
    sd2 = TiedModel(seed=5).state_dict()
    sd3 = TiedModel(seed=6).state_dict()
    sd32 = TiedModel(seed=5, dtype=np.float32).state_dict()
    assert all(np.array_equal(sd1[k], sd2[k]) for k in sd1)
    assert not np.array_equal(sd1["embed.weight"], sd3["embed.weight"])
    assert all(np.array_equal(sd1[k].astype(np.float32), sd32[k]) for k in sd1)


def test_manual_seed_makes_default_initialisation_reproducible():
    def build():
        return nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.3), nn.Linear(5, 2))

    nn.manual_seed(11)
    a = build()
    nn.manual_seed(11)
    b = build()
    c = build()  # the stream went on: different weights
    assert all(np.array_equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not np.array_equal(a[0].weight.data, c[0].weight.data)
    assert a.rng_state_dict() == b.rng_state_dict() != c.rng_state_dict()


def test_constructor_arguments_are_checked():
    with pytest.raises(ValueError, match="in_features must be a positive integer"):
        nn.Linear(0, 3)
    with pytest.raises(TypeError, match="rng must be an np.random.Generator"):
        nn.Linear(2, 3, rng="seed")
    with pytest.raises(ValueError, match="padding_idx"):
        nn.Embedding(5, 2, padding_idx=5)
    with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\]"):
        nn.Dropout(1.5)
    with pytest.raises(TypeError, match="dtype must be np.float32 or np.float64"):
        nn.LayerNorm(4, dtype=np.float16)


# ---------------------------------------------------------------------------------- layers
def test_linear_forward_and_gradients_are_x_at_w_plus_b():
    lin = nn.Linear(4, 3, rng=0, dtype=np.float64)
    x = np.random.default_rng(1).standard_normal((2, 5, 4))
    out = lin(ng.tensor(x))
    np.testing.assert_allclose(out.data, x @ lin.weight.data + lin.bias.data, rtol=1e-13)
    out.sum().backward()
    np.testing.assert_allclose(lin.weight.grad, x.reshape(-1, 4).T @ np.ones((10, 3)), rtol=1e-13)
    np.testing.assert_allclose(lin.bias.grad, np.full(3, 10.0))
    assert nn.Linear(4, 3, bias=False)(ng.tensor(np.ones((1, 4), np.float32))).dtype == np.float32


def test_embedding_lookup_and_padding_row_gets_no_gradient():
    emb = nn.Embedding(6, 3, padding_idx=0, rng=0, dtype=np.float64)
    ids = np.array([[1, 0, 4], [4, 4, 0]])
    out = emb(ids)
    np.testing.assert_array_equal(out.data, emb.weight.data[ids])
    assert np.all(out.data[ids == 0] == 0)
    out.backward(np.ones((2, 3, 3)))
    np.testing.assert_array_equal(emb.weight.grad[:, 0], [0, 1, 0, 0, 3, 0])
    optimizer = optim.Adam(emb.parameters(), lr=0.1)
    optimizer.step()
    assert np.all(emb.weight.data[0] == 0)  # the padding row stays zero under training


def test_layer_norm_module():
    ln = nn.LayerNorm(5, dtype=np.float64)
    ln.weight.data[:] = 2.0
    ln.bias.data[:] = 0.5
    x = np.random.default_rng(0).standard_normal((3, 5))
    expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * 2.0 + 0.5
    np.testing.assert_allclose(ln(ng.tensor(x)).data, expected, rtol=1e-12)


def test_dropout_is_identity_in_eval_and_seeded_in_training():
    x = ng.tensor(np.ones((50, 40)))
    drop = nn.Dropout(0.25, rng=3)
    drop.eval()
    assert drop(x) is x
    drop.train()
    state = drop.rng.bit_generator.state
    first = drop(x).data
    assert set(np.unique(first)) == {0.0, 1.0 / 0.75}
    assert abs((first == 0).mean() - 0.25) < 0.05
    second = drop(x).data
    assert not np.array_equal(first, second)  # the stream moves on
    drop.rng.bit_generator.state = state  # a checkpoint restores it ...
    assert np.array_equal(drop(x).data, first)  # ... and the masks repeat exactly


def test_rng_state_dict_round_trip_through_json():
    model = TiedModel(seed=0)
    ids = np.array([[1, 2, 3, 4]])
    model(ids)
    saved = json.loads(json.dumps(model.rng_state_dict()))
    assert set(saved) == {"blocks.0.drop", "blocks.1.drop"}
    after = model(ids).data
    model(ids)
    model.load_rng_state_dict(saved)
    assert np.array_equal(model(ids).data, after)
    with pytest.raises(nn.StateDictError, match="missing generators"):
        model.load_rng_state_dict({})


def test_containers():
    seq = nn.Sequential(nn.Linear(3, 4, rng=0), nn.ReLU(), nn.Linear(4, 2, rng=1))
    x = ng.tensor(np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32))
    expected = seq[2](seq[1](seq[0](x))).data
    np.testing.assert_array_equal(seq(x).data, expected)
    assert len(seq) == 3 and isinstance(seq[1:], nn.Sequential) and len(seq[1:]) == 2
    assert seq[-1] is seq[2]
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    with pytest.raises(IndexError, match="out of range"):
        seq[3]
    layers = nn.ModuleList()
    layers.append(nn.LayerNorm(2)).extend([nn.LayerNorm(2)])
    assert [n for n, _ in layers.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    heads = nn.ModuleDict({"src": nn.Linear(2, 2, rng=0), "tgt": nn.Linear(2, 2, rng=1)})
    assert list(heads) == ["src", "tgt"] and "src" in heads
    assert [n for n, _ in heads.named_parameters()][0] == "src.weight"


# ---------------------------------------------------------------------------------- learning
class MLP(nn.Module):
    def __init__(self, rng):
        super().__init__()
        self.fc1 = nn.Linear(2, 32, rng=rng, dtype=np.float64)
        self.fc2 = nn.Linear(32, 2, rng=rng, dtype=np.float64)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


def test_a_tiny_mlp_learns_xor_like_classes_with_adam():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(128, 2))
    y = ((x[:, 0] > 0) != (x[:, 1] > 0)).astype(np.int64)  # not linearly separable
    model = MLP(rng)
    opt = optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = F.cross_entropy(model(ng.tensor(x)), y)
        loss.backward()
        optim.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]
    accuracy = (model(ng.tensor(x)).data.argmax(-1) == y).mean()
    assert accuracy > 0.9
