"""Checkpoints: bit-exact round trip (weights, optimizer moments, schedule, RNG streams, training state), atomic
replacement (a crash mid-write leaves the previous checkpoint intact), clear errors for truncated/foreign/pickled files
and mismatched configs, and no code execution on load; averaging; the manager's pruning and best tracking."""

import pickle
import random
from pathlib import Path

import numpy as np
import pytest

import npgrad as ng
from npgrad import optim
from transformer import checkpoint as ckpt
from transformer import files
from transformer.checkpoint import CheckpointError, CheckpointManager, load_checkpoint, save_checkpoint
from transformer.model import Transformer, TransformerConfig

V = 17


def tiny_config(**overrides):
    fields = dict(
        src_vocab_size=V,
        tgt_vocab_size=V,
        d_model=16,
        n_heads=2,
        num_encoder_layers=1,
        num_decoder_layers=1,
        d_ff=24,
        dropout=0.1,
        dtype="float32",
        max_len=16,
        seed=4,
    )
    fields.update(overrides)
    return TransformerConfig(**fields)


@pytest.fixture(scope="module", autouse=True)
def numpy_backend():
    with ng.use_backend("numpy"):
        yield


@pytest.fixture
def trained(tmp_path):
    """A tiny model after two Adam steps (so the moments are non-trivial), with its optimizer and schedule."""
    cfg = tiny_config()
    model = Transformer(cfg)
    opt = optim.Adam(model.named_parameters(), lr=1e-3)
    schedule = optim.InverseSqrtSchedule(opt, d_model=16, warmup_steps=4)
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(4, V, (3, 5)), rng.integers(4, V, (3, 6))
    for _ in range(2):
        opt.zero_grad()
        model.loss(model.forward(src, tgt[:, :-1]), tgt[:, 1:]).backward()
        opt.step()
        schedule.step()
    return cfg, model, opt, schedule


def _states_equal(a, b):
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes(), key  # bit-exact, NaN-safe


def test_round_trip_is_bit_exact(tmp_path, trained):
    cfg, model, opt, schedule = trained
    data_rng, legacy, py = np.random.default_rng(123), np.random.RandomState(5), random.Random(9)
    data_rng.random(3), legacy.rand(2), py.random()  # mid-stream states
    train_state = {
        "step": 2,
        "epoch": 0,
        "batch_in_epoch": 17,
        "best_bleu": float("nan"),
        "big": 2**100 + 1,
        "lr": np.float32(0.1),
        "shape": (3, 4),
        "by_id": {7: "seven", (1, 2): [1.5, -0.0]},
        "order": np.arange(5, dtype=np.int32),
        "__weird_key__": None,
    }
    tokenizer = tmp_path / "spm.model"
    tokenizer.write_bytes(b"\x00tokenizer bytes\xff")
    path = save_checkpoint(
        tmp_path / "ck",
        model,
        cfg,
        optimizer=opt,
        scheduler=schedule,
        train_state=train_state,
        rng_states={"data": data_rng, "legacy": legacy, "python": py, "dropout": model.rng_state_dict()},
        extra_files={"spm.model": tokenizer},
    )
    loaded = load_checkpoint(path)

    _states_equal(loaded.model_state, model.state_dict())
    assert loaded.config == cfg.to_dict()
    saved_opt = opt.state_dict()
    _states_equal(loaded.optimizer_state["arrays"], saved_opt["arrays"])
    assert {k: v for k, v in loaded.optimizer_state.items() if k != "arrays"} == {
        k: v for k, v in saved_opt.items() if k != "arrays"
    }
    assert loaded.scheduler_state == schedule.state_dict()

    ts = loaded.train_state
    assert ts["big"] == 2**100 + 1 and np.isnan(ts["best_bleu"]) and ts["shape"] == (3, 4)
    assert type(ts["lr"]) is np.float32 and ts["lr"] == np.float32(0.1)
    assert ts["by_id"] == {7: "seven", (1, 2): [1.5, -0.0]} and ts["__weird_key__"] is None
    assert ts["order"].dtype == np.int32 and ts["order"].tolist() == list(range(5))
    assert loaded.extra_files["spm.model"].read_bytes() == tokenizer.read_bytes()

    # RNG streams continue exactly where they were saved.
    expected = (data_rng.random(4), legacy.rand(4), [py.random() for _ in range(4)])
    np.testing.assert_array_equal(loaded.make_rng("data").random(4), expected[0])
    np.testing.assert_array_equal(loaded.restore_rng("data", np.random.default_rng(999)).random(4), expected[0])
    np.testing.assert_array_equal(loaded.restore_rng("legacy", np.random.RandomState()).rand(4), expected[1])
    assert [loaded.restore_rng("python", random.Random()).random() for _ in range(1)] == expected[2][:1]
    assert loaded.rng_states["dropout"]["state"] == model.rng_state_dict()


