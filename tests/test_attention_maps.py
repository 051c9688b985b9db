"""``translate --attention DIR`` and ``lm-sample --attention DIR`` on tiny models trained here: one NNNN.npz + NNNN.png
per input line, arrays whose shapes match the sub-word token counts, pieces that spell the source and the
translation, and clear errors (existing files without --overwrite, an LM window too long)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from test_cli import FIXTURES, assert_clean_error, config_args, run  # noqa: E402
from test_lm import write_config  # noqa: E402

from transformer import cli  # noqa: E402
from transformer.tokenizer import load_tokenizers  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny translation run after 2 training steps."""
    directory = tmp_path_factory.mktemp("attention_run")
    assert cli.main(["train", *config_args(directory, "train.max_steps=2", "train.validate_every=2")]) == 0
    return directory


@pytest.mark.parametrize("beam", [1, 3])
def test_translate_writes_one_map_per_line_with_the_token_counts(run_dir, tmp_path, capsys, beam):
    sources = (FIXTURES / "tiny.de").read_text(encoding="utf-8").splitlines()[:2]
    lines = [sources[0], "", sources[1]]  # an empty line gets no map, and keeps its number
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    maps = tmp_path / "maps"
    args = ["translate", "--checkpoint", run_dir, "--input", tmp_path / "in.txt", "--beam", beam]
    code, plain, err = run(capsys, *args)
    assert code == 0, err
    code, out, err = run(capsys, *args, "--attention", maps)
    assert code == 0, err
    assert out == plain  # the maps change nothing in the translations
    translations = out.splitlines()
    assert sorted(p.name for p in maps.iterdir()) == [f"{n:04d}.{e}" for n in (0, 2) for e in ("npz", "png")]
    src_tok, tgt_tok = load_tokenizers(run_dir / "tokenizer")
    layers, heads = 1, 2
    for number in (0, 2):
        assert (maps / f"{number:04d}.png").read_bytes()[:8] == PNG_MAGIC
        assert 2_000 < (maps / f"{number:04d}.png").stat().st_size < 400_000
        with np.load(maps / f"{number:04d}.npz") as arrays:
            S = len(src_tok.encode([lines[number]])[0]) + 1  # the pieces and </s>
            T = len(arrays["target_pieces"])
            assert arrays["cross"].shape == (layers, heads, T, S)
            assert arrays["encoder_self"].shape == (layers, heads, S, S)
            assert arrays["decoder_self"].shape == (layers, heads, T, T)
            assert len(arrays["source_pieces"]) == S and arrays["source_pieces"][-1] == "</s>"
            assert arrays["target_input_pieces"][0] == "<s>" and len(arrays["target_input_pieces"]) == T
            generated = [int(i) for i in arrays["target_ids"] if i != tgt_tok.eos_id]
            assert tgt_tok.decode([generated])[0] == translations[number] == str(arrays["translation"])
            assert T == len(generated) + int(arrays["target_ids"][-1] == tgt_tok.eos_id)
            np.testing.assert_allclose(arrays["cross"].sum(axis=-1), 1.0, atol=1e-5)
            assert np.all(np.triu(arrays["decoder_self"], k=1) == 0.0)

    # existing maps are replaced only with --overwrite
    code, _, err = run(capsys, *args, "--attention", maps)
    assert_clean_error(code, err, "--overwrite")
    code, _, err = run(capsys, *args, "--attention", maps, "--overwrite")
    assert code == 0, err


def test_lm_sample_writes_the_self_attention_over_prompt_and_text(tmp_path, capsys):
    text_path = tmp_path / "corpus.txt"
    text_path.write_text("the cat sat on the mat.\na dog ran in the fog.\n" * 40)
    config = write_config(
        tmp_path / "lm.toml", text_path, train=dict(max_steps=2, validate_every=2, log_every=1, warmup_steps=1)
    )
    run_dir = tmp_path / "run"
    assert cli.main(["lm-train", "--config", str(config), "--run-dir", str(run_dir)]) == 0
    maps = tmp_path / "maps"
    args = ["lm-sample", "--checkpoint", run_dir, "--prompt", "the cat", "--seed", 1]
    code, plain, err = run(capsys, *args, "--max-new-tokens", 6)
    assert code == 0, err
    code, out, err = run(capsys, *args, "--max-new-tokens", 6, "--attention", maps)
    assert code == 0, err
    assert out == plain
    with np.load(maps / "0000.npz") as arrays:
        assert arrays["decoder_self"].shape == (2, 2, 13, 13)  # 7 prompt characters + 6 new ones
        assert "".join(arrays["pieces"]).replace("␣", " ").replace("\\n", "\n") == out.rstrip("\n")
        np.testing.assert_allclose(arrays["decoder_self"].sum(axis=-1), 1.0, atol=1e-5)
    assert (maps / "0000.png").read_bytes()[:8] == PNG_MAGIC

    code, _, err = run(capsys, *args, "--max-new-tokens", 20, "--attention", tmp_path / "other")
    assert_clean_error(code, err, "block_size=16")
