"""Command line: ``python -m transformer COMMAND`` (also the ``transformer`` console script).

Translation:  prepare, train, translate, evaluate, score, average, sheet-summary, distill, backtranslate
Summarisation (SAMSum) and dialogue (DailyDialog), trained by train with their configs:  evaluate,
summary-baselines, chat
Language modelling:  lm-train, lm-sample, lm-eval
Text classification:  classify-train, classify-eval, predict; mlm-train (masked-LM pre-training of its encoder)
Pictures:  plot
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import numpy as np


from .checkpoint import run_config_of
from .console import configure as configure_output, log
from .files import write_atomic


class UsageError(ValueError):
    """A command was given arguments it cannot work with (reported as ``error: ...``, exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument raises UsageError (one ``error:`` line, exit 2) instead of exiting, so every
    mistake, in an option or in a config, is reported the same way."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def _run_dir(config, override=None):
    return Path(override or config["run"].get("dir") or Path("runs") / Path(config["run"]["config_file"]).stem)


# Data paths in a config are made absolute when it is loaded: the run's config.json (and every checkpoint) then
# finds the data from any working directory.
_PATH_KEYS = ("data_dir", "src_path", "tgt_path", "tsv_path", "text_path", "train_src_path", "train_tgt_path")


def _load(args):
    from .config import load_config

    return _absolute_paths(load_config(args.config, args.overrides))  # overrides: normalised by main()


def _absolute_paths(config):
    for key in _PATH_KEYS:
        value = config["data"].get(key)
        if isinstance(value, str) and value:
            config["data"][key] = str(Path(value).expanduser().resolve())
    from .mixing import absolute_corpus_paths

    absolute_corpus_paths(config["data"].get("train_corpora"))  # the low-resource recipe's extra training corpora
    return config


def load_model(checkpoint_dir: str | os.PathLike, kind: str | None = None):
    """(model, tokenizers, checkpoint) from a checkpoint directory (or a run directory); the model in eval mode.

    ``kind`` ("translation" or "lm"), when given, refuses the other kind of checkpoint with a clear error.
    """
    from .checkpoint import KIND_NAMES, checkpoint_kind, load_checkpoint, resolve_checkpoint
    from .tokenizer import load_tokenizers
    from .train import model_from_checkpoint

    checkpoint = load_checkpoint(resolve_checkpoint(checkpoint_dir))
    if not isinstance(checkpoint.config, dict):
        raise ValueError(f"{checkpoint.directory}: the manifest's model config is not a mapping")
    found = checkpoint_kind(checkpoint.config)
    if kind is not None and kind != found:
        commands = {
            "lm": "lm-sample / lm-eval",
            "classify": "classify-eval / predict",
            "mlm": "classify-train --init-from",
        }
        use = commands.get(found, "translate / evaluate")
        raise ValueError(f"{checkpoint.directory} is a {KIND_NAMES[found]} checkpoint; use {use} with it")
    return model_from_checkpoint(checkpoint), load_tokenizers(checkpoint.directory), checkpoint


def _check_output(path, option, overwrite, protected=()):
    """An output file may not be a directory, a file of a run's checkpoints or one of the run's data files (``protected``),
    and replaces an existing file only with --overwrite: checked before any work, so nothing is lost by a typo."""
    from .checkpoint import checkpoint_area

    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory; give a file name")
    inside = checkpoint_area(path.parent)
    if inside is not None:
        raise UsageError(f"{option} {path} is inside {inside}, which the run manages; write it elsewhere")
    if path.exists() and any(path.resolve() == Path(p).resolve() for p in protected):
        raise UsageError(f"{option} {path} is one of the run's corpus files; write it elsewhere")
    if path.exists() and not overwrite:
        raise UsageError(f"{option} {path} exists; pass --overwrite to replace it")


def _check_attention_dir(directory, count, overwrite):
    """--attention DIR: a directory outside any run's checkpoints, whose NNNN.npz/png files are replaced only with
    --overwrite; matplotlib is looked for now, before any decoding (a missing 'plot' extra is said at once)."""
    if directory is None:
        return
    from .checkpoint import checkpoint_area
    from .extras import pyplot

    pyplot()
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--attention {directory} is a file; give a directory")
    inside = checkpoint_area(directory)
    if inside is not None:
        raise UsageError(f"--attention {directory} is inside {inside}, which the run manages; write it elsewhere")
    existing = [
        directory / f"{n:04d}.{ext}"
        for n in range(count)
        for ext in ("npz", "png")
        if (directory / f"{n:04d}.{ext}").exists()
    ]
    if existing and not overwrite:
        raise UsageError(f"--attention {directory} already holds {existing[0].name}; pass --overwrite to replace it")


def _read_input(path):
    """Lines of a file (or standard input), split on newline only; invalid UTF-8 names the file and line."""
    from .datasets import decode_lines

    if path in (None, "-"):
        data, name = sys.stdin.buffer.read(), "standard input"
    else:
        data, name = Path(path).read_bytes(), str(path)
    return [line.rstrip("\r") for line in decode_lines(data, name)]


def _seq2seq_task(config, run_dir, settings, build_model=True):
    """The encoder-decoder task a config's corpus asks for: summarisation (samsum), dialogue (dailydialog) or
    translation (any other corpus)."""
    from .tasks import TranslationTask

    task_class: type[TranslationTask] = TranslationTask
    corpus = config.get("data", {}).get("corpus")
    if corpus == "samsum":
        from .summarise import SummarisationTask as task_class
    elif corpus == "dailydialog":
        from .dialogue import DialogueTask as task_class
    return task_class(config, run_dir, settings, build_model=build_model)


# ------------------------------------------------------------------------------------------------ commands
def cmd_prepare(args):
    from .train import train_settings

    config = _load(args)
    # Only the data is prepared: no schedule, so a budget that fits any warm-up.
    settings = train_settings({**config["train"], "max_steps": 1, "warmup_steps": 0}, "translation")
    task = _seq2seq_task(config, _run_dir(config, args.run_dir), settings, build_model=False)
    print(
        f"prepared {len(task.train_set)} training pairs, {len(task.valid_set)} validation pairs; "
        f"vocabulary {task.src_tok.vocab_size}/{task.tgt_tok.vocab_size}; tokenizer in {task.tok_dir}"
    )
    return 0


def _train(args, task_class, kind):
    from .dist import connect

    # Started by mpiexec with several ranks: data-parallel training (transformer/dist.py); else this process alone.
    ranks = connect()
    if ranks is None:
        return _train_here(args, task_class, kind, None)
    return ranks.run(lambda: _train_here(args, task_class, kind, ranks))


def _train_here(args, task_class, kind, ranks):
    from .train import (
        EXIT_CODES,
        Trainer,
        check_fresh_run_dir,
        check_run_tokenizer,
        prepare_init_from,
        resume_config,
        seed_everything,
        train_settings,
    )

    config = _load(args)
    run_dir = _run_dir(config, args.run_dir)
    # Everything about the directory is checked before anything is created, the corpus read or a tokenizer trained.
    if args.resume:
        if args.init_from or args.teacher:
            raise UsageError(
                "--init-from / --teacher start a new run; --resume continues this one (with its own settings): not both"
            )
        # The run's own configuration, with this command line's overrides on top (e.g. a longer budget):
        # resuming must not silently fall back to the config file's values for what the run was started with.
        config = _absolute_paths(resume_config(run_dir, args.overrides, kind))
        _first_on_root(ranks, lambda: check_run_tokenizer(run_dir))
    else:
        check_fresh_run_dir(run_dir)
        for key, value in (("init_from", args.init_from), ("distill_from", args.teacher)):
            if value:
                config["train"][key] = str(Path(value).expanduser().resolve())
        train_settings(config["train"], kind)  # every setting checked before a tokenizer is copied
        config = _first_on_root(ranks, lambda: prepare_init_from(config, run_dir, kind))
    settings = train_settings(config["train"], kind)
    seed_everything(settings["seed"])

    def build_task():
        run_dir.mkdir(parents=True, exist_ok=True)
        return task_class(config, run_dir, settings)

    task = _first_on_root(ranks, build_task)  # (rank 0 trains a new tokenizer; the others then read it)
    if ranks is not None and getattr(task, "stream", False):
        raise UsageError('[data] batching = "stream" trains in one process (its carried state is not shared)')
    log.info(f"model: {task.model.num_parameters():,} parameters; run directory {run_dir}")
    if ranks is not None:
        ranks.check_same_run(task, settings)
    trainer = Trainer(task, run_dir, settings, resume=args.resume, dist=ranks)
    if ranks is None or ranks.is_root:
        # Written only once the Trainer accepted the directory (a fresh run, or --resume of this one).
        write_atomic(run_dir / "config.json", json.dumps(config, indent=2))
    state = trainer.run()
    if ranks is not None:
        ranks.log_summary(state["elapsed"])
    if ranks is None or ranks.is_root:
        summary = {"step": state["step"], "best": state["best"], "stopped": state["stopped"], "run_dir": str(run_dir)}
        print(json.dumps(summary | ({"ranks": ranks.size} if ranks is not None else {})))
    return EXIT_CODES.get(state["stopped"], 0)


def _first_on_root(ranks, step):
    """``step()`` here; with several ranks on rank 0 first (it may write files the others then only read)."""
    return step() if ranks is None else ranks.first_on_root(step)


def cmd_train(args):
    return _train(args, _seq2seq_task, "translation")


def cmd_lm_train(args):
    from .tasks import LMTask

    return _train(args, LMTask, "lm")


def cmd_classify_train(args):
    from .classify import ClassifyTask

    return _train(args, ClassifyTask, "classify")


def cmd_mlm_train(args):
    from .classify import MLMTask

    return _train(args, MLMTask, "mlm")


def _load_classifiers(checkpoints: Sequence[str]):
    """(members, label names, data settings) of one classifier or an ensemble: each member is (model, tokenizer,
    checkpoint) and reads the texts with its own tokenizer, so members may come from different pre-trained runs;
    they must share the label set, in the same order, or their probabilities could not be averaged."""
    from .classify import run_labels

    members, names, data = [], None, None
    for path in checkpoints:
        model, (tokenizer, _), checkpoint = load_model(path, kind="classify")
        member_data, member_names = run_labels(run_config_of(checkpoint))
        if names is not None and member_names != names:
            raise UsageError(
                f"--checkpoint {path} has labels {member_names}, but {members[0][2].directory} has {names}: "
                "an ensemble's members must share one label set"
            )
        names, data = names or member_names, data or member_data
        members.append((model, tokenizer, checkpoint))
    return members, names, data


def _checkpoint_fields(members) -> dict:
    """The JSON fields naming what was run: "checkpoints" always (one or an ensemble's members), and "checkpoint" as
    well for a single model (the field's meaning before ensembles)."""
    directories = [str(checkpoint.directory) for _, _, checkpoint in members]
    return {"checkpoints": directories, **({"checkpoint": directories[0]} if len(directories) == 1 else {})}


def cmd_classify_eval(args):
    """Accuracy, macro-F1 and the confusion matrix of a classifier (or of the mean of several classifiers' class
    probabilities: an ensemble) on its run's dev (or training) set."""
    from .classify import classify_files, encode_labelled, format_confusion, load_labelled, predict_probabilities
    from .classify import probability_scores
    from .datasets import file_identity

    members, names, data = _load_classifiers(args.checkpoint)
    if args.data_dir:
        data["data_dir"] = args.data_dir
    texts = load_labelled(data, args.split)
    identity = file_identity(classify_files(data).values())
    probabilities = []
    for model, tokenizer, checkpoint in members:
        _check_same_data(checkpoint, identity, args.allow_changed_data)
        dataset = encode_labelled(tokenizer, texts, model.config)
        probabilities.append(predict_probabilities(model, dataset, args.max_tokens))
    scores = probability_scores(texts.labels, np.mean(probabilities, axis=0))
    result = {"split": args.split, "texts": len(texts.labels), "labels": names, **scores}
    if len(members) > 1:
        singles = [probability_scores(texts.labels, p)["accuracy"] for p in probabilities]
        result["member_accuracies"] = singles
        log.info(f"ensemble of {len(members)}: its members' accuracies {', '.join(f'{a:.4f}' for a in singles)}")
    log.info(f"confusion matrix, {args.split} split (rows: gold)\n{format_confusion(scores['confusion'], names)}")
    print(json.dumps({**result, **_checkpoint_fields(members)}, indent=2))
    return 0


def cmd_predict(args):
    """One text a line in; its label and that label's probability out, one line each (several checkpoints: the
    mean of their probabilities)."""
    from .classify import predict_texts

    _check_output(args.output, "--output", args.overwrite)
    members, names, _ = _load_classifiers(args.checkpoint)
    texts = _read_input(args.input)
    origin = args.input if args.input not in (None, "-") else "standard input"
    probabilities = np.mean([predict_texts(model, tokenizer, texts, origin) for model, tokenizer, _ in members], 0)
    best = probabilities.argmax(axis=1)
    text = "".join(f"{names[k]}\t{probabilities[i, k]:.4f}\n" for i, k in enumerate(best))
    if args.output:
        write_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_translate(args):
    from .tasks import translate_sentences

    _check_output(args.output, "--output", args.overwrite)
    model, (src_tok, tgt_tok), _ = load_model(args.checkpoint, kind="translation")
    lines = _read_input(args.input)
    _check_attention_dir(args.attention, len(lines), args.overwrite)
    tokens: list | None = [] if args.attention else None
    out = translate_sentences(model, src_tok, tgt_tok, lines, tokens=tokens, **_decoding(args))
    if args.attention:
        from .attention_maps import write_translation_maps

        drawn = write_translation_maps(args.attention, model, src_tok, tgt_tok, lines, tokens or [])
        log.info(f"attention maps of {drawn} line(s) in {args.attention} (NNNN.npz arrays, NNNN.png pictures)")
    text = "".join(line.replace("\n", " ") + "\n" for line in out)
    if args.output:
        write_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_evaluate(args):
    from .datasets import file_identity
    from .evaluate import write_human_eval_sheet
    from .tasks import DATA_DEFAULTS, evaluate_translation, load_corpus

    model, (src_tok, tgt_tok), checkpoint = load_model(args.checkpoint, kind="translation")
    data = {**DATA_DEFAULTS, **run_config_of(checkpoint).get("data", {})}
    if args.data_dir:
        data["data_dir"] = args.data_dir
    if data["corpus"] in ("samsum", "dailydialog"):
        return _evaluate_seq2seq(args, model, src_tok, tgt_tok, checkpoint)
    if args.temperature:
        raise UsageError("--temperature (sampling) is for dialogue checkpoints; translations use --beam")
    corpus = load_corpus(data)
    _check_same_data(checkpoint, file_identity(corpus.files), args.allow_changed_data)
    for path, option in ((args.hypotheses, "--hypotheses"), (args.sheet, "--sheet")):
        _check_output(path, option, args.overwrite, protected=corpus.files)
    pairs = corpus[args.split]
    if args.limit:
        pairs = pairs.subset(range(min(args.limit, len(pairs))))
    if len(pairs) == 0:
        raise UsageError(f"{corpus.name}: the {args.split} split is empty; there is nothing to evaluate")
    scores, hyps = evaluate_translation(model, src_tok, tgt_tok, pairs, **_decoding(args))
    result = {"split": args.split, **scores, "checkpoint": str(checkpoint.directory)}
    if args.hypotheses:
        write_atomic(args.hypotheses, "\n".join(hyps) + "\n")
    if args.sheet:
        write_human_eval_sheet(args.sheet, pairs.src, pairs.tgt, hyps)
        result["sheet"] = args.sheet
    print(json.dumps(result, indent=2))
    return 0


def _evaluate_seq2seq(args, model, src_tok, tgt_tok, checkpoint):
    """evaluate for a summarisation (ROUGE) or dialogue (perplexity, BLEU-1/2, distinct-1/2) checkpoint."""
    from .datasets import file_identity
    from .dialogue import DIALOGUE_DATA_DEFAULTS, load_dialogue_corpus
    from .summarise import SUMMARY_DATA_DEFAULTS, load_summary_corpus
    from .tasks import data_settings

    data = run_config_of(checkpoint).get("data", {})
    summaries = data.get("corpus") == "samsum"
    data = data_settings(
        {**data, **({"data_dir": args.data_dir} if args.data_dir else {})},
        SUMMARY_DATA_DEFAULTS if summaries else DIALOGUE_DATA_DEFAULTS,
    )
    corpus = load_summary_corpus(data) if summaries else load_dialogue_corpus(data)
    _check_same_data(checkpoint, file_identity(corpus.files), args.allow_changed_data)
    for path, option in ((args.hypotheses, "--hypotheses"), (args.sheet, "--sheet")):
        _check_output(path, option, args.overwrite, protected=corpus.files)
    if args.sheet:
        raise UsageError("--sheet is for translation checkpoints")
    pairs = corpus[args.split]
    if args.limit:
        pairs = pairs.subset(range(min(args.limit, len(pairs))))
    if summaries:
        if args.temperature:
            raise UsageError("--temperature (sampling) is for dialogue checkpoints; summaries use --beam")
        from .summarise import evaluate_summaries

        scores, outputs = evaluate_summaries(model, src_tok, tgt_tok, pairs, data, **_decoding(args))
    else:
        from .dialogue import evaluate_dialogue

        scores, outputs = evaluate_dialogue(
            model, src_tok, tgt_tok, pairs, data, sampling=_sampling(args), **_decoding(args)
        )
    if args.hypotheses:
        write_atomic(args.hypotheses, "".join(o.replace("\n", " ") + "\n" for o in outputs))
    print(json.dumps({"split": args.split, **scores, "checkpoint": str(checkpoint.directory)}, indent=2))
    return 0


def _decoding(args):
    """The decoding options every decoding command shares (its progress shown)."""
    return dict(
        beam=args.beam,
        alpha=args.alpha,
        max_tokens=args.max_tokens,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        progress=True,
    )


def _sampling(args):
    """The sampling settings of --temperature/--top-k/--top-p/--seed, or None (temperature 0: beam or greedy)."""
    if not args.temperature:
        return None
    return dict(temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p or None, seed=args.seed)


def cmd_summary_baselines(args):
    """LEAD-n and LONGEST-n (Gliwa et al. 2019) on a SAMSum split, scored by the same ROUGE as the models."""
    from .summarise import SUMMARY_DATA_DEFAULTS, baseline_scores, load_samsum

    corpus = load_samsum(data_dir=args.data_dir)
    pairs = corpus[args.split]
    if args.limit:
        pairs = pairs.subset(range(min(args.limit, len(pairs))))
    scores = baseline_scores(pairs, args.n)
    print(json.dumps({"split": args.split, "corpus": SUMMARY_DATA_DEFAULTS["corpus"], **scores}, indent=2))
    return 0


def cmd_chat(args):
    """Talk to a dialogue checkpoint: one message a line on standard input, each reply on standard output."""
    from .dialogue import Chat, chat_loop

    model, (src_tok, tgt_tok), checkpoint = load_model(args.checkpoint, kind="translation")
    data = run_config_of(checkpoint).get("data", {})
    if data.get("corpus") != "dailydialog":
        raise UsageError(
            f"{checkpoint.directory} is not a dialogue model (its corpus is {data.get('corpus', 'multi30k')!r}); "
            "chat needs a run trained on dailydialog"
        )
    chat = Chat(model, src_tok, tgt_tok, data, sampling=_sampling(args), **{**_decoding(args), "progress": False})
    prompt = sys.stdin.isatty()
    if prompt:
        print("> ", end="", file=sys.stderr, flush=True)
    chat_loop(chat, sys.stdin.buffer, sys.stdout, show_context=args.show_context, prompt=prompt)
    return 0


def cmd_distill(args):
    """Sequence-level knowledge distillation (Kim and Rush 2016), step one: the teacher translates the training
    sources of its own corpus; a student then trains on those translations (data.train_src_path/train_tgt_path),
    with the corpus's own validation and test sets."""
    from .tasks import DATA_DEFAULTS, load_corpus, translate_sentences

    output = Path(args.output)
    model, (src_tok, tgt_tok), checkpoint = load_model(args.teacher, kind="translation")
    data = {**DATA_DEFAULTS, **run_config_of(checkpoint).get("data", {})}
    if args.data_dir:
        data["data_dir"] = args.data_dir
    paths = [output / f"train.{data['src']}", output / f"train.{data['tgt']}"]
    for path in paths:
        _check_output(path, "--output", args.overwrite)
    pairs = load_corpus(data)["train"]
    if args.limit:
        pairs = pairs.subset(range(min(args.limit, len(pairs))))
    hyps = translate_sentences(model, src_tok, tgt_tok, pairs.src, **_decoding(args))
    kept = [i for i, hyp in enumerate(hyps) if hyp.strip()]  # an empty translation is no training pair
    write_atomic(paths[0], "".join(pairs.src[i].replace("\n", " ") + "\n" for i in kept))
    write_atomic(paths[1], "".join(hyps[i].replace("\n", " ") + "\n" for i in kept))
    log.info(
        f"{len(kept)} of {len(hyps)} training sources translated by {checkpoint.directory} into {output}; "
        f"train a student on them with data.train_src_path={paths[0]} data.train_tgt_path={paths[1]}"
    )
    print(json.dumps({"pairs": len(kept), "src": str(paths[0]), "tgt": str(paths[1]), "beam": args.beam}))
    return 0


def cmd_backtranslate(args):
    """Back-translation: a reverse model translates monolingual target-language text into synthetic sources, a TSV
    of (synthetic source, sentence) that a forward model trains on (data.train_corpora)."""
    from .backtranslate import backtranslate, check_direction, read_monolingual

    output = Path(args.output)
    if output.exists() and not (args.resume or args.overwrite):
        raise UsageError(f"--output {output} exists; --resume continues it, --overwrite replaces it")
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the output, --overwrite replaces it: not both")
    _check_output(output, "--output", overwrite=True)
    if output.exists() and output.resolve() == Path(args.input).resolve():
        raise UsageError(f"--output {output} is the --input file; write the back-translations elsewhere")
    if args.noise and args.sample:
        raise UsageError("--noise noises beam output; --sample draws its own variety: choose one")
    if args.top_k and not args.sample:
        raise UsageError(f"--top-k {args.top_k} chooses among the tokens --sample draws from; add --sample")
    model, (src_tok, tgt_tok), checkpoint = load_model(args.checkpoint, kind="translation")
    data = run_config_of(checkpoint).get("data", {})
    check_direction((data.get("src", "?"), data.get("tgt", "?")), args.direction, str(checkpoint.directory))
    sentences, _ = read_monolingual(Path(args.input).read_bytes(), args.input, skip_bad=args.skip_bad)
    summary = backtranslate(
        model,
        src_tok,
        tgt_tok,
        sentences,
        output,
        resume=args.resume,
        beam=args.beam,
        alpha=args.alpha,
        max_tokens=args.max_tokens,
        sample=args.sample,
        top_k=args.top_k or None,
        noise=args.noise,
        seed=args.seed,
        chunk=args.chunk,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        identity={"checkpoint": str(Path(checkpoint.directory).resolve()), "direction": args.direction},
    )
    print(json.dumps({**summary, "checkpoint": str(checkpoint.directory)}))
    return 0


def cmd_score(args):
    """sacreBLEU BLEU and chrF of a file of detokenised hypotheses against a file of references."""
    from .evaluate import translation_scores

    scores = translation_scores(_read_input(args.hyps), _read_input(args.refs))
    print(
        json.dumps(scores, indent=2)
        if args.json
        else f"BLEU = {scores['bleu']:.2f}  {scores['bleu_signature']}\nchrF = {scores['chrf']:.2f}  "
        f"{scores['chrf_signature']}"
    )
    return 0


def _check_same_data(checkpoint, current, allow_changed):
    """Refuse to score a checkpoint on data other than its run's (the splits would silently differ); with
    ``--allow-changed-data`` say what changed and go on."""
    from .datasets import identity_changes

    recorded = (checkpoint.train_state or {}).get("data_files")
    if not recorded:
        return  # a checkpoint written before data identities were recorded
    changes = identity_changes(recorded, current)
    if not changes:
        return
    text = "the data differs from what the run trained on: " + "; ".join(changes)
    if not allow_changed:
        raise UsageError(
            f"{checkpoint.directory}: {text}. The splits (and scores) would not be the run's; restore "
            "the files, point --data-dir at the run's copy, or pass --allow-changed-data"
        )
    log.warning(f"{text} (--allow-changed-data)")


def cmd_export(args):
    """A LoRA run's checkpoint as a plain checkpoint (--merge: adapters folded into the weights, usable anywhere)
    or as its adapters alone (--adapters: a small file that names the base checkpoint it applies to)."""
    from .checkpoint import check_average_output, load_checkpoint, resolve_checkpoint, save_checkpoint

    if args.format is not None:
        return _export_to(args)
    if args.quantization is not None:
        raise UsageError("--quantization goes with --format ctranslate2")
    check_average_output(args.output, overwrite=args.overwrite, command="export")
    source = load_checkpoint(resolve_checkpoint(args.checkpoint))
    run_config = run_config_of(source)
    if args.merge:
        model, _, _ = load_model(source.directory)
        state, config, metadata = model, model.config, {"merged_lora": True}
        what = "with its LoRA adapters merged into the weights"
    else:
        state, config, metadata = _adapters_only(source, run_config), source.config, {}
        metadata["lora_adapters"] = {
            "base": (run_config.get("train") or {})["init_from"],
            "alpha": float((run_config.get("train") or {}).get("lora_alpha") or 0.0),
        }
        what = f"its {len(state)} adapter tensors alone (base {metadata['lora_adapters']['base']})"
    save_checkpoint(
        args.output,
        state,
        config,
        train_state={"run_config": run_config},
        extra_files=dict(source.extra_files),
        metadata={"exported_from": str(source.directory), **metadata},
    )
    log.info(f"wrote {args.output}: {source.directory} {what}")
    return 0


def _export_to(args):
    """export --format hf | ctranslate2: another library's model directory, same weights, same outputs."""
    if args.merge or args.adapters:
        raise UsageError("--format writes another library's model; --merge / --adapters write npgrad checkpoints")
    if args.format == "hf":
        from .export_hf import export_hf

        if args.quantization is not None:
            raise UsageError("--quantization goes with --format ctranslate2 (transformers keeps the float weights)")
        path, architecture = export_hf(args.checkpoint, args.output, args.overwrite)
        log.info(f"wrote {path}: a transformers {architecture} (from_pretrained({str(path)!r}))")
    else:
        from .export_ct2 import export_ct2

        path = export_ct2(args.checkpoint, args.output, args.quantization, args.overwrite)
        log.info(f"wrote {path}: a CTranslate2 model ({args.quantization or 'float32'})")
    return 0


def cmd_import(args):
    """import --format hf: a MarianMTModel / GPT-2 directory as an npgrad checkpoint (to fine-tune or translate here)."""
    from .checkpoint import check_average_output
    from .export_hf import import_hf

    check_average_output(args.output, overwrite=args.overwrite, command="import")
    path, model_type = import_hf(args.model, args.output, overwrite=args.overwrite)
    log.info(f"wrote {path}: the {model_type} model of {args.model} as an npgrad checkpoint")
    return 0


def _adapters_only(source, run_config):
    """The adapter tensors of a LoRA checkpoint, after checking that its base weights are still those of the
    checkpoint its run started from (which the adapters-only export names)."""
    from .checkpoint import load_checkpoint, resolve_checkpoint

    adapters = {k: v for k, v in source.model_state.items() if k.endswith((".lora_A", ".lora_B"))}
    if not adapters:
        raise UsageError(f"{source.directory} holds no LoRA adapters (it is not from a run with train.lora_rank)")
    base_path = (run_config.get("train") or {}).get("init_from")
    if not base_path:
        raise UsageError(
            f"{source.directory}: its run did not start from a checkpoint (--init-from), so its base "
            "weights exist only here; export --merge instead"
        )
    base = load_checkpoint(resolve_checkpoint(base_path))
    changed = [k for k, v in base.model_state.items() if not np.array_equal(v, source.model_state.get(k))]
    if changed:
        raise UsageError(
            f"{source.directory}: base weights differ from {base_path} ({', '.join(changed[:3])}...): "
            "they trained too; export --merge instead"
        )
    return adapters


def cmd_average(args):
    from .checkpoint import CheckpointManager, check_average_output
    from .train import write_averaged_checkpoint

    dirs = list(args.checkpoints)
    check_average_output(args.output, overwrite=args.overwrite)  # before any checkpoint is read
    if args.run_dir:
        infos = CheckpointManager(Path(args.run_dir) / "checkpoints").checkpoints()
        if len(infos) < args.last:
            raise UsageError(f"{args.run_dir} has {len(infos)} checkpoints, {args.last} requested")
        dirs += [i.path for i in infos[-args.last :]]
    if not dirs:
        raise UsageError("give checkpoint directories or --run-dir with --last N")
    seen = {}
    for directory in dirs:
        key = Path(directory).resolve()
        if key in seen:
            raise UsageError(f"{directory} is listed twice (as {seen[key]} too): it would count double in the average")
        seen[key] = directory
    write_averaged_checkpoint(dirs, args.output, overwrite=args.overwrite)
    return 0


def cmd_sheet_summary(args):
    from .evaluate import format_sheet_summary, summarise_sheet

    summary = summarise_sheet(args.sheet)
    print(json.dumps(summary, indent=2) if args.json else format_sheet_summary(summary))
    return 0


def cmd_plot(args):
    from .plot import plot

    plot(args.runs, args.output, gradients=args.gradients, overwrite=args.overwrite)
    return 0


def cmd_lm_sample(args):
    from .tasks import decode_lm_ids, encode_prompt, lm_generate

    model, (tokenizer, _), _ = load_model(args.checkpoint, kind="lm")
    if args.attention:
        block = model.config.block_size
        prompt_length = len(encode_prompt(tokenizer, args.prompt))
        if prompt_length + args.max_new_tokens == 0:
            raise UsageError("--attention: an empty prompt and --max-new-tokens 0 leave no token to draw")
        if prompt_length + args.max_new_tokens > block:
            raise UsageError(
                f"--attention draws one window of block_size={block} tokens, but the prompt ({prompt_length} "
                f"tokens) and --max-new-tokens {args.max_new_tokens} make {prompt_length + args.max_new_tokens}; "
                f"ask for at most {max(block - prompt_length, 0)} new tokens"
            )
        _check_attention_dir(args.attention, 1, args.overwrite)
    prompt_ids, new = lm_generate(
        model,
        tokenizer,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k or None,
        top_p=args.top_p or None,
        seed=args.seed,
        use_cache=not args.no_cache,
    )
    print(args.prompt + decode_lm_ids(tokenizer, new))
    if args.attention:
        from .attention_maps import write_lm_map

        write_lm_map(args.attention, model, tokenizer, list(prompt_ids) + list(new))
        log.info(
            f"attention map of the prompt and the {len(new)} new token(s) in {args.attention} (0000.npz, 0000.png)"
        )
    return 0


def cmd_lm_eval(args):
    """Loss, perplexity and bits per token/character/byte of the model on a split; with ``--ngram N`` the
    Kneser-Ney baseline (fitted on the training split) on the very same predicted tokens."""
    from .data import split_stream
    from .datasets import file_identity
    from .tasks import LM_DATA_DEFAULTS, encode_lm_text, evaluate_lm, load_lm_text, lm_text_path

    model, (tokenizer, _), checkpoint = load_model(args.checkpoint, kind="lm")
    data = {**LM_DATA_DEFAULTS, **run_config_of(checkpoint).get("data", {})}
    if args.data_dir:
        data["data_dir"] = args.data_dir
    if args.text:
        data["text_path"] = args.text
    path = lm_text_path(data)
    if not args.text:  # --text asks for another text on purpose
        _check_same_data(checkpoint, file_identity([path]), args.allow_changed_data)
    from .tokenizer import TokenizerError

    try:
        ids = encode_lm_text(tokenizer, load_lm_text(data, path))
    except TokenizerError as error:
        raise UsageError(f"{path}: {str(error).removeprefix('text 0: ')}") from None
    train, val = split_stream(ids, float(data["train_fraction"]))
    split = {"train": train, "val": val}[args.split]
    if args.max_tokens:
        split = split[: args.max_tokens]
    # Trained by truncated BPTT: scored as it reads, its state carried over the split (--stride asks for windows).
    carry = data["batching"] == "stream" and not args.stride
    result = evaluate_lm(
        model, tokenizer, split, stride=args.stride, ngram=args.ngram, ngram_train_ids=train, carry_state=carry
    )
    print(json.dumps({"split": args.split, **result, "checkpoint": str(checkpoint.directory)}, indent=2))
    return 0


def build_parser():
    from .config import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE_INT, Number

    p = _Parser(prog="transformer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the full traceback behind an error message")
    sub = p.add_subparsers(dest="command", required=True)

    def number(q, flag, spec, default, help=None):
        # Every numeric option is checked by the same table-driven rule as config numbers (config.Number).
        q.add_argument(
            flag,
            type=spec.option(flag),
            default=default,
            help=(help + "; " if help else "") + f"{spec.describe()} (default {default})",
        )

    def with_config(q):
        q.add_argument("--config", required=True, help="a file or a name in configs/ (e.g. multi30k_de_en)")
        q.add_argument("--run-dir", help="where checkpoints, logs and tokenizers go (default runs/CONFIG)")
        q.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_steps=100")
        return q

    def decoding(q):
        number(q, "--beam", Number(int, 1, 1000), 5, "beam size (1: greedy)")
        number(q, "--alpha", Number(float, 0, 10), 0.6, "length penalty ((5+len)/6)^alpha")
        number(q, "--max-tokens", POSITIVE_INT, 8000, "sub-word tokens per decoding batch")
        number(
            q,
            "--no-repeat-ngram-size",
            NON_NEGATIVE_INT,
            0,
            "never repeat an n-gram of this size in an output (0: off)",
        )

    def sampling(q):
        number(q, "--temperature", NON_NEGATIVE, 0.0, "sample responses at this temperature (0: --beam decoding)")
        number(q, "--top-k", NON_NEGATIVE_INT, 0, "sampling: only the k most probable tokens (0: off)")
        number(q, "--top-p", Number(float, 0, 1), 0.0, "sampling: nucleus probability (0: off)")
        number(q, "--seed", NON_NEGATIVE_INT, 0, "sampling: the random seed")

    with_config(sub.add_parser("prepare", help="load/verify the corpus, split it, train SentencePiece"))
    for name, what in (
        ("train", "a translation model"),
        ("lm-train", "a decoder-only language model"),
        ("classify-train", "an encoder-only text classifier"),
        ("mlm-train", "an encoder with a masked-language-model head (pre-training for classify-train)"),
    ):
        q = with_config(sub.add_parser(name, help=f"train {what}"))
        q.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint, exactly")
        q.add_argument(
            "--init-from",
            metavar="CKPT",
            help="start from this checkpoint's weights (a checkpoint or run directory; its tokenizer and model "
            "config too): fine-tuning, with a fresh optimizer, schedule and data order (train.init_from)",
        )
        q.add_argument(
            "--teacher",
            metavar="CKPT",
            help="word-level knowledge distillation from this checkpoint (its tokenizer too): the loss mixes the "
            "labels with the teacher's softened distribution (train.distill_from, distill_weight, distill_temperature)",
        )

    def classifiers(q):
        q.add_argument(
            "--checkpoint",
            required=True,
            nargs="+",
            action="extend",  # --checkpoint A --checkpoint B is the ensemble of both, as --checkpoint A B
            metavar="CKPT",
            help="a classifier checkpoint or run directory; several: an ensemble (the mean of their class "
            "probabilities)",
        )

    q = sub.add_parser("classify-eval", help="accuracy, macro-F1 and the confusion matrix of a text classifier")
    classifiers(q)
    q.add_argument("--split", default="valid", choices=["train", "valid"])
    number(q, "--max-tokens", POSITIVE_INT, 4096, "padded tokens per batch")
    q.add_argument("--data-dir")
    q.add_argument("--allow-changed-data", action="store_true", help="evaluate even if the data files changed (warns)")

    q = sub.add_parser("predict", help="classify one text per line (stdin by default): label and probability")
    classifiers(q)
    q.add_argument("--input", help="a file (default: standard input)")
    q.add_argument("--output", help="a file (default: standard output)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing --output file")

    q = sub.add_parser("translate", help="translate one sentence per line (stdin by default)")
    q.add_argument("--checkpoint", required=True)
    q.add_argument("--input", help="a file (default: standard input)")
    q.add_argument("--output", help="a file (default: standard output)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing --output file (or --attention maps)")
    q.add_argument(
        "--attention",
        metavar="DIR",
        help="also write each line's attention weights to DIR/NNNN.npz and its cross-attention heatmaps to "
        "DIR/NNNN.png (needs the 'plot' extra)",
    )
    decoding(q)

    q = sub.add_parser("evaluate", help="loss, perplexity, sacreBLEU and chrF on a split")
    q.add_argument("--checkpoint", required=True)
    q.add_argument("--split", default="test", choices=["train", "valid", "test"])
    decoding(q)
    number(q, "--limit", NON_NEGATIVE_INT, 0, "only the first N sentences (0: all)")
    q.add_argument("--data-dir")
    q.add_argument(
        "--allow-changed-data",
        action="store_true",
        help="evaluate even if the corpus files differ from those the run trained on (warns)",
    )
    q.add_argument("--hypotheses", help="write the detokenised hypotheses here")
    q.add_argument("--sheet", help="write a human-evaluation CSV sheet here")
    q.add_argument("--overwrite", action="store_true", help="replace existing --hypotheses / --sheet files")
    sampling(q)

    q = sub.add_parser("summary-baselines", help="ROUGE of the LEAD-n and LONGEST-n extractive baselines on SAMSum")
    q.add_argument("--split", default="test", choices=["train", "valid", "test"])
    number(q, "--n", POSITIVE_INT, 3, "turns taken")
    number(q, "--limit", NON_NEGATIVE_INT, 0, "only the first N dialogues (0: all)")
    q.add_argument("--data-dir")

    q = sub.add_parser("chat", help="talk to a dialogue model (one message a line; /reset, /quit)")
    q.add_argument("--checkpoint", required=True, help="a dialogue checkpoint or run directory")
    decoding(q)
    sampling(q)
    q.add_argument("--show-context", action="store_true", help="print the turns the model reads on standard error")

    q = sub.add_parser("average", help="average the weights of several checkpoints")
    q.add_argument("checkpoints", nargs="*")
    q.add_argument("--run-dir")
    number(q, "--last", POSITIVE_INT, 5, "with --run-dir: its last N checkpoints")
    q.add_argument("--output", required=True, help="a new directory (never a training checkpoint)")
    q.add_argument("--overwrite", action="store_true", help="replace an earlier output of average")

    q = sub.add_parser("distill", help="sequence-level distillation: the teacher translates the training sources")
    q.add_argument("--teacher", required=True, help="a translation checkpoint or run directory")
    q.add_argument("--output", required=True, help="a directory for train.SRC and train.TGT")
    decoding(q)
    number(q, "--limit", NON_NEGATIVE_INT, 0, "only the first N training pairs (0: all)")
    q.add_argument("--data-dir")
    q.add_argument("--overwrite", action="store_true", help="replace earlier output files")

    q = sub.add_parser("backtranslate", help="a reverse model turns monolingual text into synthetic sources (TSV)")
    q.add_argument("--checkpoint", required=True, help="the reverse model: a translation checkpoint or run directory")
    q.add_argument(
        "--direction", required=True, help="the reverse model's direction, checked: en-de for a de->en forward model"
    )
    q.add_argument("--input", required=True, help="monolingual text of the forward model's target language")
    q.add_argument("--output", required=True, help="the TSV: synthetic source<TAB>input sentence, one line each")
    decoding(q)
    q.add_argument("--sample", action="store_true", help="sample each translation instead of a beam search")
    number(q, "--top-k", NON_NEGATIVE_INT, 0, "with --sample: from the K most probable tokens (0: all)")
    q.add_argument("--noise", action="store_true", help="noise the beam output (delete, blank, shuffle words)")
    number(q, "--seed", NON_NEGATIVE_INT, 0, "of --sample and --noise")
    number(q, "--chunk", POSITIVE_INT, 1000, "lines translated and appended at a time")
    q.add_argument("--skip-bad", action="store_true", help="leave out invalid UTF-8 / empty input lines (reported)")
    q.add_argument("--resume", action="store_true", help="continue an interrupted --output after its complete lines")
    q.add_argument("--overwrite", action="store_true", help="replace an existing --output")

    q = sub.add_parser(
        "export",
        help="a LoRA checkpoint merged into plain weights or its adapters alone; or a model for transformers / "
        "CTranslate2 (--format)",
    )
    q.add_argument("--checkpoint", required=True, help="a checkpoint or run directory")
    q.add_argument("--output", required=True, help="a new checkpoint directory (a new model directory for --format)")
    what = q.add_mutually_exclusive_group(required=True)
    what.add_argument("--merge", action="store_true", help="fold the adapters into the weights: a plain checkpoint")
    what.add_argument("--adapters", action="store_true", help="only the adapter tensors (they name their base)")
    what.add_argument(
        "--format",
        choices=("hf", "ctranslate2"),
        help="hf: a transformers MarianMTModel (translation) or GPT-2 (language model); ctranslate2: a CTranslate2 "
        "model (the 'export' extra)",
    )
    q.add_argument("--quantization", help="with --format ctranslate2: int8, int16, float16... (default float32)")
    q.add_argument("--overwrite", action="store_true", help="replace an earlier export")

    q = sub.add_parser("import", help="a transformers MarianMTModel or GPT-2 directory as an npgrad checkpoint")
    q.add_argument("--format", choices=("hf",), required=True, help="hf: a transformers model directory")
    q.add_argument("--model", required=True, help="the model directory (config.json, model.safetensors)")
    q.add_argument("--output", required=True, help="a new checkpoint directory")
    q.add_argument("--overwrite", action="store_true", help="replace an earlier import")

    q = sub.add_parser("sheet-summary", help="summarise a filled human-evaluation sheet")
    q.add_argument("sheet")
    q.add_argument("--json", action="store_true", help="print the summary as JSON")

    q = sub.add_parser("score", help="sacreBLEU BLEU and chrF of a file of detokenised hypotheses")
    q.add_argument("--hyps", required=True, help="one hypothesis per line (- for standard input)")
    q.add_argument("--refs", required=True, help="one reference per line")
    q.add_argument("--json", action="store_true")

    q = sub.add_parser("plot", help="learning curves (or gradient flow) of runs, from their log.jsonl")
    q.add_argument("runs", nargs="+", metavar="RUN", help="run directories (several: one figure, one legend)")
    q.add_argument("--output", help="a .png/.svg/.pdf file (default: the first run's plot.png / gradients.png)")
    q.add_argument("--gradients", action="store_true", help="per-layer gradient norms and update ratios instead")
    q.add_argument("--overwrite", action="store_true", help="replace an existing --output file")

    q = sub.add_parser("lm-sample", help="sample text from a language model")
    q.add_argument("--checkpoint", required=True)
    q.add_argument("--prompt", default="")
    number(q, "--max-new-tokens", NON_NEGATIVE_INT, 500)
    number(q, "--temperature", NON_NEGATIVE, 0.8, "0: greedy")
    number(q, "--top-k", NON_NEGATIVE_INT, 0, "0: off")
    number(q, "--top-p", Number(float, 0, 1), 0.0, "0: off")
    number(q, "--seed", NON_NEGATIVE_INT, 0)
    q.add_argument("--no-cache", action="store_true", help="recompute the whole prefix at every step (no KV cache)")
    q.add_argument(
        "--attention",
        metavar="DIR",
        help="also write the self-attention over the prompt and the generated text to DIR/0000.npz and DIR/0000.png "
        "(one window: prompt + --max-new-tokens <= block_size; needs the 'plot' extra)",
    )
    q.add_argument("--overwrite", action="store_true", help="replace existing --attention files")

    q = sub.add_parser("lm-eval", help="loss, perplexity and bits per character of a language model")
    q.add_argument("--checkpoint", required=True)
    q.add_argument("--split", default="val", choices=["train", "val"])
    q.add_argument("--text", help="a text file instead of the run's corpus (split by the run's train_fraction)")
    q.add_argument("--data-dir", help="the corpus cache (default: the run's, or TRANSFORMER_DATA)")
    q.add_argument(
        "--allow-changed-data",
        action="store_true",
        help="evaluate even if the corpus file differs from the one the run trained on (warns)",
    )
    number(q, "--max-tokens", NON_NEGATIVE_INT, 0, "only the first N tokens of the split (0: all)")
    number(
        q,
        "--stride",
        NON_NEGATIVE_INT,
        0,
        "windows of block_size tokens start every STRIDE tokens and each token is scored once, so every token "
        "after the first window has at least block_size - STRIDE tokens of context (0: block_size // 2; "
        "block_size gives non-overlapping windows, as in training); a recurrent LM trained with "
        'data.batching = "stream" is scored with its state carried over the split unless a stride is given',
    )
    number(
        q,
        "--ngram",
        NON_NEGATIVE_INT,
        0,
        "also fit a Kneser-Ney n-gram model of this order on the training split and score it on the same tokens",
    )
    return p


COMMANDS = {
    "prepare": cmd_prepare,
    "train": cmd_train,
    "lm-train": cmd_lm_train,
    "translate": cmd_translate,
    "evaluate": cmd_evaluate,
    "score": cmd_score,
    "export": cmd_export,
    "import": cmd_import,
    "distill": cmd_distill,
    "backtranslate": cmd_backtranslate,
    "average": cmd_average,
    "sheet-summary": cmd_sheet_summary,
    "plot": cmd_plot,
    "lm-sample": cmd_lm_sample,
    "lm-eval": cmd_lm_eval,
    "classify-train": cmd_classify_train,
    "mlm-train": cmd_mlm_train,
    "classify-eval": cmd_classify_eval,
    "predict": cmd_predict,
    "summary-baselines": cmd_summary_baselines,
    "chat": cmd_chat,
}


def main(argv: Sequence[str] | None = None) -> int:
    from .config import ConfigError, normalise_cli_overrides
    from .datasets import ChecksumError, DownloadError
    from .extras import MissingExtra

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        # "--train.max_steps 100" -> "train.max_steps=100" before argparse sees (and splits) the pair.
        argv = normalise_cli_overrides(argv)
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            if not hasattr(args, "overrides"):
                raise UsageError(f"unrecognized arguments: {' '.join(unknown)}")
            args.overrides = list(args.overrides) + unknown
        if args.command not in ("train", "lm-train"):
            from .dist import launched_ranks

            if launched_ranks() > 1:  # K copies would each do the whole work, writing the same files
                raise UsageError(
                    f"{args.command} runs in one process; only train and lm-train run on several MPI ranks "
                    "(start it without mpiexec)"
                )
        configure_output()
        if os.environ.get("TRANSFORMER_RETAIN_MEMORY", "1") != "0":
            # Every command here is a training/decoding process: reuse freed arrays instead of page-faulting
            # fresh ones each step (npgrad/allocator.py: a Multi30k step 1.03-1.37x faster).
            from npgrad.allocator import retain_freed_memory

            retain_freed_memory()
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:  # outside training (which saves and returns 130 itself), or a second Ctrl-C
        print("interrupted", file=sys.stderr)
        return 130
    except (
        ConfigError,
        ValueError,
        OSError,
        ChecksumError,
        DownloadError,
        FloatingPointError,
        MemoryError,
        MissingExtra,
    ) as error:
        # Bad configs, data, checkpoints and files are the user's to fix: one line saying what, no traceback
        # (--debug shows it). ValueError covers UsageError, DataValidationError, TokenizerError, CheckpointError and
        # UnicodeDecodeError; FloatingPointError is a diverged training, whose message says what to change.
        if debug:
            traceback.print_exc()
        message = str(error)
        if isinstance(error, MemoryError):
            message = (
                f"out of memory ({error or 'an allocation failed'}); use a smaller batch (--max-tokens, "
                "train.max_tokens) or beam (--beam)"
            )
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