def test_restore_into_fresh_objects_continues_training_identically(tmp_path, trained):
    cfg, model, opt, schedule = trained
    save_checkpoint(tmp_path / "ck", model, cfg, optimizer=opt, scheduler=schedule)
    model2 = Transformer(tiny_config(seed=99))  # different initial weights
    opt2 = optim.Adam(model2.named_parameters(), lr=5.0)
    schedule2 = type(schedule)(
        opt2, **{k: v for k, v in schedule.state_dict().items() if k not in ("type", "step_num")}
    )
    load_checkpoint(tmp_path / "ck").restore(model2, opt2, schedule2)
    rng = np.random.default_rng(1)
    src, tgt = rng.integers(4, V, (2, 4)), rng.integers(4, V, (2, 5))
    for m, o, s in ((model, opt, schedule), (model2, opt2, schedule2)):
        m.eval()
        o.zero_grad()
        m.loss(m.forward(src, tgt[:, :-1]), tgt[:, 1:]).backward()
        o.step()
        s.step()
    _states_equal(model.state_dict(), model2.state_dict())
    assert opt.lr == opt2.lr


def test_mismatched_config_is_a_clear_error(tmp_path, trained):
    cfg, model, opt, _ = trained
    save_checkpoint(tmp_path / "ck", model, cfg)
    other = Transformer(tiny_config(d_model=8, d_ff=12))
    with pytest.raises(CheckpointError, match=r"d_model: checkpoint 16, model 8"):
        load_checkpoint(tmp_path / "ck").restore(other)
    with pytest.raises(CheckpointError, match=r"d_ff: checkpoint 24, model 12"):
        load_checkpoint(tmp_path / "ck", expected_config=tiny_config(d_model=8, d_ff=12))
    # dropout is a training choice, not part of the architecture: ignored by default.
    load_checkpoint(tmp_path / "ck", expected_config=tiny_config(dropout=0.3)).restore(
        Transformer(tiny_config(dropout=0.3))
    )


def test_crash_mid_write_leaves_previous_checkpoint_intact(tmp_path, trained, monkeypatch):
    cfg, model, opt, _ = trained
    path = save_checkpoint(tmp_path / "ck", model, cfg, optimizer=opt, train_state={"step": 1})
    before = model.state_dict()
    for p in model.parameters():
        p.data += 1.0
    original = ckpt._write_safetensors

    def crash_on_optimizer(file, tensors, kind):
        original(file, tensors, kind)
        if kind == "optimizer":
            raise KeyboardInterrupt("simulated crash after the new weights were written")

    monkeypatch.setattr(ckpt, "_write_safetensors", crash_on_optimizer)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, cfg, optimizer=opt, train_state={"step": 2})
    loaded = load_checkpoint(path)
    _states_equal(loaded.model_state, before)
    assert loaded.train_state == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ck"], "the temporary directory must be cleaned up"


@pytest.mark.parametrize("exchange", [True, False])
def test_replacing_a_checkpoint(tmp_path, trained, monkeypatch, exchange):
    cfg, model, opt, _ = trained
    if not exchange:
        monkeypatch.setattr(files, "_rename_exchange", lambda a, b: False)  # the two-rename fallback
    path = save_checkpoint(tmp_path / "ck", model, cfg, train_state={"step": 1})
    save_checkpoint(path, model, cfg, train_state={"step": 2})
    assert load_checkpoint(path).train_state == {"step": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_crash_between_the_two_fallback_renames_is_explained(tmp_path, trained, monkeypatch):
    cfg, model, _, _ = trained
    path = save_checkpoint(tmp_path / "ck", model, cfg)
    monkeypatch.setattr(files, "_rename_exchange", lambda a, b: False)
    real_rename, calls = files.os.rename, []

    def rename_then_crash(a, b):
        calls.append((a, b))
        if len(calls) == 2:
            raise OSError("simulated power loss")
        real_rename(a, b)

    monkeypatch.setattr(files.os, "rename", rename_then_crash)
    with pytest.raises(OSError):
        save_checkpoint(path, model, cfg)
    monkeypatch.setattr(files.os, "rename", real_rename)
    with pytest.raises(FileNotFoundError, match=r"interrupted save left the previous checkpoint at .*\.ck\.old-"):
        load_checkpoint(path)
    old = next(tmp_path.glob(".ck.old-*"))
    old.rename(path)
    load_checkpoint(path)


def test_refuses_to_overwrite_a_directory_that_is_not_a_checkpoint(tmp_path, trained):
    cfg, model, _, _ = trained
    precious = tmp_path / "data"
    precious.mkdir()
    (precious / "corpus.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a checkpoint directory"):
        save_checkpoint(precious, model, cfg)
    assert (precious / "corpus.txt").read_text() == "keep me"


class _Payload:
    """Unpickling this would create a file: proof that loading never unpickles."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _corrupt(path, how, tmp_path):
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 40])
    elif how == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(300))
    elif how == "pickle":
        path.write_bytes(pickle.dumps({"w": _Payload(tmp_path / "pwned")}))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "missing":
        path.unlink()
    elif how == "bitflip":
        data = bytearray(path.read_bytes())
        data[-1] ^= 1
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("file", ["model.safetensors", "optimizer.safetensors"])
@pytest.mark.parametrize(
    "how,match",
    [
        ("truncated", "truncated"),
        ("garbage", "truncated or not safetensors|not a safetensors file"),
        ("pickle", "Python pickle; refusing"),
        ("empty", "truncated"),
        ("missing", "file is missing"),
        ("bitflip", "checksum mismatch"),
    ],
)
def test_broken_weight_files_raise_errors_naming_the_file(tmp_path, trained, file, how, match):
    cfg, model, opt, _ = trained
    path = save_checkpoint(tmp_path / "ck", model, cfg, optimizer=opt)
    _corrupt(path / file, how, tmp_path)
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert file in str(info.value)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "how,match",
    [
        ("truncated", "not valid JSON"),
        ("garbage", "not valid JSON"),
        ("pickle", "Python pickle"),
        ("missing", "file is missing"),
    ],
)
def test_broken_manifest_raises_errors_naming_the_file(tmp_path, trained, how, match):
    cfg, model, _, _ = trained
    path = save_checkpoint(tmp_path / "ck", model, cfg)
    _corrupt(path / "checkpoint.json", how, tmp_path)
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert "checkpoint.json" in str(info.value)
    assert not (tmp_path / "pwned").exists()


def test_foreign_json_and_changed_extra_file(tmp_path, trained):
    cfg, model, _, _ = trained
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("a\nb\n")
    path = save_checkpoint(tmp_path / "ck", model, cfg, extra_files={"vocab.txt": vocab})
    (path / "vocab.txt").write_text("a\nc\n")
    with pytest.raises(CheckpointError, match=r"vocab\.txt.*checksum"):
        load_checkpoint(path)
    (path / "checkpoint.json").write_text('{"hello": "world"}')
    with pytest.raises(CheckpointError, match="not an npgrad checkpoint manifest"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_save_argument_errors(tmp_path, trained):
    cfg, model, _, _ = trained
    with pytest.raises(ValueError, match="plain file name"):
        save_checkpoint(tmp_path / "ck", model, cfg, extra_files={"../escape": tmp_path})
    with pytest.raises(TypeError, match=r"train_state\.fn of type function"):
        save_checkpoint(tmp_path / "ck", model, cfg, train_state={"fn": lambda: 0})
    with pytest.raises(TypeError, match="rng_states"):
        save_checkpoint(tmp_path / "ck", model, cfg, rng_states={"x": 3})
    assert not list(tmp_path.iterdir())


def test_average_checkpoints(tmp_path, trained):
    cfg, model, _, _ = trained
    states = []
    for i in range(3):
        for p in model.parameters():
            p.data += np.float32(0.5 * i)
        states.append(model.state_dict())
        save_checkpoint(tmp_path / f"c{i}", model, cfg)
    averaged = ckpt.average_checkpoints([tmp_path / f"c{i}" for i in range(3)])
    for key, value in averaged.items():
        expected = (sum(s[key].astype(np.float64) for s in states) / 3).astype(np.float32)
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, expected)
    other = Transformer(tiny_config(d_ff=12))
    save_checkpoint(tmp_path / "odd", other, tiny_config(d_ff=12))
    with pytest.raises(CheckpointError, match="shape"):
        ckpt.average_checkpoints([tmp_path / "c0", tmp_path / "odd"])
    save_checkpoint(tmp_path / "fewer", {"only": np.zeros(2, np.float32)}, cfg)
    with pytest.raises(CheckpointError, match="missing"):
        ckpt.average_checkpoints([tmp_path / "c0", tmp_path / "fewer"])


def test_manager_keeps_last_n_and_the_best(tmp_path, trained):
    cfg, model, _, _ = trained
    manager = CheckpointManager(tmp_path / "run", keep_last=2, mode="min")
    losses = {100: 3.0, 200: 1.0, 300: 2.0, 400: 2.5, 500: 4.0}
    for step, loss in losses.items():
        manager.save(step, model, cfg, metric=loss, train_state={"step": step})
    steps = [info.step for info in manager.checkpoints()]
    assert steps == [200, 400, 500]  # best (200) + last two
    assert manager.best() == manager.path_for(200) and manager.last() == manager.path_for(500)
    assert manager.load_best().train_state == {"step": 200}
    assert manager.load_last().train_state == {"step": 500}
    manager.save(600, model, cfg, metric=0.5)
    assert [info.step for info in manager.checkpoints()] == [500, 600]  # the new best is also the last
    assert manager.average_last(2).keys() == model.state_dict().keys()
    # A leftover temporary directory or an unreadable checkpoint never breaks the listing.
    (tmp_path / "run" / ".step-000000700.tmp-x").mkdir()
    (tmp_path / "run" / "step-000000800").mkdir()
    with pytest.warns(UserWarning, match="skipping"):
        assert [info.step for info in manager.checkpoints()] == [500, 600]


def test_a_run_directory_resolves_to_the_best_checkpoint_in_the_direction_the_run_ranked(tmp_path, trained):
    # An encoder-decoder ranked by perplexity (a dialogue run: lower is better) and one ranked by BLEU (higher) have
    # the same kind of model; --checkpoint RUN must follow the direction each run recorded, not guess it from the model.
    cfg, model, _, _ = trained
    for mode, expected in (("min", 200), ("max", 300)):
        manager = CheckpointManager(tmp_path / mode / "checkpoints", keep_last=5, mode=mode)
        for step, metric in ((100, 33.0), (200, 31.25), (300, 40.0)):
            manager.save(step, model, cfg, metric=metric)
        assert all(info.mode == mode for info in manager.checkpoints())
        assert ckpt.resolve_checkpoint(tmp_path / mode) == manager.path_for(expected)


def test_a_safetensors_header_that_starts_like_a_pickle_is_read(tmp_path):
    # The header length is little-endian: 0x0380 = 896 bytes starts with the bytes 0x80 0x03, a pickle's opening.
    # Such a real checkpoint must load (it once was refused as "a Python pickle").
    from safetensors.numpy import save_file

    from transformer.checkpoint import _read_safetensors

    for extra in range(0, 400):
        path = tmp_path / "w.safetensors"
        save_file(
            {"w" * (1 + extra % 50) + str(extra): np.zeros(1, np.float32)}, str(path), metadata={"pad": "x" * extra}
        )
        data = path.read_bytes()
        if data[0] == 0x80 and 1 <= data[1] <= 5:
            break
    else:
        pytest.skip("no header length of the pickle-like form was produced")
    arrays = _read_safetensors(path)
    assert list(arrays.values())[0].tolist() == [0.0]
